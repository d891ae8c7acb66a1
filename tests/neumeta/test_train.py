import logging

import pytest
import torch

from neumeta_pipeline.data import DeviceData
from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.inr import NeuMetaINR
from neumeta_pipeline.neumeta.metrics import accuracy
from neumeta_pipeline.neumeta.morph import MorphSpec
from neumeta_pipeline.neumeta.resume import ResumeFile
from neumeta_pipeline.neumeta.train import FitConfig, NeuMetaLoss, fit, fit_reconstruction, seed_everything, task_objective


def _blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = (torch.rand(n, 1, 28, 28, generator=g) * 60).to(torch.uint8)
    for i in range(n):
        x[i, 0, 2 + 2 * y[i] : 4 + 2 * y[i], 4:24] = 255
    return {"x_train": x, "y_train": y, "x_val": x[:64], "y_val": y[:64], "mean": [0.2], "std": [0.3]}


def _pretrain(seed: int):
    generator = seed_everything(seed)
    splits = _blobs()
    net = build_model("lenet", width=4)
    train, val = DeviceData(splits, "train", "cpu"), DeviceData(splits, "val", "cpu")
    config = FitConfig(epochs=4, batch_size=32, lr=5e-3, warmup_epochs=0.5, grad_clip=1.0, ema_decay=0.9, progress=False)
    return fit(net, task_objective(net), train, lambda m: accuracy(m, val), config, generator), splits


def test_fit_learns_and_selects_the_best_validation_epoch():
    result, _ = _pretrain(0)
    scores = [h["val_score"] for h in result.history]
    assert result.best_score == max(scores) > 0.5
    assert result.best_epoch == scores.index(max(scores)) + 1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_same_result():
    a, _ = _pretrain(1)
    b, _ = _pretrain(1)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert all(torch.equal(p, q) for p, q in zip(a.best.state_dict().values(), b.best.state_dict().values()))


def test_neumeta_loss_has_task_reconstruction_and_regularisation_terms():
    generator = seed_everything(0)
    target = build_model("lenet", width=4).eval()
    spec = MorphSpec(target, torch.zeros(1, 1, 28, 28))
    inr = NeuMetaINR(spec, num_frequencies=4, hidden=16, depth=1)
    loss_fn = NeuMetaLoss(inr, target, spec, (0.0, 0.5), 1.0, 1.0, 1e-4, generator)
    splits = _blobs(32)
    x, y = next(DeviceData(splits, "train", "cpu").batches(32))
    loss, logs = loss_fn(x, y)
    assert set(logs) == {"task", "recon", "reg"}
    assert torch.isclose(loss, logs["task"] + logs["recon"] + 1e-4 * logs["reg"])
    loss.backward()
    assert all(p.grad is not None for p in inr.parameters() if p.requires_grad and p.dim() > 1)
    assert all(p.grad is None for p in target.parameters())  # the target is never trained


def test_sampled_widths_stay_in_the_compression_range():
    generator = seed_everything(0)
    target = build_model("lenet", width=8).eval()
    spec = MorphSpec(target, torch.zeros(1, 1, 28, 28))
    loss_fn = NeuMetaLoss(NeuMetaINR(spec, 2, 4, 0), target, spec, (0.25, 0.5), 0.0, 0.0, 0.0, generator)
    seen = {loss_fn.sample_widths()["conv1"] for _ in range(200)}
    assert seen == {4, 5, 6}


def _resumable_run(tmp_path, interrupt_at: int | None):
    """Pretrain-like run with a resume file; optionally interrupted at a global step."""
    generator = seed_everything(5)
    splits = _blobs(128)
    net = build_model("lenet", width=2)
    train, val = DeviceData(splits, "train", "cpu"), DeviceData(splits, "val", "cpu")
    config = FitConfig(epochs=3, batch_size=32, lr=3e-3, ema_decay=0.9, progress=False)
    base = task_objective(net)
    steps = {"n": 0}

    def objective(x, y):
        steps["n"] += 1
        if interrupt_at is not None and steps["n"] == interrupt_at:
            raise KeyboardInterrupt
        return base(x, y)

    with ResumeFile(tmp_path, "pretrain", {"seed": 5}) as resume:
        return fit(net, objective, train, lambda m: accuracy(m, val), config, generator, "pretrain", resume)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, caplog):
    straight = _resumable_run(tmp_path / "a", None)
    assert straight.resumed_from == 0
    assert not list((tmp_path / "a").iterdir())  # the resume file, its lock and description are gone
    with pytest.raises(KeyboardInterrupt):
        _resumable_run(tmp_path / "b", interrupt_at=7)  # mid second epoch (4 steps per epoch)
    (saved,) = (tmp_path / "b").glob("pretrain-*.pt")
    with caplog.at_level(logging.INFO):
        resumed = _resumable_run(tmp_path / "b", None)
    assert f"resuming pretrain from epoch 1 of 3 ({saved})" in caplog.text
    assert resumed.resumed_from == 1
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert all(torch.equal(p, q) for p, q in zip(straight.best.state_dict().values(), resumed.best.state_dict().values()))


