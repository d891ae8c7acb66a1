"""Evaluation metrics and model cost counts."""

from __future__ import annotations

import torch
from torch import nn

from ..data import DeviceData


@torch.no_grad()
def accuracy(forward, data: DeviceData, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``forward`` (a module or any callable from inputs to logits) on ``data``."""
    correct = 0
    for x, y in data.batches(batch_size):
        correct += int((forward(x).argmax(dim=1) == y).sum())
    return correct / max(1, len(data))


def count_params_and_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward pass of the whole network."""
    import torch_pruning as tp

    model = model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(params), int(macs)


def weight_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in model.parameters())))


def collapse_alarms(accuracies: dict[float, float], norms: dict[float, float], reference_norm: float) -> list[str]:
    """The collapse signature of a hypernetwork: one accuracy at every width (the generated part
    has become an identity or a constant), or generated weights whose norm has vanished."""
    alarms = []
    if len(accuracies) > 1 and len(set(accuracies.values())) == 1:
        value = next(iter(accuracies.values()))
        alarms.append(f"every width has accuracy {value:.4f}: the generated part may have collapsed")
    for gamma, norm in norms.items():
        if norm < 1e-2 * reference_norm:
            alarms.append(f"compression {gamma:g}: weight norm {norm:.3g} is under 1% of the pretrained {reference_norm:.3g}")
    return alarms
