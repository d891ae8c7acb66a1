"""Channel groups: which tensor slices must share one permutation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.graph import ChannelGroup, Member, channel_groups, channel_index

pytestmark = pytest.mark.usefixtures("single_thread")


def by_name(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {g.name: g for g in groups}


def member_set(group: ChannelGroup) -> set[tuple[str, int, int, int]]:
    return {(m.tensor, m.dim, m.start, m.block) for m in group.members}


def bn_members(prefix: str) -> set[tuple[str, int, int, int]]:
    return {(f"{prefix}.{k}", 0, 0, 1) for k in ("weight", "bias", "running_mean", "running_var")}


def test_resnet20_groups_have_the_expected_structure():
    groups = channel_groups(build_model("resnet20"), torch.randn(1, 3, 32, 32))
    named = by_name(groups)
    streams = {"conv1": 16, "layer2.0.conv2": 32, "layer3.0.conv2": 64}
    inner = {f"layer{s}.{b}.conv1": w for s, w in zip((1, 2, 3), (16, 32, 64)) for b in range(3)}
    assert set(named) == set(streams) | set(inner) | {"fc"}
    assert len(groups) == 13
    for name, size in {**streams, **inner}.items():
        assert named[name].size == size and named[name].permutable, name

    # One inner group per block: conv1's rows, bn1, conv2's columns, nothing else.
    for name in inner:
        block = name.rsplit(".", 1)[0]
        assert member_set(named[name]) == {
            (f"{block}.conv1.weight", 0, 0, 1),
            (f"{block}.conv2.weight", 1, 0, 1),
        } | bn_members(f"{block}.bn1")

    # One group for the whole residual stream of a stage: every conv2 and shortcut that adds
    # into it, their BNs, and every reader of the stream.
    stage2 = member_set(named["layer2.0.conv2"])
    for b in range(3):
        assert (f"layer2.{b}.conv2.weight", 0, 0, 1) in stage2
        assert bn_members(f"layer2.{b}.bn2") <= stage2
    assert ("layer2.0.shortcut.0.weight", 0, 0, 1) in stage2
    readers = {(f"{k}.weight", 1, 0, 1) for k in ("layer2.1.conv1", "layer3.0.conv1", "layer3.0.shortcut.0")}
    assert readers <= stage2
    stage1 = member_set(named["conv1"])
    assert ("conv1.weight", 0, 0, 1) in stage1 and ("layer2.0.shortcut.0.weight", 1, 0, 1) in stage1
    assert ("fc.weight", 1, 0, 1) in member_set(named["layer3.0.conv2"])

    # The logits are the network's output axis; the image channels are never a group.
    assert not named["fc"].permutable and "output" in named["fc"].reason
    assert member_set(named["fc"]) == {("fc.weight", 0, 0, 1), ("fc.bias", 0, 0, 1)}
    assert all(m.tensor != "conv1.weight" or m.dim == 0 for g in groups for m in g.members)


def test_lenet_flatten_into_linear_uses_blocks():
    named = by_name(channel_groups(build_model("lenet"), torch.randn(1, 1, 28, 28)))
    assert list(named) == ["conv1", "conv2", "fc1", "fc2"]
    assert member_set(named["conv2"]) == {
        ("conv2.weight", 0, 0, 1),
        ("conv2.bias", 0, 0, 1),
        ("fc1.weight", 1, 0, 16),  # 4 x 4 spatial positions per channel after flatten
    }
    assert named["conv2"].size == 64 and named["fc1"].size == 128
    assert not named["fc2"].permutable


def test_to_dict_round_trip_through_json():
    groups = channel_groups(build_model("conv_vae"), torch.randn(1, 3, 32, 32))
    restored = [ChannelGroup.from_dict(json.loads(json.dumps(g.to_dict()))) for g in groups]
    assert restored == groups


def test_channel_index_expands_blocks_and_offsets():
    index = channel_index(Member("w", 1, start=10, block=3), torch.tensor([2, 0]))
    assert index.tolist() == [16, 17, 18, 10, 11, 12]
    assert index.dtype == torch.long


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 5, 1)

    def forward(self, x):
        return self.c(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))


def test_concatenation_gives_offsets_into_the_consumer():
    named = by_name(channel_groups(Concat(), torch.randn(1, 3, 8, 8)))
    assert member_set(named["a"]) == {("a.weight", 0, 0, 1), ("a.bias", 0, 0, 1), ("c.weight", 1, 0, 1)} | {
        (f"bn.{k}", 0, 0, 1) for k in ("weight", "bias", "running_mean", "running_var")
    }
    assert member_set(named["b"]) == {("b.weight", 0, 0, 1), ("b.bias", 0, 0, 1), ("c.weight", 1, 4, 1)} | {
        (f"bn.{k}", 0, 4, 1) for k in ("weight", "bias", "running_mean", "running_var")
    }
    assert named["a"].permutable and named["b"].permutable


def test_unet_skip_concatenations_split_the_decoder_input(surgery_zoo):
    model, x, _ = surgery_zoo("unet")
    groups = channel_groups(model, x)
    key = "decoder.blocks.0.conv1.0.weight"
    spans = sorted(
        (m.start, m.start + g.size * m.block, g.name)
        for g in groups
        for m in g.members
        if (m.tensor, m.dim) == (key, 1)
    )
    assert len(spans) == 2 and spans[0][0] == 0 and spans[0][1] == spans[1][0]
    assert spans[1][1] == model.state_dict()[key].shape[1]
    assert all(g.permutable for g in groups if g.name.startswith(("encoder", "decoder")))
    assert not by_name(groups)["segmentation_head.0"].permutable


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)  # channel multiplier 2
        self.bn = nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.project(self.bn(self.dw(self.expand(x))))


def test_depthwise_convolution_carries_its_input_channels():
    named = by_name(channel_groups(Depthwise(), torch.randn(1, 3, 8, 8)))
    assert set(named) == {"expand", "project"}  # the depthwise conv produces no channels of its own
    assert member_set(named["expand"]) == {
        ("expand.weight", 0, 0, 1),
        ("expand.bias", 0, 0, 1),
        ("dw.weight", 0, 0, 2),
        ("dw.bias", 0, 0, 2),
        ("project.weight", 1, 0, 2),
    } | {(f"bn.{k}", 0, 0, 2) for k in ("weight", "bias", "running_mean", "running_var")}


def test_mobilenet_depthwise_joins_the_expansion_group(surgery_zoo):
    model, x, _ = surgery_zoo("mobilenet_v2")
    group = by_name(channel_groups(model, x))["features.2.conv.0.0"]
    assert ("features.2.conv.1.0.weight", 0, 0, 1) in member_set(group)
    assert ("features.2.conv.2.weight", 1, 0, 1) in member_set(group)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(self.g(self.a(x)))


def test_grouped_convolution_is_refused():
    named = by_name(channel_groups(Grouped(), torch.randn(1, 3, 8, 8)))
    assert not named["a"].permutable and "grouped conv" in named["a"].reason
    assert not named["g"].permutable and "grouped conv" in named["g"].reason


def test_conv_transpose_and_latent_view_in_the_vae():
    named = by_name(channel_groups(build_model("conv_vae"), torch.randn(1, 3, 32, 32)))
    # ConvTranspose weights are (in, out, k, k): out channels on dim 1, in channels on dim 0.
    assert ("decoder.0.weight", 1, 0, 1) in member_set(named["decoder.0"])
    assert ("decoder.3.weight", 0, 0, 1) in member_set(named["decoder.0"])
    # from_latent's rows are viewed as (channels, 8, 8): 64 rows per decoder input channel.
    assert member_set(named["from_latent"]) == {
        ("from_latent.weight", 0, 0, 64),
        ("from_latent.bias", 0, 0, 64),
        ("decoder.0.weight", 0, 0, 1),
    }
    # Both posterior heads read the flattened encoder output, 64 columns per encoder channel.
    assert {("to_mean.weight", 1, 0, 64), ("to_log_var.weight", 1, 0, 64)} <= member_set(named["encoder.3"])
    # Mean and log-variance meet elementwise in forward, so latent dim i is one channel of both
    # heads and of the decoder's input: one permutable group.
    latent = named["to_mean"]
    assert latent.permutable and latent.size == 32
    assert member_set(latent) == {
        ("to_mean.weight", 0, 0, 1),
        ("to_mean.bias", 0, 0, 1),
        ("to_log_var.weight", 0, 0, 1),
        ("to_log_var.bias", 0, 0, 1),
        ("from_latent.weight", 1, 0, 1),
    }
    assert [g.name for g in named.values() if not g.permutable] == ["decoder.3"]
    assert "output" in named["decoder.3"].reason


class Roll(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(self.b(torch.roll(self.a(x), 1, dims=1)))


def test_unknown_op_on_a_channel_axis_is_refused_with_its_name():
    named = by_name(channel_groups(Roll(), torch.randn(1, 3, 8, 8)))
    assert not named["a"].permutable and "roll" in named["a"].reason
    assert named["b"].permutable


class Tricky(nn.Module):
    """A global residual on the input, a channel slice, and a plain permutable branch."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.Conv2d(3, 3, 3, padding=1)
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = x + self.res(x)
        return self.a(y)[:, :3].mean() + self.c(self.b(y)).mean()


