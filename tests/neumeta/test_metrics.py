import torch

from neumeta_pipeline.data import DeviceData
from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.metrics import accuracy, collapse_alarms, count_params_and_macs


def test_accuracy_counts_correct_predictions():
    splits = {"x_test": torch.zeros(4, 1, 1, 1, dtype=torch.uint8), "y_test": torch.tensor([0, 1, 1, 2]),
              "mean": [0.0], "std": [1.0]}
    data = DeviceData(splits, "test", "cpu")
    always_one = lambda x: torch.tensor([[0.0, 1.0, 0.0]]).expand(len(x), 3)  # noqa: E731
    assert accuracy(always_one, data, batch_size=3) == 0.5


def test_params_and_macs_of_lenet_by_hand():
    net = build_model("lenet", width=2)
    params, macs = count_params_and_macs(net, torch.zeros(1, 1, 28, 28))
    assert params == sum(p.numel() for p in net.parameters())
    # conv1: 2*24*24*25, conv2: 4*8*8*2*25, fc1: 64*8, fc2: 8*10
    by_hand = 2 * 24 * 24 * 25 + 4 * 8 * 8 * 2 * 25 + 64 * 8 + 8 * 10
    assert by_hand <= macs <= by_hand * 1.15  # the counter also counts bias adds, ReLU and pooling


def test_collapse_alarm_on_equal_accuracies_and_vanishing_norms():
    assert collapse_alarms({0.0: 0.9, 0.5: 0.8}, {0.0: 10.0, 0.5: 9.0}, 10.0) == []
    same = collapse_alarms({0.0: 0.42, 0.25: 0.42, 0.5: 0.42}, {0.0: 10.0}, 10.0)
    assert len(same) == 1 and "every width" in same[0]
    tiny = collapse_alarms({0.0: 0.9, 0.5: 0.8}, {0.0: 10.0, 0.5: 0.01}, 10.0)
    assert len(tiny) == 1 and "0.5" in tiny[0]
