"""A small convolutional VAE whose decoder upsamples with ConvTranspose2d (CelebA-style, 32x32 RGB
by default, or 28x28 grey with ``in_channels=1, image_size=28``).

The posterior mean and log-variance come from two separate heads, ``to_mean`` and ``to_log_var``,
rather than one head split in two, so the latent channels are a whole axis that network surgery
can permute and narrow. ``forward`` couples the two heads elementwise (see there) so the channel
tracer puts both heads and ``from_latent``'s columns in one group.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvVAE(nn.Module):
    def __init__(self, in_channels: int = 3, latent_dim: int = 32, width: int = 32, image_size: int = 32) -> None:
        super().__init__()
        if image_size % 4 != 0:
            raise ValueError(f"ConvVAE image_size must be a multiple of 4, got {image_size}")
        side = image_size // 4
        self.side = side
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
        )
        self.to_mean = nn.Linear(2 * width * side * side, latent_dim)
        self.to_log_var = nn.Linear(2 * width * side * side, latent_dim)
        self.from_latent = nn.Linear(latent_dim, 2 * width * side * side)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the diagonal Gaussian posterior q(z|x), each (batch, latent_dim)."""
        h = torch.flatten(self.encoder(x), 1)
        return self.to_mean(h), self.to_log_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli pixel probabilities in (0, 1) for latents ``z``."""
        # -1 rather than a stored width, so a narrowed copy of this model still decodes.
        h = self.from_latent(z).view(z.shape[0], -1, self.side, self.side)
        return torch.sigmoid(self.decoder(h))

    @staticmethod
    def sample_latent(
        mean: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One reparameterised draw z = mean + eps * exp(log_var / 2), eps ~ N(0, I), with eps drawn
        from ``generator`` on its own device (the global generator when None)."""
        device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=device).to(mean.device)
        return _reparameterise(mean, log_var, eps)

    def forward(self, x: torch.Tensor, mode: str = "reconstruct"):
        """One of the VAE's four computations, chosen by ``mode``. Everything that runs a network
        with other weights (``torch.func.functional_call``) reaches a module through ``forward``, so
        the training objective and the metrics pick the part they need here:

        - ``reconstruct`` (the default, and what the channel tracer and ONNX export see): the
          deterministic reconstruction of ``x`` through the posterior mean;
        - ``train``: (the decoding of one posterior draw, mean, log-variance), for the negative
          ELBO; the draw's noise comes from torch's global generator;
        - ``encode``: (mean, log-variance) of q(z|x);
        - ``decode``: pixel probabilities for latents ``x``.

        In ``reconstruct`` the mean is reached as the reparameterisation with zero noise, which is
        exact, so the traced graph sees mean and log-variance meet elementwise: that couples the two
        heads' channels into one permutable group, as they must be (channel i of both is latent dim i).
        """
        if mode == "decode":
            return self.decode(x)
        mean, log_var = self.encode(x)
        if mode == "encode":
            return mean, log_var
        if mode == "train":
            return self.decode(self.sample_latent(mean, log_var)), mean, log_var
        if mode != "reconstruct":
            raise ValueError(f"unknown ConvVAE mode {mode!r}; use reconstruct, train, encode or decode")
        return self.decode(_reparameterise(mean, log_var, torch.zeros_like(mean)))


def _reparameterise(mean: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return mean + eps * torch.exp(0.5 * log_var)