def test_bf16_autocast_runs_and_learns():
    generator = seed_everything(0)
    splits = _blobs()
    net = build_model("lenet", width=4)
    train, val = DeviceData(splits, "train", "cpu"), DeviceData(splits, "val", "cpu")
    config = FitConfig(epochs=2, batch_size=32, lr=5e-3, progress=False, precision="bf16")
    result = fit(net, task_objective(net), train, lambda m: accuracy(m, val), config, generator)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def _mlps_with_gradients(seed: int, compression_range: tuple[float, float], lambda_recon: float) -> int:
    """MLPs that receive a gradient from one NeuMeta step of a LeNet-4 INR with tensor_fraction 0.25."""
    generator = seed_everything(seed)
    target = build_model("lenet", width=4).eval()
    spec = MorphSpec(target, torch.zeros(1, 1, 28, 28))
    inr = NeuMetaINR(spec, num_frequencies=4, hidden=16, depth=1)
    loss_fn = NeuMetaLoss(inr, target, spec, compression_range, 1.0, lambda_recon, 0.0, generator, tensor_fraction=0.25)
    x, y = next(DeviceData(_blobs(32), "train", "cpu").batches(32))
    loss, _ = loss_fn(x, y)
    loss.backward()
    return sum(mlp.out.weight.grad is not None for mlp in inr.mlps)


def test_tensor_subset_trains_only_the_picked_tensors():
    assert _mlps_with_gradients(0, (0.0, 0.5), lambda_recon=0.0) == 2  # a quarter of LeNet's 8 generated tensors


def test_tensor_subset_also_limits_the_reconstruction_term():
    # compression >= 0.25: the reconstruction needs a second, full-width call
    assert _mlps_with_gradients(1, (0.25, 0.5), lambda_recon=1.0) == 2


def _loss_fn(width: int, compression_range, **options) -> NeuMetaLoss:
    generator = seed_everything(0)
    target = build_model("lenet", width=width).eval()
    spec = MorphSpec(target, torch.zeros(1, 1, 28, 28))
    return NeuMetaLoss(NeuMetaINR(spec, 2, 4, 0), target, spec, compression_range, 1.0, 1.0, 1e-4, generator, **options)


@pytest.mark.parametrize("sampling, expected", [("continuous", {4: 0.25, 5: 0.5, 6: 0.25}), ("uniform", {4: 1 / 3, 5: 1 / 3, 6: 1 / 3})])
def test_width_sampling_frequencies(sampling, expected):
    # LeNet-8 at compression 0.25-0.5: conv1 has 6, 5 or 4 channels. Rounding a uniform compression
    # gives the edge widths half the weight of the middle one; uniform sampling gives each a third.
    loss_fn = _loss_fn(8, (0.25, 0.5), width_sampling=sampling)
    draws = [loss_fn.sample_widths()["conv1"] for _ in range(3000)]
    for width, share in expected.items():
        assert abs(draws.count(width) / len(draws) - share) < 0.03, (width, draws.count(width))


def test_several_widths_per_step_start_at_full_width_and_distillation_adds_its_term(monkeypatch):
    loss_fn = _loss_fn(4, (0.25, 0.5), widths_per_step=3, lambda_kd=0.5, kd_temperature=2.0)
    seen, generate = [], loss_fn.inr.generate
    monkeypatch.setattr(loss_fn.inr, "generate", lambda widths, **kw: seen.append(dict(widths)) or generate(widths, **kw))
    x, y = next(DeviceData(_blobs(32), "train", "cpu").batches(32))
    loss, logs = loss_fn(x, y)
    assert len(seen) == 3 and seen[0] == loss_fn.full and all(w != loss_fn.full for w in seen[1:])  # recon reuses the full one
    assert set(logs) == {"task", "recon", "reg", "kd"} and logs["kd"] > 0
    assert torch.isclose(loss, logs["task"] + logs["recon"] + 1e-4 * logs["reg"] + 0.5 * logs["kd"])


@pytest.mark.parametrize("sampling", ["continuous", "uniform"])
def test_the_sandwich_rule_trains_full_then_narrowest_then_sampled_widths(monkeypatch, sampling):
    # LeNet-8 at compression 0.25-0.5: conv1's narrowest width in the range is 4 (of 8).
    loss_fn = _loss_fn(8, (0.25, 0.5), width_sampling=sampling, widths_per_step=4, sandwich=True)
    seen, generate = [], loss_fn.inr.generate
    monkeypatch.setattr(loss_fn.inr, "generate", lambda widths, **kw: seen.append(dict(widths)) or generate(widths, **kw))
    x, y = next(DeviceData(_blobs(16), "train", "cpu").batches(16))
    sampled = []
    for _ in range(20):
        seen.clear()
        loss_fn(x, y)
        assert len(seen) == 4 and seen[0] == loss_fn.full and seen[1] == loss_fn.narrowest
        sampled += [w["conv1"] for w in seen[2:]]
    assert loss_fn.narrowest["conv1"] == 4 and set(sampled) == {4, 5, 6}  # the sampled ones still cover the range
    with pytest.raises(ValueError, match="sandwich needs widths_per_step >= 3"):
        _loss_fn(8, (0.25, 0.5), widths_per_step=2, sandwich=True)


