import pytest
import torch

from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.fuse import fuse_batchnorm
from neumeta_pipeline.neumeta.morph import (
    MorphSpec,
    batch_statistics,
    batchnorm_statistics,
    has_batchnorm,
    named_tensors,
    resize,
)

X_MNIST = torch.randn(4, 1, 28, 28)
X_CIFAR = torch.randn(4, 3, 32, 32)


def lenet_spec(width=8):
    model = build_model("lenet", width=width).eval()
    return model, MorphSpec(model, X_MNIST[:1])


def test_lenet_generates_every_layer_and_morphs_every_hidden_width():
    model, spec = lenet_spec()
    assert [t.name for t in spec.tensors] == [
        f"{m}.{k}" for m in ("conv1", "conv2", "fc1", "fc2") for k in ("weight", "bias")
    ]
    assert spec.full_widths == {"conv1": 8, "conv2": 16, "fc1": 32}  # the logits never morph
    fc1 = next(t for t in spec.tensors if t.name == "fc1.weight")
    assert (fc1.in_group, fc1.in_block, fc1.full_in, fc1.kernel) == ("conv2", 16, 16, 16)
    assert spec.widths(0.5) == {"conv1": 4, "conv2": 8, "fc1": 16}
    assert spec.widths(0.99) == {"conv1": 1, "conv2": 1, "fc1": 1}
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        spec.widths(1.0)


def test_running_with_sliced_real_weights_equals_the_resized_network():
    model, spec = lenet_spec()
    widths = spec.widths(0.375)
    small = resize(model, spec.groups, widths)
    state = small.state_dict()
    weights = {t.name: state[t.name] for t in spec.tensors}
    assert torch.allclose(spec.run(model, widths, weights, X_MNIST), small(X_MNIST), atol=1e-6)
    assert small.conv1.out_channels == 5 and small.fc1.in_features == 10 * 16


def test_last_resnet_block_of_a_fused_resnet20():
    model = fuse_batchnorm(build_model("resnet20").eval())
    spec = MorphSpec(model, X_CIFAR[:1], generated=["layer3.2.conv1", "layer3.2.conv2"], morphable=["layer3.2.conv1"])
    assert [t.name for t in spec.tensors] == [
        "layer3.2.conv1.weight", "layer3.2.conv1.bias", "layer3.2.conv2.weight", "layer3.2.conv2.bias"
    ]
    assert spec.full_widths == {"layer3.2.conv1": 64}
    conv2 = spec.tensors[2]
    assert conv2.in_group == "layer3.2.conv1" and conv2.kernel == 9
    widths = spec.widths(0.75)
    small = resize(model, spec.groups, widths)
    assert small.layer3[2].conv1.out_channels == 16 and small(X_CIFAR).shape == (4, 10)


def test_a_pattern_matching_nothing_is_an_error_not_a_smaller_selection():
    model = build_model("lenet", width=4)
    with pytest.raises(ValueError, match="conv9"):
        MorphSpec(model, X_MNIST[:1], generated=["conv9"])


def test_spec_round_trips_through_a_plain_dict():
    _, spec = lenet_spec()
    again = MorphSpec.from_dict(spec.to_dict())
    assert again.tensors == spec.tensors and again.full_widths == spec.full_widths and again.norm == spec.norm
    assert again.narrowing == "first"
    model = build_model("lenet", width=8).eval()
    cells = MorphSpec.from_dict(MorphSpec(model, X_MNIST[:1], narrowing="cells").to_dict())
    assert cells.narrowing == "cells" and cells.input_dims == {"conv1.weight": 1, "conv2.weight": 1, "fc1.weight": 1, "fc2.weight": 1}
    old = {k: v for k, v in spec.to_dict().items() if k not in ("narrowing", "input_dims")}
    assert MorphSpec.from_dict(old).narrowing == "first"  # saved before narrowing existed


def test_narrowing_by_cells_keeps_the_function_of_a_network_whose_channels_come_in_equal_cells():
    # conv -> BatchNorm -> ReLU -> conv -> BatchNorm, none of it generated (generated: the last
    # layer only), whose 6 inner channels are 3 cells of 2 equal channels: cut to 3 channels by
    # cells (means, and sums along the second conv's inputs) it computes what it did at full width.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 1), torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5),
    )
    x = torch.randn(2, 3, 8, 8)
    net(x)
    with torch.no_grad():
        net[0].weight.copy_(conv.weight.repeat_interleave(2, 0))
        net[0].bias.copy_(conv.bias.repeat_interleave(2))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(net[1], name).copy_(torch.rand(3).repeat_interleave(2) + 0.5)
    net.eval()
    spec = MorphSpec(net, x[:1], generated=["7"], morphable="all", narrowing="cells")
    inner = next(g.name for g in spec.groups if any(m.tensor == "0.weight" and m.dim == 0 for m in g.members))
    widths = {inner: 3}
    narrow = resize(net, spec.groups, widths)
    narrow.load_state_dict({**narrow.state_dict(), **spec.frozen_tensors(net, widths)})
    assert narrow[0].out_channels == 3 and narrow[3].in_channels == 3
    with torch.no_grad():
        torch.testing.assert_close(narrow(x), net(x))
        first = resize(net, spec.groups, widths)  # the first channels: another function
        assert not torch.allclose(first(x), net(x), atol=1e-3)
    # Training reaches the cut tensors through it: gradients flow back to the full-width ones.
    tensors = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in named_tensors(net).items()}
    spec.narrow(tensors, widths)["3.weight"].sum().backward()
    assert tensors["3.weight"].grad.abs().min() > 0  # every full input channel counts


