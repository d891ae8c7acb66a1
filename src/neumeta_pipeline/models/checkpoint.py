"""Models as plain checkpoint dicts (loadable with ``weights_only=True``) and back.

A checkpoint records how to rebuild the network rather than pickling it: the registry name and
keyword arguments, whether BatchNorm was folded, and the channel-group widths if it was narrowed.
"""

from __future__ import annotations

import torch
from torch import nn

from . import build_model


def example_input(arch: dict, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, *arch["input_shape"])


def model_checkpoint(model: nn.Module, arch: dict, fused: bool = False, widths: dict | None = None, **extra) -> dict:
    return {
        "arch": {"name": arch["name"], "kwargs": dict(arch.get("kwargs", {})), "input_shape": list(arch["input_shape"])},
        "fused": fused,
        "widths": dict(widths or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def load_model(checkpoint: dict) -> nn.Module:
    """Rebuild the network of a checkpoint (fused and narrowed as recorded) and load its weights."""
    from ..neumeta.fuse import fuse_batchnorm
    from ..neumeta.graph import channel_groups
    from ..neumeta.morph import resize

    arch = checkpoint["arch"]
    model = build_model(arch["name"], **arch["kwargs"]).eval()
    if checkpoint.get("fused"):
        model = fuse_batchnorm(model)
    if checkpoint.get("widths"):
        model = resize(model, channel_groups(model, example_input(arch)), checkpoint["widths"])
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model.eval()
