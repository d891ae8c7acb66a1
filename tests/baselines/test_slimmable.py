import torch
from torch import nn

from neumeta_pipeline.baselines import fresh_at_widths
from neumeta_pipeline.baselines.slimmable import SlimmableNetwork, slimmable_objective
from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.graph import channel_groups

ARCH = {"name": "resnet20", "kwargs": {"num_classes": 10}, "input_shape": [3, 32, 32]}
WIDTHS = [{"layer3.2.conv1": 64}, {"layer3.2.conv1": 48}, {"layer3.2.conv1": 32}]


def make_slimmable() -> SlimmableNetwork:
    torch.manual_seed(0)
    model = build_model("resnet20")
    return SlimmableNetwork(model, channel_groups(model, torch.zeros(1, 3, 32, 32)), WIDTHS)


def test_each_width_has_its_own_batchnorm_statistics():
    net = make_slimmable().train()
    x = torch.randn(8, 3, 32, 32)
    net(x, 1)
    bn = lambda i: net.norms[i]["layer3__2__bn1"]  # noqa: E731
    assert bn(1).running_mean.shape == (48,) and bn(1).num_batches_tracked == 1
    assert bn(0).num_batches_tracked == 0 and bn(2).num_batches_tracked == 0
    assert torch.count_nonzero(bn(1).running_mean) > 0 and torch.count_nonzero(bn(0).running_mean) == 0
    # The shared network's own BatchNorm is never touched.
    assert net.model.layer3[2].bn1.num_batches_tracked == 0


def test_one_step_trains_shared_weights_and_every_private_batchnorm():
    net = make_slimmable().train()
    loss, _ = slimmable_objective(net)(torch.randn(8, 3, 32, 32), torch.arange(8) % 10)
    loss.backward()
    conv = net.model.layer3[2].conv1.weight.grad
    assert conv is not None and torch.count_nonzero(conv[:32]) > 0
    assert all(net.norms[i]["layer3__2__bn1"].weight.grad is not None for i in range(3))
    assert net.model.layer3[2].bn1.weight.grad is None


def test_extracted_network_matches_the_slimmable_forward():
    net = make_slimmable().train()
    for _ in range(3):
        for i in range(3):
            net(torch.randn(8, 3, 32, 32), i)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    for i, widths in enumerate(WIDTHS):
        standalone = net.extract(widths)
        assert standalone.layer3[2].conv1.out_channels == widths["layer3.2.conv1"]
        torch.testing.assert_close(standalone(x), net(x, i))


def test_an_untrained_width_borrows_the_nearest_wider_batchnorm():
    net = make_slimmable()
    assert net.norm_source({"layer3.2.conv1": 16}) == 2
    assert net.norm_source({"layer3.2.conv1": 40}) == 1
    narrow = net.extract({"layer3.2.conv1": 16})
    torch.testing.assert_close(narrow.layer3[2].bn1.running_var, net.norms[2]["layer3__2__bn1"].running_var[:16])
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_stored_parameters_count_shared_weights_once_and_each_private_batchnorm():
    net = make_slimmable()
    model_params = sum(p.numel() for p in net.model.parameters())
    bn1_full, bn1_private = 2 * 64, 2 * (64 + 48 + 32)
    # Every other BatchNorm keeps its full size in all three widths.
    all_bn = sum(p.numel() for m in net.model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    other_bn = all_bn - bn1_full
    assert net.stored_parameters() == model_params - bn1_full - other_bn + bn1_private + 3 * other_bn


def test_fresh_at_widths_initialises_for_the_narrow_fan_in():
    torch.manual_seed(0)
    net = fresh_at_widths({"name": "lenet", "kwargs": {"width": 32}, "input_shape": [1, 28, 28]}, {"conv1": 8, "conv2": 16, "fc1": 32})
    assert net.conv2.in_channels == 8 and net.fc1.in_features == 16 * 16
    # PyTorch's default init bounds weights by 1/sqrt(fan_in): the narrowed fan-in, not the full one.
    bound = 1 / (8 * 25) ** 0.5
    assert net.conv2.weight.abs().max() <= bound and net.conv2.weight.abs().max() > 0.9 * bound / 3 ** 0.5
    assert isinstance(net.fc2, nn.Linear) and net(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