# -- BatchNorm kept (morph.batchnorm: keep) ---------------------------------------------


def conv_bn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()


def test_batchnorm_statistics_are_the_images_own_and_change_nothing():
    model = conv_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = torch.randn(4, 3, 3, 3)  # a "generated" weight that differs from the model's own
    with torch.no_grad():
        features = torch.nn.functional.conv2d(X_CIFAR, weight, model[0].bias)
    stats = batchnorm_statistics(model, {"0.weight": weight}, X_CIFAR, batch_size=len(X_CIFAR))
    torch.testing.assert_close(stats["1.running_mean"], features.mean((0, 2, 3)))
    torch.testing.assert_close(stats["1.running_var"], features.var((0, 2, 3), unbiased=True))
    assert not model.training and model[1].momentum == 0.1  # modes restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing written
    # Several batches: the exact average of the batches' statistics, not a running blend.
    halves = [batchnorm_statistics(model, {"0.weight": weight}, half)["1.running_mean"] for half in X_CIFAR.split(2)]
    split = batchnorm_statistics(model, {"0.weight": weight}, X_CIFAR, batch_size=2)
    torch.testing.assert_close(split["1.running_mean"], (halves[0] + halves[1]) / 2)


def test_batch_statistics_normalise_each_batch_and_leave_the_running_ones():
    model = conv_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), batch_statistics(model):
        out = model[1](model[0](X_CIFAR))
    assert out.mean((0, 2, 3)).abs().max() < 1e-5  # normalised with this batch's mean
    assert not model.training and model[1].track_running_stats
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert has_batchnorm(model) and not has_batchnorm(fuse_batchnorm(model))


def test_narrowing_the_vae_latent_gives_a_working_smaller_vae():
    """Keeping the first k latent dims equals the full VAE whose other latent dims are dropped."""
    from neumeta_pipeline.neumeta.graph import channel_groups

    torch.manual_seed(0)
    model = build_model("conv_vae").eval()
    groups = channel_groups(model, X_CIFAR[:1])
    small = resize(model, groups, {"to_mean": 8})
    assert small.to_mean.out_features == small.to_log_var.out_features == small.from_latent.in_features == 8
    z = torch.randn(4, 32)
    with torch.no_grad():
        (mean, log_var), (mean_s, log_var_s) = model.encode(X_CIFAR), small.encode(X_CIFAR)
        assert mean_s.shape == log_var_s.shape == (4, 8)
        assert torch.allclose(mean_s, mean[:, :8], atol=1e-6) and torch.allclose(log_var_s, log_var[:, :8], atol=1e-6)
        dropped = torch.cat([z[:, :8], torch.zeros(4, 24)], dim=1)
        assert torch.allclose(small.decode(z[:, :8]), model.decode(dropped), atol=1e-6)
        assert small(X_CIFAR).shape == X_CIFAR.shape
        # Every hidden width at half, the latent included, still maps images to images.
        half = resize(model, groups, {g.name: g.size // 2 for g in groups if g.permutable})
        assert half.encode(X_CIFAR)[0].shape == (4, 16) and half(X_CIFAR).shape == X_CIFAR.shape


def test_a_group_produced_as_rows_of_positions_cannot_morph():
    # The VAE's from_latent gives 64 channels as 64 x 49 rows (reshaped into a 7x7 map): the INR
    # generates a row per channel, so that group must stay whole, and the error says so.
    from neumeta_pipeline.neumeta.morph import MorphSpec

    model = build_model("conv_vae", in_channels=1, image_size=28).eval()
    x = torch.rand(1, 1, 28, 28)
    with pytest.raises(ValueError, match="group 'from_latent' cannot morph: from_latent.weight produces it as 3136 rows for 64"):
        MorphSpec(model, x, "all", ["from_latent"])
    spec = MorphSpec(model, x, "all", ["encoder.0", "encoder.3", "decoder.0"])
    assert spec.widths(0.5) == {"encoder.0": 16, "encoder.3": 32, "decoder.0": 16}
