"""The methods NeuMeta is compared against, as plain PyTorch (no Kedro import).

- ``fresh_at_widths``: a freshly initialised network at a width configuration (individually
  trained and distilled models start from it);
- ``slimmable``: one network with shared weights and a private BatchNorm per trained width;
- ``pruning``: structured pruning of chosen channel groups with torch-pruning's importances;
- ``distill``: the knowledge-distillation objective for training a narrow model from the full one.

Widths are the same ``{channel group: channels}`` dicts the hypernetwork uses, so every method
builds exactly the networks NeuMeta is evaluated at.
"""

from __future__ import annotations

from torch import nn

from ..models import build_model, load_encoder_weights
from ..models.checkpoint import example_input
from ..neumeta.graph import channel_groups
from ..neumeta.morph import resize


def fresh_at_widths(arch: dict, widths: dict[str, int]) -> nn.Module:
    """A newly initialised network of ``arch`` narrowed to ``widths``.

    Narrowing a full-width network keeps initial values drawn for the full fan-in, so every layer
    is re-initialised at its narrowed shape: the result is what building it natively would give.
    """
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    if widths:
        model = resize(model, channel_groups(model, example_input(arch)), widths)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if arch.get("encoder_weights"):  # every trained network starts from the same backbone
        load_encoder_weights(model, arch["encoder_weights"])
    return model


__all__ = ["fresh_at_widths"]
