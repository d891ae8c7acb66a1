import torch

from neumeta_pipeline.data import DeviceData
from neumeta_pipeline.models import build_model
import pytest

from neumeta_pipeline.neumeta.metrics import (
    accuracy,
    collapse_alarms,
    count_params_and_macs,
    features_and_logits,
    linear_cka,
    mean_kl,
    segmentation_scores,
)


def test_accuracy_counts_correct_predictions():
    splits = {"x_test": torch.zeros(4, 1, 1, 1, dtype=torch.uint8), "y_test": torch.tensor([0, 1, 1, 2]),
              "mean": [0.0], "std": [1.0]}
    data = DeviceData(splits, "test", "cpu")
    always_one = lambda x: torch.tensor([[0.0, 1.0, 0.0]]).expand(len(x), 3)  # noqa: E731
    assert accuracy(always_one, data, batch_size=3) == 0.5


def test_segmentation_scores_count_pixels_over_the_whole_split_and_skip_void():
    # Two 1x3 images, 3 classes, void = 3. Predictions are the labels given as one-hot "logits".
    labels = torch.tensor([[[0, 1, 3]], [[1, 1, 2]]])
    predicted = torch.tensor([[[0, 1, 2]], [[1, 0, 0]]])  # the void pixel's prediction must not count
    splits = {"x_test": torch.zeros(2, 1, 1, 3, dtype=torch.uint8), "y_test": labels, "mean": [0.0], "std": [1.0]}
    order = iter([predicted[:1], predicted[1:]])
    forward = lambda x: torch.nn.functional.one_hot(next(order), 3).permute(0, 3, 1, 2).float()  # noqa: E731
    scores = segmentation_scores(forward, DeviceData(splits, "test", "cpu"), num_classes=3, ignore_index=3, batch_size=1)
    # Valid pixels (label, prediction): (0,0) (1,1) (1,1) (1,0) (2,0).
    # class 0: tp 1, fp 2, fn 0 -> IoU 1/3, F1 2/4; class 1: tp 2, fp 0, fn 1 -> IoU 2/3, F1 4/5;
    # class 2: tp 0, fp 0, fn 1 -> IoU 0, F1 0. Per batch and averaged, the scores would differ.
    assert scores["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert scores["miou"] == pytest.approx(1 / 3)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)
    assert scores["mean_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_a_quiet_generated_part_raises_the_alarm_even_when_scores_differ_a_little():
    scores = {0.0: 0.367, 0.25: 0.368, 0.5: 0.366}  # nearly flat: what a switched-off residual branch gives
    assert collapse_alarms(scores, {}, 1.0, generated_ratio=0.8) == []
    (alarm,) = collapse_alarms(scores, {}, 1.0, generated_ratio=0.03)
    assert "3.0% of the pretrained ones' norm" in alarm and "median over tensors" in alarm


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


def test_collapse_alarm_when_every_width_is_near_chance_level():
    # As measured on the whole ResNet20 with the compact INR (H200 run): 9-16%, pretrained 61.7%.
    noise = {0.0: 0.1009, 0.125: 0.1609, 0.25: 0.1513, 0.75: 0.0912}
    (alarm,) = collapse_alarms(noise, {}, 10.0, chance=0.1, reference_accuracy=0.617)
    assert "chance level" in alarm and "0.6170" in alarm
    # The line is a quarter of the reference's margin over chance: 0.1 + 0.25 * 0.517 = 0.229.
    assert collapse_alarms({**noise, 0.0: 0.228}, {}, 10.0, chance=0.1, reference_accuracy=0.617)
    assert collapse_alarms({**noise, 0.0: 0.23}, {}, 10.0, chance=0.1, reference_accuracy=0.617) == []
    assert collapse_alarms(noise, {}, 10.0, chance=0.1, reference_accuracy=0.15) == []  # the reference is no better


def test_linear_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(50, 20, generator=torch.Generator().manual_seed(0))
    assert abs(linear_cka(x, x) - 1.0) < 1e-12
    wide = torch.randn(10, 300, generator=torch.Generator().manual_seed(1))  # Gram-matrix branch
    assert abs(linear_cka(wide, wide) - 1.0) < 1e-12


def test_linear_cka_is_invariant_to_orthogonal_transforms_and_scale():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 12, generator=gen), torch.randn(60, 8, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    rotated = (x.double() @ q) * 3.0 + 5.0  # rotation, isotropic scale and a shift (removed by centring)
    assert abs(linear_cka(rotated, x) - 1.0) < 1e-10
    assert abs(linear_cka(rotated, y) - linear_cka(x, y)) < 1e-10
    assert linear_cka(x, y) < 0.5  # independent noise is far from aligned
    # Both branches (n x n Gram matrices, d x d covariances) give one value.
    small = x[:10]
    assert abs(linear_cka(small, small @ q.float()[:, :5]) - linear_cka(small.repeat(1, 2), (small @ q.float()[:, :5]).repeat(1, 2))) < 1e-6


def test_linear_cka_rejects_mismatched_examples():
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))


def test_mean_kl_is_zero_for_equal_outputs_and_positive_otherwise():
    p = torch.randn(20, 10, generator=torch.Generator().manual_seed(0))
    assert mean_kl(p, p) == 0.0 and abs(mean_kl(p, p + 7.0)) < 1e-12  # softmax ignores a shift
    assert mean_kl(p, torch.zeros_like(p)) > 0


def test_features_and_logits_capture_the_named_layer():
    net = build_model("lenet", width=2).eval()
    feats, logits = features_and_logits(net, "fc1", torch.randn(7, 1, 28, 28), batch_size=3)
    assert feats.shape == (7, 8) and logits.shape == (7, 10)
    with pytest.raises(ValueError, match="no layer 'fc9'"):
        features_and_logits(net, "fc9", torch.randn(1, 1, 28, 28))
