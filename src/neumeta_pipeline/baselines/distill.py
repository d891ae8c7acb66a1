"""Knowledge distillation from the full-width network into a narrower one."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..neumeta.tasks import TaskKind


def distillation_objective(
    student: nn.Module, teacher: nn.Module, temperature: float, alpha: float, kind: TaskKind = TaskKind()
) -> Callable:
    """``alpha * T^2 * KL(teacher || student)`` at temperature ``T`` plus ``(1 - alpha) * task loss``
    (cross-entropy; per pixel for segmentation, where the KL is averaged over pixels too; for
    generation the soft term is the squared distance to the teacher's reconstruction and T is 1).

    The T^2 factor keeps the soft term's gradients on the scale of the hard one whatever T is.
    The teacher runs in eval mode without gradients.
    """
    teacher.eval()

    def objective(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        output = kind.output(student, x)
        with torch.no_grad():
            target = teacher(x)
        soft = kind.distill(output, target, temperature)
        hard = kind.loss(output, x, y)
        loss = alpha * temperature**2 * soft + (1.0 - alpha) * hard
        return loss, {"soft": soft.detach(), "hard": hard.detach()}

    return objective
