"""Task kinds: what a network's output means, and so how it is trained and scored.

Every stage is the same for every kind: the training loop, ``NeuMetaLoss``, sampling, evaluation.
A kind supplies the few things that differ: the training output and loss, the distillation
divergence, the metrics over a split, and which metric selects models and heads the tables.

- ``classification``: one label per image; cross-entropy; top-1 accuracy.
- ``segmentation``: one label per pixel (a void label ignored everywhere); per-pixel
  cross-entropy; mIoU over the whole split, with per-class IoU, pixel accuracy and mean F1.
- ``generation``: a VAE reconstructs its input (labels are unused); the negative ELBO;
  reconstruction MSE summed per image and an importance-sampled NLL in nats per image (lower is
  better). The network is called with a ``mode`` (``models.vae.ConvVAE.forward``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .generation import generation_scores, negative_elbo, reconstruction_mse
from .metrics import accuracy, mean_kl, segmentation_scores

KINDS = ("classification", "segmentation", "generation")
# Each kind's main metric as charts name it, and as the comparison's columns abbreviate it.
METRIC_NAMES = {"accuracy": "accuracy", "miou": "mIoU", "mse": "reconstruction MSE"}
METRIC_SHORT = {"accuracy": "acc", "miou": "miou", "mse": "mse"}
PERCENT_METRICS = ("accuracy", "miou")  # fractions, shown as percentages; the others as they are
LOWER_IS_BETTER = ("mse", "nll")


def metric_scale(metric: str) -> float:
    """What a metric is multiplied by for charts and tables: 100 for fractions, else 1."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def metric_unit(metric: str) -> str:
    return " (%)" if metric in PERCENT_METRICS else " (lower is better)" if metric in LOWER_IS_BETTER else ""


@dataclass(frozen=True)
class TaskKind:
    name: str = "classification"
    num_classes: int | None = None
    ignore_index: int | None = None  # segmentation: the void label
    nll_samples: int = 32  # generation: importance samples per image of the test NLL
    nll_images: int | None = 1000  # generation: test images the NLL is estimated on (None: all)

    def __post_init__(self) -> None:
        if self.name not in KINDS:
            raise ValueError(f"unknown task kind {self.name!r}; use one of {KINDS}")

    @property
    def metric(self) -> str:
        """The metric that heads the result tables (``score`` is the one that selects models)."""
        return {"classification": "accuracy", "segmentation": "miou", "generation": "mse"}[self.name]

    def output(self, call, x: torch.Tensor):
        """The network's training output for a batch: its logits, or for generation (the decoding
        of a posterior draw, mean, log-variance). ``call`` is the network or runs it with other weights."""
        return call(x, mode="train") if self.name == "generation" else call(x)

    def loss(self, output, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of ``output`` (from ``self.output``) on the batch ``x`` with labels ``y``."""
        if self.name == "generation":
            return negative_elbo(output[0], x, output[1], output[2])
        if self.ignore_index is None:
            return F.cross_entropy(output, y)
        return F.cross_entropy(output, y, ignore_index=self.ignore_index)

    def kl(self, student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) of log-probabilities over dim 1, averaged over images (and over
        pixels for segmentation, so its scale does not grow with the image size)."""
        if self.name == "classification":
            return F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
        return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=1).mean()

    def distill(self, student_output, teacher_output: torch.Tensor, temperature: float) -> torch.Tensor:
        """How far the student's output is from the teacher's, the distillation term before its
        T^2 factor: the KL of the softened class probabilities, or for generation the squared
        distance between the student's reconstruction and the teacher's (through its posterior
        mean), summed over pixels, averaged over images (no temperature: 1 is required)."""
        if self.name == "generation":
            student = student_output[0] if isinstance(student_output, tuple) else student_output
            return reconstruction_mse(student, teacher_output)
        return self.kl(F.log_softmax(student_output / temperature, dim=1), F.log_softmax(teacher_output / temperature, dim=1))

    def divergence(self, p_output: torch.Tensor, q_output: torch.Tensor) -> float:
        """How different two networks' evaluation outputs on the same images are: KL(p || q) of
        the softmax outputs (averaged over images, and pixels), or for generation the squared
        distance of the reconstructions summed per image, averaged over images."""
        if self.name == "generation":
            return float(reconstruction_mse(p_output.double(), q_output.double()))
        return mean_kl(p_output, q_output)

    def scores(self, forward, data, batch_size: int | None = None) -> dict:
        """Every test metric of this kind for ``forward`` over a whole split; ``self.metric`` among
        them. ``batch_size`` None: 1,000 images, 16 for segmentation (a logit per pixel and
        class), 500 for generation."""
        if self.name == "classification":
            return {"accuracy": accuracy(forward, data, batch_size or 1000)}
        if self.name == "generation":
            return generation_scores(forward, data, self.nll_samples, self.nll_images, batch_size or 500)
        return segmentation_scores(forward, data, self.num_classes, self.ignore_index, batch_size or 16)

    def score(self, forward, data, batch_size: int | None = None) -> float:
        """The higher-is-better number that selects models on validation: the main metric, or for
        generation minus the negative ELBO (one posterior draw per image from a fixed seed, so
        validating leaves the training's random streams alone)."""
        if self.name == "generation":
            return -generation_scores(forward, data, 1, None, batch_size or 500)["nll"]
        return self.scores(forward, data, batch_size)[self.metric]


def table_metric(table) -> str:
    """The score column of a result table: its task kind's main metric."""
    return next(m for m in METRIC_NAMES if m in table.columns)


def task_kind(splits: dict, **settings) -> TaskKind:
    """The kind a data split was made for (splits made before kinds existed are classification);
    ``settings`` are the evaluation's other fields (a generation task's ``nll_samples``, ``nll_images``)."""
    return TaskKind(splits.get("kind", "classification"), splits.get("num_classes"), splits.get("ignore_index"), **settings)
