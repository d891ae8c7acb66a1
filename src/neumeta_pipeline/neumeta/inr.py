"""The hypernetwork: Fourier features of a coordinate, one residual MLP per generated tensor."""

from __future__ import annotations

import torch
from torch import nn

from .coords import add_noise, normalise, raw_coordinates
from .morph import MorphSpec


class FourierFeatures(nn.Module):
    """``[sin(2^k pi v), cos(2^k pi v)]`` for k < F. F stays modest: beyond ~2^20 float32 phases
    are noise, so high frequencies add nothing but cost."""

    def __init__(self, num_frequencies: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32))

    @property
    def out_features(self) -> int:
        return 2 * 6 * len(self.freqs)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        phase = (v[..., None] * self.freqs).flatten(-2)
        return torch.cat([phase.sin(), phase.cos()], dim=-1)


class ResidualMLP(nn.Module):
    def __init__(self, in_features: int, hidden: int, depth: int, out_features: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-activation residual blocks: a block adds a signed update. Adding ReLU outputs instead
        # makes every hidden unit positive and growing with depth, so all coordinates share one
        # dominant feature direction and gradient steps mostly shift every weight together.
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(torch.relu(h))
        return self.out(torch.relu(h))


class NeuMetaINR(nn.Module):
    """Maps the coordinates of every generated tensor to its values, one MLP per tensor."""

    def __init__(
        self,
        spec: MorphSpec,
        num_frequencies: int = 12,
        hidden: int = 256,
        depth: int = 5,
        reference: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.config = {"num_frequencies": num_frequencies, "hidden": hidden, "depth": depth}
        self.features = FourierFeatures(num_frequencies)
        self.mlps = nn.ModuleList(
            ResidualMLP(self.features.out_features, hidden, depth, t.kernel) for t in spec.tensors
        )
        # Each MLP predicts a standardised value; a per-tensor shift and scale, taken from the
        # reference (pretrained) weights in the INR's output space, map it back. Without this, the
        # fan-in division leaves freshly initialised layers near zero and training crawls.
        shift, scale = torch.zeros(len(spec.tensors)), torch.ones(len(spec.tensors))
        if reference is not None:
            for i, t in enumerate(spec.tensors):
                target = self.scaled_target(t.name, reference[t.name].detach().float().cpu())
                shift[i], scale[i] = target.mean(), target.std().clamp_min(1e-8) if target.numel() > 1 else 1.0
        self.register_buffer("out_shift", shift)
        self.register_buffer("out_scale", scale)

    def generate(
        self,
        widths: dict[str, int],
        noise: float = 0.0,
        samples: int = 1,
        generator: torch.Generator | None = None,
        trained: set[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weights of every generated tensor at ``widths``, averaged over ``samples`` noisy copies
        of each coordinate. Each tensor is one batched MLP call over all its coordinates.
        With ``trained`` given, only those tensors keep an autograd graph."""
        device = self.features.freqs.device
        weights = {}
        for i, (tensor, mlp) in enumerate(zip(self.spec.tensors, self.mlps)):
            raw = raw_coordinates(self.spec, tensor, widths, device=device)
            n = len(raw)
            # All K noisy copies are drawn at once (one seeded stream), but evaluated one copy at a
            # time: K copies in one call would hold K times the hidden activations in memory.
            noisy = add_noise(raw.repeat(samples, 1) if samples > 1 else raw, noise, generator)
            with torch.set_grad_enabled(torch.is_grad_enabled() and (trained is None or tensor.name in trained)):
                values = sum(mlp(self.features(normalise(noisy[k * n : (k + 1) * n], self.spec.norm))) for k in range(samples))
                values = (values / samples) * self.out_scale[i] + self.out_shift[i]
            weights[tensor.name] = self._to_layout(tensor, widths, values)
        return weights

    def _to_layout(self, tensor, widths, values: torch.Tensor) -> torch.Tensor:
        c_out, c_in = self.spec.channels(tensor, widths)
        if tensor.kind == "bias":
            return values.view(c_out)
        # The INR predicts weight * fan-in, so a layer's output scale does not depend on its width.
        w = values.view(c_out, c_in, *tensor.full_shape[2:], tensor.in_block) / c_in
        if tensor.in_block > 1:  # flatten into Linear: each channel owns in_block columns
            return w.reshape(c_out, c_in * tensor.in_block)
        w = w.squeeze(-1)
        return w.transpose(0, 1) if tensor.transposed else w

    def scaled_target(self, tensor_name: str, weight: torch.Tensor) -> torch.Tensor:
        """A full-width tensor in the INR's output space (weights times their fan-in)."""
        spec = next(t for t in self.spec.tensors if t.name == tensor_name)
        return weight if spec.kind == "bias" else weight * spec.full_in

    def standardised_error(self, weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error of full-width ``weights`` against ``reference`` in the standardised
        output space, averaged over tensors: every tensor counts the same whatever its scale."""
        errors = []
        for i, t in enumerate(self.spec.tensors):
            diff = self.scaled_target(t.name, weights[t.name] - reference[t.name])
            errors.append((diff / self.out_scale[i]).pow(2).mean())
        return torch.stack(errors).mean()
