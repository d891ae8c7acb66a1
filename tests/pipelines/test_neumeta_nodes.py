"""The NeuMeta nodes called directly, on tiny models (no Kedro session): permutation objectives,
resume keys, locks and their messages."""

from __future__ import annotations

import fcntl
import logging

import numpy as np
import pytest
import torch

from neumeta_pipeline.data import DeviceData, make_splits
from neumeta_pipeline.errors import UserError
from neumeta_pipeline.models import build_model
from neumeta_pipeline.models.checkpoint import load_model, model_checkpoint
from neumeta_pipeline.neumeta.graph import ChannelGroup
from neumeta_pipeline.neumeta.permute import total_variation
from neumeta_pipeline.neumeta.resume import ResumeFileError, RunConflictError
from neumeta_pipeline.neumeta.train import NeuMetaLoss
from neumeta_pipeline.pipelines.compare import nodes as compare_nodes
from neumeta_pipeline.pipelines.neumeta import nodes
from tests.conftest import _digit_images
from tests.neumeta.conftest import randomize_batchnorm, relative_error

TASK = "tiny"
ARCH = {"name": "lenet", "kwargs": {"width": 4}, "input_shape": [1, 28, 28]}
MORPH = {"compression_range": [0.0, 0.5]}
INR = {"num_frequencies": 4, "hidden": 16, "depth": 1}
TRAIN = {"epochs": 2, "batch_size": 32, "reconstruction_steps": 5, "progress": False, "validation_compressions": [0.0, 0.5]}


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    labels = np.arange(160) % 10
    arrays = {"x_train": _digit_images(labels, np.random.default_rng(0))[:, None], "y_train": labels}
    splits = make_splits(arrays, 0.2, 0.2, seed=0)  # 4 training steps of 32 per epoch
    return model_checkpoint(build_model("lenet", width=4), ARCH, fused=True), splits


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # resume files live under data/06_models/<task>/resume
    return tmp_path / "data" / "06_models" / TASK / "resume"


def train(inputs, seed=0, interrupt_at=None, monkeypatch=None, **changes):
    """The train_inr node; with ``interrupt_at``, it stops at that training step as a crash would."""
    if interrupt_at is not None:
        call, steps = NeuMetaLoss.__call__, {"n": 0}

        def interrupting(self, x, y):
            steps["n"] += 1
            if steps["n"] == interrupt_at:
                raise Interrupted
            return call(self, x, y)

        monkeypatch.setattr(NeuMetaLoss, "__call__", interrupting)
    try:
        return nodes.train_inr(*inputs, MORPH, INR, {**TRAIN, **changes}, None, seed, "cpu", TASK)
    finally:
        if interrupt_at is not None:
            monkeypatch.setattr(NeuMetaLoss, "__call__", call)


def same_weights(a: dict, b: dict) -> bool:
    return a["state_dict"].keys() == b["state_dict"].keys() and all(
        torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]
    )


def interrupt(inputs, monkeypatch, seed=0, **changes):
    with pytest.raises(Interrupted):
        train(inputs, seed, interrupt_at=6, monkeypatch=monkeypatch, **changes)  # mid second epoch


@pytest.mark.parametrize("change", [{"seed": 1}, {"lambda_recon": 0.5}], ids=["seed", "loss_weight"])
def test_a_changed_configuration_after_an_interruption_trains_afresh(inputs, workdir, monkeypatch, caplog, change):
    seed = change.get("seed", 0)
    loop = {k: v for k, v in change.items() if k != "seed"}
    fresh, _ = train(inputs, seed, **loop)
    interrupt(inputs, monkeypatch)
    (left,) = workdir.glob("train_inr-*.pt")
    with caplog.at_level(logging.INFO):
        rerun, history = train(inputs, seed, **loop)
    assert same_weights(rerun, fresh) and history["resumed_from_epoch"] == 0
    assert "train_inr starts afresh: the interrupted run in" in caplog.text
    assert ("seed: 0 -> 1" if "seed" in change else "loop.lambda_recon: 1.0 -> 0.5") in caplog.text
    assert left.exists()  # the interrupted configuration keeps its state for its own rerun


