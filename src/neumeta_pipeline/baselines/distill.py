"""Knowledge distillation from the full-width network into a narrower one."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def distillation_objective(student: nn.Module, teacher: nn.Module, temperature: float, alpha: float) -> Callable:
    """``alpha * T^2 * KL(teacher || student)`` at temperature ``T`` plus ``(1 - alpha) * cross-entropy``.

    The T^2 factor keeps the soft term's gradients on the scale of the hard one whatever T is.
    The teacher runs in eval mode without gradients.
    """
    teacher.eval()

    def objective(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = student(x)
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / temperature, dim=1)
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, log_target=True, reduction="batchmean")
        hard = F.cross_entropy(logits, y)
        loss = alpha * temperature**2 * soft + (1.0 - alpha) * hard
        return loss, {"soft": soft.detach(), "hard": hard.detach()}

    return objective