def test_cached_teacher_outputs_give_the_same_step_without_the_teacher_pass():
    x, y = next(DeviceData(_blobs(32), "train", "cpu").batches(32))

    def step(target):
        # The loss and the network's passes (teacher and generated) in one step.
        loss_fn = _loss_fn(4, (0.25, 0.5), lambda_kd=1.0, kd_temperature=2.0)
        outputs = loss_fn.teacher_outputs(x, batch_size=5)  # chunks of another size: an image's output is its own
        torch.testing.assert_close(outputs, loss_fn.target(x))
        passes = []
        loss_fn.target.register_forward_hook(lambda *_: passes.append(1))
        loss, logs = loss_fn(x, target(y, outputs))
        return loss, logs["kd"], len(passes)

    computed, computed_kd, computed_passes = step(lambda y, outputs: y)
    cached, cached_kd, cached_passes = step(lambda y, outputs: (y, outputs))
    torch.testing.assert_close(cached, computed)
    torch.testing.assert_close(cached_kd, computed_kd)
    assert cached_kd > 0 and cached_passes == computed_passes - 1  # no teacher pass


def test_recon_share_adds_the_reconstruction_term_in_that_share_of_steps(monkeypatch):
    x, y = next(DeviceData(_blobs(16), "train", "cpu").batches(16))

    def steps(share):
        loss_fn = _loss_fn(4, (0.25, 0.5), recon_share=share)
        calls, generate = [], loss_fn.inr.generate
        monkeypatch.setattr(loss_fn.inr, "generate", lambda widths, **kw: calls.append(widths == loss_fn.full) or generate(widths, **kw))
        logged, full_passes = [], []
        for _ in range(40):
            calls.clear()
            _, logs = loss_fn(x, y)
            logged.append("recon" in logs)
            full_passes.append(sum(calls))
        return logged, full_passes, loss_fn.generator.get_state()

    every, every_passes, _ = steps(1.0)
    assert all(every) and every_passes == [1] * 40
    logged, full_passes, state = steps(0.25)
    assert 3 <= sum(logged) <= 20  # about 10 of 40; a skipped step makes no full-width pass
    assert full_passes == [int(r) for r in logged]
    assert steps(0.25)[0] == logged and torch.equal(steps(0.25)[2], state)  # drawn from the seeded stream
    with pytest.raises(ValueError, match="recon_share"):
        _loss_fn(4, (0.25, 0.5), recon_share=0.0)


def test_active_tensors_alone_are_generated_trained_and_narrowed():
    loss_fn = _loss_fn(4, (0.5, 0.5), active={"conv1.weight", "conv1.bias"})
    # Only conv1's output group morphs; the groups of the blocks not yet trained keep full width.
    assert loss_fn.sample_widths() == {**loss_fn.full, "conv1": 2}
    raw, weights = loss_fn.weights(loss_fn.inr, loss_fn.sample_widths(), noise=0.0)
    assert set(raw) == {"conv1.weight", "conv1.bias"} and set(weights) == {t.name for t in loss_fn.spec.tensors}
    torch.testing.assert_close(weights["conv2.weight"], loss_fn.reference["conv2.weight"][:, :2])  # sliced reference
    x, y = next(DeviceData(_blobs(32), "train", "cpu").batches(32))
    loss, _ = loss_fn(x, y)
    loss.backward()
    inr = loss_fn.inr
    assert [mlp.out.weight.grad is not None for mlp in inr.mlps] == [t.name.startswith("conv1.") for t in inr.spec.tensors]


def _warm_start_rates(schedule: str, monkeypatch, steps: int = 4) -> tuple[list[float], list[float]]:
    """The learning rate of every warm-start step of a LeNet INR, and the losses."""
    rates, step = [], torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    generator = seed_everything(0)
    target = build_model("lenet", width=4).eval()
    spec = MorphSpec(target, torch.zeros(1, 1, 28, 28))
    inr = NeuMetaINR(spec, num_frequencies=4, hidden=16, depth=1)
    losses = fit_reconstruction(inr, target.state_dict(), steps, 1e-2, 1.0, generator, schedule)
    return rates, losses


def test_the_warm_start_keeps_its_rate_or_decays_it_along_a_cosine(monkeypatch):
    constant, constant_losses = _warm_start_rates("constant", monkeypatch)
    assert constant == [1e-2] * 4
    cosine, cosine_losses = _warm_start_rates("cosine", monkeypatch)
    assert cosine == pytest.approx([1e-2, 1e-2 * (1 + 2**-0.5) / 2, 1e-2 / 2, 1e-2 * (1 - 2**-0.5) / 2])
    # Both take the first step at 1e-2, so the losses part only after the second step's update.
    assert cosine_losses[:2] == constant_losses[:2] and cosine_losses[2] != constant_losses[2]
    with pytest.raises(ValueError, match="unknown reconstruction schedule 'linear'"):
        fit_reconstruction(None, {}, 1, 1e-3, 0.0, None, "linear")
