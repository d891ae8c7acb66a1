import pytest
import torch

from neumeta_pipeline.models import build_model
from neumeta_pipeline.models.checkpoint import load_model, model_checkpoint
from neumeta_pipeline.neumeta.inr import NeuMetaINR
from neumeta_pipeline.neumeta.morph import MorphSpec
from neumeta_pipeline.neumeta.sample import load_inr, renormalise, sample_model

X = torch.randn(3, 1, 28, 28)


def _inr():
    torch.manual_seed(0)
    target = build_model("lenet", width=8).eval()
    spec = MorphSpec(target, X[:1])
    return NeuMetaINR(spec, num_frequencies=4, hidden=16, depth=1), target


def test_sampled_models_have_the_right_shapes_and_run_without_the_inr():
    inr, target = _inr()
    arch = {"name": "lenet", "kwargs": {"width": 8}, "input_shape": [1, 28, 28]}
    for gamma in (0.0, 0.25, 0.5, 0.75):
        widths = inr.spec.widths(gamma)
        net = sample_model(inr, target, widths, samples=4, noise=1.0, seed=0)
        assert net.conv1.out_channels == widths["conv1"] and net.fc1.out_features == widths["fc1"]
        # Through a checkpoint and back: a plain network, no INR involved.
        again = load_model(model_checkpoint(net, arch, widths=widths))
        assert torch.equal(again(X), net(X))


def test_k_averaging_is_seeded_and_k1_is_the_clean_prediction():
    inr, target = _inr()
    widths = inr.spec.widths(0.25)
    a = sample_model(inr, target, widths, samples=8, noise=1.0, seed=3)
    b = sample_model(inr, target, widths, samples=8, noise=1.0, seed=3)
    assert torch.equal(a(X), b(X))
    clean = inr.generate(widths)
    one = sample_model(inr, target, widths, samples=1, noise=1.0, seed=3)
    assert torch.equal(one.state_dict()["conv2.weight"], clean["conv2.weight"])


def test_inr_checkpoint_round_trip():
    inr, _ = _inr()
    checkpoint = {"spec": inr.spec.to_dict(), "inr_config": inr.config, "state_dict": inr.state_dict()}
    again = load_inr(checkpoint)
    widths = inr.spec.widths(0.5)
    assert all(torch.equal(a, b) for a, b in zip(inr.generate(widths).values(), again.generate(widths).values()))


def test_per_kind_checkpoint_round_trip_keeps_the_layout():
    torch.manual_seed(0)
    target = build_model("lenet", width=8).eval()
    inr = NeuMetaINR(MorphSpec(target, X[:1]), num_frequencies=4, hidden=16, depth=1, layout="per_kind")
    checkpoint = {"spec": inr.spec.to_dict(), "inr_config": inr.config, "state_dict": inr.state_dict()}
    again = load_inr(checkpoint)
    assert again.config["layout"] == "per_kind" and len(again.mlps) == len(inr.mlps) == 4
    widths = inr.spec.widths(0.5)
    assert all(torch.equal(a, b) for a, b in zip(inr.generate(widths).values(), again.generate(widths).values()))


def test_checkpoints_without_a_layout_load_as_per_tensor():
    inr, _ = _inr()
    old = ("layout", "centred", "noise_scaling", "size_inputs")
    config = {k: v for k, v in inr.config.items() if k not in old}  # as train_inr wrote it before these options
    again = load_inr({"spec": inr.spec.to_dict(), "inr_config": config, "state_dict": inr.state_dict()})
    assert again.config["layout"] == "per_tensor" and len(again.mlps) == len(inr.spec.tensors)
    assert again.config["centred"] is False and again.config["noise_scaling"] == "width"
    assert again.config["size_inputs"] is True


def test_coordinate_options_round_trip_and_change_the_weights():
    torch.manual_seed(0)
    target = build_model("lenet", width=8).eval()
    plain = NeuMetaINR(MorphSpec(target, X[:1]), num_frequencies=4, hidden=16, depth=1)
    inr = NeuMetaINR(MorphSpec(target, X[:1]), num_frequencies=4, hidden=16, depth=1, centred=True, noise_scaling="fixed", size_inputs=False)
    inr.load_state_dict(plain.state_dict())
    again = load_inr({"spec": inr.spec.to_dict(), "inr_config": inr.config, "state_dict": inr.state_dict()})
    widths = inr.spec.widths(0.5)
    def generate(module):
        return module.generate(widths, noise=1.0, samples=3, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(generate(inr).values(), generate(again).values()))
    assert not torch.equal(generate(inr)["conv2.weight"], generate(plain)["conv2.weight"])


