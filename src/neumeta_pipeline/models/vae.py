"""A small convolutional VAE whose decoder upsamples with ConvTranspose2d (CelebA-style, 32x32 RGB
by default, or 28x28 grey with ``in_channels=1, image_size=28``)."""

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
        self.to_stats = nn.Linear(2 * width * side * side, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, 2 * width * side * side)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.to_stats(torch.flatten(self.encoder(x), 1)).chunk(2, dim=1)
        return mean, log_var

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # -1 rather than a stored width, so a narrowed copy of this model still decodes.
        h = self.from_latent(z).view(z.shape[0], -1, self.side, self.side)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the posterior mean (sampling lives in the loss)."""
        mean, _ = self.encode(x)
        return self.decode(mean)
