"""The 6-D coordinate of every generated weight element.

For element (c_out, c_in) of generated layer l in a configuration with L generated layers and
(C_in, C_out) channels, the raw coordinate is ``[l, c_in, c_out, L, C_in, C_out]`` and the INR sees
``[l/L, c_in/C_in, c_out/C_out, L/N, C_in/N, C_out/N]`` with N the widest generated channel count.
With ``centred`` coordinates a channel index maps to the centre of its cell, ``(c + 0.5)/C``: a
narrow layer's channels then sample the same interval as the full layer's, symmetrically, instead
of all starting at 0 and stopping short of 1 by a width-dependent gap. With ``full_sizes`` the
INR is shown the full channel counts at every width instead of the current ones: a weight is then a
function of its position alone, and an unseen width asks for new positions in the interval it was
trained on, not for a channel count outside the range it saw.

Training adds uniform noise to the raw coordinate (cross-model smoothness). Its width is in raw
index units, so relative to the layer it covers one channel's cell at every width (``noise:
width``); with ``noise: fixed`` the channel coordinates' noise covers one cell of the full width
instead, the same absolute blur at every width. Routing to the right MLP always uses the clean
tensor identity, never a noisy coordinate.
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


def normalise(
    raw: torch.Tensor, norm: float, centred: bool = False, full_sizes: tuple[int, int] | None = None
) -> torch.Tensor:
    """Map raw coordinates to the INR's input: indices relative to their sizes, sizes relative to N.
    ``full_sizes`` (C_in, C_out of the full-width tensor) replace the sizes the INR sees; the
    indices stay relative to the current sizes."""
    layer, c_in, c_out, num_layers, size_in, size_out = raw.unbind(dim=-1)
    if centred:
        c_in, c_out = c_in + 0.5, c_out + 0.5
    position_in, position_out = c_in / size_in, c_out / size_out
    if full_sizes is not None:
        size_in, size_out = (torch.full_like(size_in, float(n)) for n in full_sizes)
    return torch.stack(
        [layer / num_layers, position_in, position_out, num_layers / norm, size_in / norm, size_out / norm],
        dim=-1,
    )


def add_noise(
    raw: torch.Tensor, scale: float, generator: torch.Generator | None, channel_scale: tuple[float, float] = (1.0, 1.0)
) -> torch.Tensor:
    """Uniform noise of total width ``scale`` (in raw index units) on all six coordinates; the
    (c_in, c_out) columns' noise is further multiplied by ``channel_scale``."""
    if scale == 0.0:
        return raw
    noise = torch.rand(raw.shape, generator=generator).to(raw.device) - 0.5
    if channel_scale != (1.0, 1.0):
        factor = torch.tensor([1.0, *channel_scale, 1.0, 1.0, 1.0], device=raw.device)
        noise = noise * factor
    return raw + scale * noise