def test_shared_tensors_and_branch_scales_reach_the_sampled_network_through_a_checkpoint():
    from neumeta_pipeline.neumeta.fuse import fuse_batchnorm

    torch.manual_seed(0)
    target = fuse_batchnorm(build_model("resnet20")).eval()
    x = torch.randn(2, 3, 32, 32)
    spec = MorphSpec(target, x[:1], ["layer3.*"], ["layer3.*.conv1"])
    inr = NeuMetaINR(spec, num_frequencies=3, hidden=8, depth=1, reference=target.state_dict(),
                     shared={"fc.weight": [10, 64], "fc.bias": [10]}, branch_scale=["layer3.0.conv2"], branch_scale_init=0.0)
    with torch.no_grad():
        inr.shared[1].add_(1.0)  # trained away from the reference
    again = load_inr({"spec": spec.to_dict(), "inr_config": inr.config, "state_dict": inr.state_dict()})
    widths = spec.widths(0.5)
    net = sample_model(again, target, widths, samples=1, noise=0.0, seed=0)
    assert torch.equal(net.fc.bias, target.fc.bias + 1.0)
    assert not net.layer3[0].conv2.weight.any() and net.layer3[1].conv2.weight.any()  # scale 0 switches the branch off
    with torch.no_grad():
        torch.testing.assert_close(net(x), spec.run(target, widths, inr.generate(widths), x))


def _channel_stats(net, module, images):
    """Per-output-channel mean and standard deviation of one module's output on ``images``."""
    out = {}
    handle = getattr(net, module).register_forward_hook(lambda _m, _i, o: out.setdefault("o", o))
    with torch.no_grad():
        net(images)
    handle.remove()
    o = out["o"]
    o = o.transpose(0, 1).flatten(1) if o.dim() == 4 else o.T
    return o.mean(1), o.std(1, unbiased=False)


def test_renormalised_channels_take_the_mean_and_spread_of_the_full_channels_they_stand_for():
    inr, target = _inr()  # LeNet width 8: conv1 8, conv2 16, fc1 32 channels
    images = torch.randn(64, 1, 28, 28)
    reference = sample_model(inr, target, inr.spec.full_widths, samples=2, noise=1.0, seed=0)
    widths = inr.spec.widths(0.75)  # 2, 4 and 8 channels: each stands for 4 full ones
    net = renormalise(sample_model(inr, target, widths, samples=2, noise=1.0, seed=0), reference, inr.spec, widths, images, batch_size=24)
    for module in ("conv1", "conv2", "fc1", "fc2"):
        full_mean, full_std = _channel_stats(reference, module, images)
        mean, std = _channel_stats(net, module, images)
        cells = len(full_mean) // len(mean)  # 4, or 1 for the logits, which do not narrow
        torch.testing.assert_close(mean, full_mean.view(-1, cells).mean(1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(std, full_std.view(-1, cells).mean(1), atol=1e-4, rtol=1e-4)


def test_renormalising_the_full_width_against_itself_changes_nothing():
    inr, target = _inr()
    images = torch.randn(16, 1, 28, 28)
    widths = inr.spec.full_widths
    net = sample_model(inr, target, widths, samples=2, noise=1.0, seed=0)
    again = renormalise(sample_model(inr, target, widths, samples=2, noise=1.0, seed=0), net, inr.spec, widths, images)
    with torch.no_grad():
        torch.testing.assert_close(again(X), net(X))


def test_renormalising_refuses_kept_batchnorm_and_layers_without_a_bias():
    from neumeta_pipeline.neumeta.fuse import fuse_batchnorm

    x = torch.randn(2, 3, 32, 32)
    kept = build_model("resnet20").eval()
    spec = MorphSpec(fuse_batchnorm(kept), x[:1], ["layer3.*"], ["layer3.*.conv1"])
    with pytest.raises(ValueError, match="keeps BatchNorm.*morph.batchnorm: fold.*have no bias"):
        renormalise(kept, kept, spec, spec.widths(0.5), x)


@pytest.mark.parametrize("narrowing", ["first", "cells"])
def test_a_sampled_network_cuts_the_tensors_the_inr_does_not_generate_as_training_does(narrowing):
    from tests.neumeta.conftest import randomize_batchnorm

    torch.manual_seed(0)
    target = randomize_batchnorm(build_model("resnet20")).eval()  # BatchNorm kept: frozen on the inner widths
    x = torch.randn(2, 3, 32, 32)
    spec = MorphSpec(target, x[:1], ["layer3.*.conv*"], ["layer3.*.conv1"], narrowing=narrowing)
    trained = NeuMetaINR(spec, num_frequencies=3, hidden=8, depth=1)
    inr = load_inr({"spec": spec.to_dict(), "inr_config": trained.config, "state_dict": trained.state_dict()})  # as a checkpoint
    widths = spec.widths(0.75)
    net = sample_model(inr, target, widths, samples=1, noise=0.0, seed=0)
    bn = net.layer3[0].bn1
    full = target.layer3[0].bn1.bias.detach()
    expected = full.view(widths[spec.tensors[0].out_group], -1).mean(1) if narrowing == "cells" else full[: len(bn.bias)]
    torch.testing.assert_close(bn.bias.detach(), expected)
    with torch.no_grad():
        torch.testing.assert_close(net(x), spec.run(target, widths, inr.generate(widths), x))