class Escape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        z = torch.from_numpy(y.numpy()[:, ::-1].copy())  # reorders channels behind torch's back
        return self.b(z)


def test_values_leaving_torch_refuse_the_group():
    named = by_name(channel_groups(Escape(), torch.randn(1, 3, 8, 8)))
    assert not named["a"].permutable and "numpy" in named["a"].reason


def test_input_axis_and_channel_slices_are_never_permuted():
    named = by_name(channel_groups(Tricky(), torch.randn(1, 3, 8, 8)))
    assert not named["res"].permutable and "input" in named["res"].reason
    assert not named["a"].permutable and "sliced" in named["a"].reason
    assert named["b"].permutable


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11_bn"])
def test_every_layer_axis_is_in_exactly_one_group(surgery_zoo, name):
    model, x, _ = surgery_zoo(name)
    groups = channel_groups(model, x)
    owned: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for g in groups:
        for m in g.members:
            owned.setdefault((m.tensor, m.dim), []).append((m.start, m.start + g.size * m.block))
    state = model.state_dict()
    first = next(n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d))
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        for dim in (0, 1):
            if (mod_name, dim) == (first, 1):
                assert (f"{first}.weight", 1) not in owned  # the image channels
                continue
            spans = sorted(owned[(f"{mod_name}.weight", dim)])
            assert spans[0][0] == 0 and spans[-1][1] == state[f"{mod_name}.weight"].shape[dim]
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mobilenet_v2", "unet"])
def test_producer_partition_agrees_with_torch_pruning(surgery_zoo, name):
    """An independent implementation (autograd-graph based) must couple the same layers."""
    tp = pytest.importorskip("torch_pruning")
    model, x, _ = surgery_zoo(name)
    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    theirs = set()
    for group in dg.get_all_groups():
        layers = {
            names[dep.target.module]
            for dep, _ in group
            if dep.handler.__name__ == "prune_out_channels" and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
        }
        theirs.add(frozenset(layers))
    weights = {f"{n}.weight": n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    ours = {
        frozenset(weights[m.tensor] for m in g.members if m.dim == 0 and m.tensor in weights)
        for g in channel_groups(model, x)
    }
    assert ours == theirs


def test_training_flags_are_restored():
    model = build_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    channel_groups(model, torch.randn(2, 3, 32, 32))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
