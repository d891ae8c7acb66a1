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
