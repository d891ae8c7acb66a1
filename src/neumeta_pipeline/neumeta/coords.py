"""The 6-D coordinate of every generated weight element.

For element (c_out, c_in) of generated layer l in a configuration with L generated layers and
(C_in, C_out) channels, the raw coordinate is ``[l, c_in, c_out, L, C_in, C_out]`` and the INR sees
``[l/L, c_in/C_in, c_out/C_out, L/N, C_in/N, C_out/N]`` with N the widest generated channel count.
Training adds uniform noise to the raw coordinate (cross-model smoothness); routing to the right
MLP always uses the clean tensor identity, never a noisy coordinate.
"""

from __future__ import annotations

import torch

from .morph import MorphSpec, TensorSpec


def raw_coordinates(spec: MorphSpec, tensor: TensorSpec, widths: dict[str, int], device=None) -> torch.Tensor:
    """(C_out * C_in, 6) raw coordinates, out-channel major (matches a (C_out, C_in, k) view)."""
    c_out, c_in = spec.channels(tensor, widths)
    out_idx = torch.arange(c_out, device=device, dtype=torch.float32)
    in_idx = torch.arange(c_in, device=device, dtype=torch.float32)
    grid_out, grid_in = torch.meshgrid(out_idx, in_idx, indexing="ij")
    n = c_out * c_in
    const = torch.tensor([tensor.layer, spec.num_layers, c_in, c_out], device=device, dtype=torch.float32)
    return torch.stack(
        [
            const[0].expand(n),
            grid_in.reshape(-1),
            grid_out.reshape(-1),
            const[1].expand(n),
            const[2].expand(n),
            const[3].expand(n),
        ],
        dim=1,
    )


def normalise(raw: torch.Tensor, norm: float) -> torch.Tensor:
    """Map raw coordinates to the INR's input: indices relative to their sizes, sizes relative to N."""
    layer, c_in, c_out, num_layers, size_in, size_out = raw.unbind(dim=-1)
    return torch.stack(
        [layer / num_layers, c_in / size_in, c_out / size_out, num_layers / norm, size_in / norm, size_out / norm],
        dim=-1,
    )


def add_noise(raw: torch.Tensor, scale: float, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform noise of total width ``scale`` (in raw index units) on all six coordinates."""
    if scale == 0.0:
        return raw
    noise = torch.rand(raw.shape, generator=generator).to(raw.device) - 0.5
    return raw + scale * noise
