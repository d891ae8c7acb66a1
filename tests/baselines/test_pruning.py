import pytest
import torch

from neumeta_pipeline.baselines.pruning import IMPORTANCES, prune_channels
from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.graph import channel_groups


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, channel_groups(model, x[:1]), x, torch.arange(16) % 10


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_pruned_resnet_has_the_requested_channels_and_runs(resnet, importance):
    model, groups, x, y = resnet
    pruned = prune_channels(model, groups, {"layer3.2.conv1": 24}, importance, x, y, seed=0)
    block = pruned.layer3[2]
    assert block.conv1.out_channels == 24 and block.bn1.num_features == 24 and block.conv2.in_channels == 24
    assert block.conv2.out_channels == 64  # the residual stream is not a pruned group
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert pruned(x).shape == (16, 10)
    assert model.layer3[2].conv1.out_channels == 64  # the input network is left as it was


def test_pruning_lenet_everywhere_keeps_the_flatten_into_the_linear_layer_consistent():
    torch.manual_seed(0)
    model = build_model("lenet", width=8).eval()
    x = torch.randn(4, 1, 28, 28)
    groups = channel_groups(model, x[:1])
    pruned = prune_channels(model, groups, {"conv1": 4, "conv2": 8, "fc1": 16}, "l1", x)
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels, pruned.fc1.out_features) == (4, 8, 16)
    assert pruned.fc1.in_features == 8 * 16 and pruned(x).shape == (4, 10)


def test_l1_keeps_the_largest_filters_in_their_order():
    torch.manual_seed(0)
    model = build_model("lenet", width=4).eval()
    with torch.no_grad():  # make conv1's filters 1 and 3 the large ones, everything else tiny
        model.conv1.weight.mul_(1e-3)
        model.conv1.weight[[1, 3]] *= 1e4
        model.conv1.bias.zero_()
    x = torch.randn(2, 1, 28, 28)
    pruned = prune_channels(model, channel_groups(model, x[:1]), {"conv1": 2}, "l1", x)
    torch.testing.assert_close(pruned.conv1.weight, model.conv1.weight[[1, 3]])
    torch.testing.assert_close(pruned.conv2.weight, model.conv2.weight[:, [1, 3]])


def test_random_importance_follows_the_seed(resnet):
    model, groups, x, _ = resnet
    a, b, c = (prune_channels(model, groups, {"layer3.2.conv1": 32}, "random", x, seed=s).layer3[2].conv1.weight for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_requests_fail_before_any_work(resnet):
    model, groups, x, _ = resnet
    with pytest.raises(ValueError, match="unknown importance"):
        prune_channels(model, groups, {"layer3.2.conv1": 32}, "magic", x)
    with pytest.raises(ValueError, match="needs labelled"):
        prune_channels(model, groups, {"layer3.2.conv1": 32}, "taylor", x)
    with pytest.raises(ValueError, match="unknown channel groups"):
        prune_channels(model, groups, {"nope": 3}, "l1", x)