def test_a_resumed_run_says_so_keeps_its_warm_start_record_and_equals_an_uninterrupted_one(inputs, workdir, monkeypatch, caplog):
    straight, straight_history = train(inputs)
    interrupt(inputs, monkeypatch)
    (saved,) = workdir.glob("train_inr-*.pt")
    with caplog.at_level(logging.INFO):
        resumed, history = train(inputs)
    assert f"resuming train_inr from epoch 1 of 2 ({saved.relative_to(workdir.parents[3])})" in caplog.text
    assert same_weights(resumed, straight)
    assert history["resumed_from_epoch"] == 1
    assert history["reconstruction_warm_start"] == straight_history["reconstruction_warm_start"] != []
    assert history["reconstruction_seconds"] > 0
    assert [e["train_loss"] for e in history["epochs"]] == [e["train_loss"] for e in straight_history["epochs"]]
    assert not list(workdir.glob("train_inr-*"))  # finished: nothing left behind


def test_a_run_of_the_same_configuration_in_progress_stops_the_second_with_a_message(inputs, workdir, monkeypatch):
    interrupt(inputs, monkeypatch)
    (lock,) = workdir.glob("train_inr-*.lock")
    with open(lock, "r+") as held:  # as the first run's process holds it while it trains
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunConflictError, match="same configuration is training train_inr right now"):
            train(inputs)


def test_an_unreadable_resume_file_stops_the_stage_with_the_command_that_removes_it(inputs, workdir, monkeypatch):
    interrupt(inputs, monkeypatch)
    (saved,) = workdir.glob("train_inr-*.pt")
    saved.write_bytes(saved.read_bytes()[:100])  # torn, as by a full disk
    with pytest.raises(ResumeFileError, match=f"rm {saved.relative_to(workdir.parents[3])}"):
        train(inputs)


# -- block-wise training ---------------------------------------------------------------

LENET_BLOCKS = ["conv1", "conv2", "fc1", "fc2"]  # top-level modules: each one a block


def test_stages_after_training_refuse_a_network_or_split_the_inr_was_not_trained_on(inputs, workdir):
    fused, splits = inputs
    checkpoint, _ = train(inputs, epochs=1)
    sample = {"compressions": [0.5], "samples": 1}
    sampled = nodes.sample_weights(checkpoint, fused, splits, sample)
    assert set(sampled) == {"0.5"} and sampled["0.5"]["trained_on"] == checkpoint["trained_on"]
    # Another run's network (another seed): same shapes, other weights.
    torch.manual_seed(1)
    other = model_checkpoint(build_model("lenet", width=4), ARCH, fused=True)
    with pytest.raises(UserError, match="INR checkpoint was trained on another fused_model than those loaded.*--load-versions"):
        nodes.sample_weights(checkpoint, other, splits, sample)
    # Evaluating the sampled networks against that run's network is refused the same way.
    with pytest.raises(UserError, match="INR of the sampled networks was trained on another fused_model"):
        nodes.evaluate(sampled, other, other, splits, MORPH, {}, TASK)
    reshuffled = {**splits, "y_train": splits["y_train"].flip(0)}  # another split of the same images
    with pytest.raises(UserError, match="another splits than"):
        nodes.sample_weights(checkpoint, fused, reshuffled, sample)
    # The comparison's reports too: its similarity study reads the test images of the split.
    with pytest.raises(UserError, match="INR of the sampled networks was trained on another splits"):
        compare_nodes.analyse_similarity(sampled, {}, {}, reshuffled, {}, {"layer": "fc1"}, TASK)
    with pytest.raises(UserError, match="INR checkpoint was trained on another fused_model"):
        compare_nodes.compare_methods(None, [], {"reconstruction_seconds": 0.0, "device": "cpu"}, checkpoint, other, task=TASK)


