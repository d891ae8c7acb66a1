"""Task kinds: the loss, the distillation term and the kind a split was made for."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neumeta_pipeline.neumeta.tasks import TaskKind, task_kind


def test_classification_loss_is_cross_entropy():
    logits, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert torch.equal(TaskKind("classification", 3).loss(logits, y), F.cross_entropy(logits, y))


def test_segmentation_loss_averages_over_labelled_pixels_only():
    kind = TaskKind("segmentation", num_classes=3, ignore_index=3)
    logits = torch.randn(2, 3, 2, 2)
    y = torch.tensor([[[0, 1], [3, 2]], [[3, 3], [1, 1]]])
    loss = kind.loss(logits, y)
    valid = y != 3
    by_hand = -F.log_softmax(logits, 1).permute(0, 2, 3, 1)[valid].gather(1, y[valid][:, None]).mean()
    torch.testing.assert_close(loss, by_hand)
    changed = logits.clone()
    changed.permute(0, 2, 3, 1)[~valid] = 100.0  # whatever the network says at void pixels
    torch.testing.assert_close(kind.loss(changed, y), loss)


def test_segmentation_kl_is_the_mean_over_pixels():
    kind = TaskKind("segmentation", num_classes=4, ignore_index=255)
    student = F.log_softmax(torch.randn(2, 4, 3, 5), dim=1)
    teacher = F.log_softmax(torch.randn(2, 4, 3, 5), dim=1)
    pixels = [(n, i, j) for n in range(2) for i in range(3) for j in range(5)]
    by_hand = sum((teacher[n, :, i, j].exp() * (teacher[n, :, i, j] - student[n, :, i, j])).sum() for n, i, j in pixels) / 30
    torch.testing.assert_close(kind.kl(student, teacher), by_hand)
    assert abs(float(kind.kl(teacher, teacher))) < 1e-6  # a student equal to its teacher


def test_a_split_says_its_kind():
    assert task_kind({"num_classes": 10}) == TaskKind("classification", 10)
    camvid = task_kind({"kind": "segmentation", "num_classes": 11, "ignore_index": 11})
    assert camvid.metric == "miou" and camvid.ignore_index == 11
