"""Task kinds: what a network's output means, and so how it is trained and scored.

Every stage is the same for every kind: the training loop, ``NeuMetaLoss``, sampling, evaluation.
A kind supplies the few things that differ: the training loss, the distillation divergence, the
metrics over a split, and which metric selects models and heads the tables.

- ``classification``: one label per image; cross-entropy; top-1 accuracy.
- ``segmentation``: one label per pixel (a void label ignored everywhere); per-pixel
  cross-entropy; mIoU over the whole split, with per-class IoU, pixel accuracy and mean F1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .metrics import accuracy, segmentation_scores

KINDS = ("classification", "segmentation")
# Each kind's main metric as charts name it, and as the comparison's columns abbreviate it.
METRIC_NAMES = {"accuracy": "accuracy", "miou": "mIoU"}
METRIC_SHORT = {"accuracy": "acc", "miou": "miou"}


@dataclass(frozen=True)
class TaskKind:
    name: str = "classification"
    num_classes: int | None = None
    ignore_index: int | None = None  # segmentation: the void label

    def __post_init__(self) -> None:
        if self.name not in KINDS:
            raise ValueError(f"unknown task kind {self.name!r}; use one of {KINDS}")

    @property
    def metric(self) -> str:
        """The metric that selects models and heads the result tables (higher is better)."""
        return "accuracy" if self.name == "classification" else "miou"

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.ignore_index is None:
            return F.cross_entropy(logits, y)
        return F.cross_entropy(logits, y, ignore_index=self.ignore_index)

    def kl(self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) of log-probabilities over dim 1, averaged over images (and over
        pixels for segmentation, so its scale does not grow with the image size). Distillation
        multiplies it by T^2."""
        if self.name == "classification":
            return F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
        return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=1).mean()

    def scores(self, forward, data, batch_size: int | None = None) -> dict:
        """Every metric of this kind for ``forward`` over a whole split; ``self.metric`` among them.
        ``batch_size`` None: 1,000 images, or 16 for segmentation (a logit per pixel and class)."""
        if self.name == "classification":
            return {"accuracy": accuracy(forward, data, batch_size or 1000)}
        return segmentation_scores(forward, data, self.num_classes, self.ignore_index, batch_size or 16)

    def score(self, forward, data, batch_size: int | None = None) -> float:
        return self.scores(forward, data, batch_size)[self.metric]


def table_metric(table) -> str:
    """The score column of a result table: its task kind's main metric."""
    return "accuracy" if "accuracy" in table.columns else "miou"


def task_kind(splits: dict) -> TaskKind:
    """The kind a data split was made for (splits made before kinds existed are classification)."""
    return TaskKind(splits.get("kind", "classification"), splits.get("num_classes"), splits.get("ignore_index"))