def test_renormalised_sampling_changes_the_narrow_networks_only_and_says_so(inputs, workdir):
    fused, splits = inputs
    checkpoint, _ = train(inputs, epochs=1)
    sample = {"compressions": [0.0, 0.5], "samples": 2}
    plain = nodes.sample_weights(checkpoint, fused, splits, sample)
    renormalised = nodes.sample_weights(checkpoint, fused, splits, {**sample, "renormalise_images": 32})
    assert plain["0"]["renormalise_images"] == 0 and renormalised["0.5"]["renormalise_images"] == 32
    full, narrow = (
        [torch.equal(plain[key]["state_dict"][name], renormalised[key]["state_dict"][name]) for name in plain[key]["state_dict"]]
        for key in ("0", "0.5")
    )
    assert all(full) and not all(narrow)


def _tensors(modules):
    return frozenset(f"{m}.{kind}" for m in modules for kind in ("weight", "bias"))


def test_a_cached_teacher_trains_as_a_teacher_pass_in_every_step_would(inputs, workdir, monkeypatch):
    carried, call = [], NeuMetaLoss.__call__

    def recording(self, x, y):
        carried.append(isinstance(y, tuple))  # the batch brings the teacher's outputs
        return call(self, x, y)

    monkeypatch.setattr(NeuMetaLoss, "__call__", recording)
    _, computed = train(inputs, lambda_kd=1.0, kd_temperature=2.0)
    assert carried == [False] * 8
    carried.clear()
    _, cached = train(inputs, lambda_kd=1.0, kd_temperature=2.0, teacher_cache=True)
    assert carried == [True] * 8
    for a, b in zip(computed["epochs"], cached["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4) and a["val_score"] == pytest.approx(b["val_score"], abs=0.02)


def test_block_wise_training_adds_the_blocks_from_input_to_output(inputs, workdir, monkeypatch):
    active, call = [], NeuMetaLoss.__call__

    def recording(self, x, y):
        active.append(None if self.active is None else frozenset(self.active))
        return call(self, x, y)

    monkeypatch.setattr(NeuMetaLoss, "__call__", recording)
    checkpoint, history = train(inputs, block_epochs=1, epochs=1, block_init="keep")
    # Four steps per epoch; stage k trains the first k blocks, the last stage all of them.
    expected = [_tensors(LENET_BLOCKS[:k]) for k in (1, 2, 3)] + [None]
    assert active == [stage for stage in expected for _ in range(4)]
    assert [s["blocks"] for s in history["stages"]] == [[[m] for m in LENET_BLOCKS[:k]] for k in (1, 2, 3, 4)]
    assert [e["stage"] for e in history["epochs"]] == [1, 2, 3, 4]
    assert not list(workdir.glob("train_inr-*"))  # every stage's resume file is gone at the end


def test_an_interrupted_block_wise_run_replays_its_finished_stages_and_equals_an_uninterrupted_one(inputs, workdir, monkeypatch):
    blockwise = {"block_epochs": 1, "epochs": 1, "block_init": "keep"}
    straight, straight_history = train(inputs, **blockwise)
    with pytest.raises(Interrupted):
        train(inputs, interrupt_at=10, monkeypatch=monkeypatch, **blockwise)  # second step of stage 3
    assert len(list(workdir.glob("train_inr-stage*of4-*.pt"))) == 2  # stages 1 and 2 finished, kept
    resumed, history = train(inputs, **blockwise)
    assert same_weights(resumed, straight)
    assert [s["resumed_from_epoch"] for s in history["stages"]] == [1, 1, 0, 0]
    assert [e["train_loss"] for e in history["epochs"]] == [e["train_loss"] for e in straight_history["epochs"]]


# -- permutation objectives ------------------------------------------------------------

RESNET = {"name": "resnet20", "kwargs": {"num_classes": 10}, "input_shape": [3, 32, 32]}


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    checkpoint = model_checkpoint(randomize_batchnorm(build_model("resnet20")), RESNET)
    return checkpoint, nodes.extract_dependency_graph(checkpoint)


@pytest.mark.parametrize("objective", ["fused", "raw"])
def test_permute_then_fuse_keeps_the_function_and_reports_the_fused_tv(resnet20, objective):
    pretrained, dependency_graph = resnet20
    permuted, report = nodes.permute_weights(pretrained, dependency_graph, {"solver": "two_opt", "objective": objective})
    fused = load_model(nodes.fuse_batchnorm(permuted, {}))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(load_model(pretrained)(x), fused(x)) <= 1e-5
    # tv_fused_after is the TV of the fused_model the INR learns from, whichever objective ran.
    groups = [ChannelGroup.from_dict(g) for g in dependency_graph["groups"]]
    assert report["enabled"] and report["objective"] == objective
    assert report["tv_fused_after"] == pytest.approx(total_variation(fused, groups))
    minimised = "tv_fused" if objective == "fused" else "tv"
    assert report[f"{minimised}_after"] < report[f"{minimised}_before"]


def test_disabled_permutation_reports_both_tvs_unchanged(resnet20):
    pretrained, dependency_graph = resnet20
    permuted, report = nodes.permute_weights(pretrained, dependency_graph, {"enabled": False})
    assert report["tv_before"] == report["tv_after"] and report["tv_fused_before"] == report["tv_fused_after"]
    assert report["tv_fused_before"] != report["tv_before"]  # BN statistics count in the raw TV only
    assert all(torch.equal(permuted["state_dict"][k], v) for k, v in pretrained["state_dict"].items())


# -- BatchNorm kept (morph.batchnorm: keep) ----------------------------------------------


@pytest.mark.parametrize("narrowing", ["first", "cells"])
def test_kept_batchnorm_samples_networks_with_statistics_estimated_at_their_width(resnet20, workdir, narrowing):
    pretrained, _ = resnet20
    keep = {"generated": ["layer3.*.conv*"], "morphable": ["layer3.*.conv1"], "batchnorm": "keep", "calibration_images": 24,
            "narrowing": narrowing}
    kept = nodes.fuse_batchnorm(pretrained, keep)
    assert kept["fused"] is False and all(torch.equal(kept["state_dict"][k], v) for k, v in pretrained["state_dict"].items())
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 10
    arrays = {"x_train": rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), "y_train": labels}
    splits = make_splits(arrays, 0.25, 0.25, seed=0)
    checkpoint, _ = nodes.train_inr(kept, splits, keep, INR, {**TRAIN, "epochs": 1}, None, 0, "cpu", TASK)
    assert checkpoint["calibration_images"] == 24
    sampled = nodes.sample_weights(checkpoint, kept, splits, {"compressions": [0.0, 0.5], "samples": 1})
    half = sampled["0.5"]
    net = load_model(half)  # a standalone network with BatchNorm at half the inner width of layer3
    assert net.layer3[0].bn1.num_features == 32 and not half["fused"]
    # The BatchNorm the INR does not generate is cut as it was in training: its first channels, or each
    # narrow channel the mean of the two full ones it stands for.
    scale = pretrained["state_dict"]["layer3.0.bn1.weight"]
    torch.testing.assert_close(net.layer3[0].bn1.weight.detach(), scale[:32] if narrowing == "first" else scale.view(32, 2).mean(1))
    # Its statistics are those of the first calibration images through its own weights, as the
    # validation during training estimates them.
    images = DeviceData(splits, "train", torch.device("cpu")).x[:24]
    again = load_model(half)
    again.train()
    for m in again.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        again(images)
    for name in ("layer3.0.bn1.running_mean", "layer3.2.bn2.running_var", "layer2.1.bn1.running_var"):
        torch.testing.assert_close(half["state_dict"][name], again.state_dict()[name])
    assert not torch.allclose(half["state_dict"]["layer3.0.bn2.running_var"], pretrained["state_dict"]["layer3.0.bn2.running_var"])
