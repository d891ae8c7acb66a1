"""Turn a trained INR into standalone networks: K-sample averaged weights for a width, written
into a resized copy of the target network that runs without the INR."""

from __future__ import annotations

import torch
from torch import nn

from .inr import NeuMetaINR
from .morph import MorphSpec, batchnorm_statistics, resize


@torch.no_grad()
def sample_model(
    inr: NeuMetaINR,
    target: nn.Module,
    widths: dict[str, int],
    samples: int,
    noise: float,
    seed: int,
    calibration: torch.Tensor | None = None,
) -> nn.Module:
    """The network at ``widths`` with the INR's weights averaged over ``samples`` noisy coordinates;
    with ``calibration`` images, its BatchNorm statistics are estimated on them."""
    if samples < 1:
        raise ValueError(f"samples (K) must be >= 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    weights = inr.generate(widths, noise=noise if samples > 1 else 0.0, samples=samples, generator=generator)
    model = resize(target, inr.spec.groups, widths)
    state = model.state_dict()
    for name, value in weights.items():
        if state[name].shape != value.shape:
            raise RuntimeError(f"generated {name} has shape {tuple(value.shape)}, the network expects {tuple(state[name].shape)}")
        state[name] = value
    if calibration is not None:
        state.update(batchnorm_statistics(model, state, calibration))
    model.load_state_dict(state)
    return model.eval()


def load_inr(checkpoint: dict) -> NeuMetaINR:
    """Rebuild a trained INR from the checkpoint ``train_inr`` writes."""
    # Checkpoints written before layouts and coordinate options existed have one MLP per tensor and
    # corner coordinates with width-scaled noise; say so here rather than lean on the constructor's
    # defaults, which may change.
    config = {"layout": "per_tensor", "centred": False, "noise_scaling": "width", "size_inputs": True, **checkpoint["inr_config"]}
    inr = NeuMetaINR(MorphSpec.from_dict(checkpoint["spec"]), **config)
    inr.load_state_dict(checkpoint["state_dict"])
    return inr.eval()
