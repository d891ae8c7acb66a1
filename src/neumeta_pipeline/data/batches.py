"""Device-resident batching: a split is normalised and moved to the device once, then batched and
augmented there, so a GPU is never starved by a CPU data loader (MNIST and CIFAR fit easily)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class DeviceData:
    """One split as float tensors on ``device``, normalised with the training split's statistics."""

    def __init__(self, splits: dict, split: str, device: torch.device | str) -> None:
        mean = torch.tensor(splits["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(splits["std"], device=device).view(1, -1, 1, 1)
        self.x = (splits[f"x_{split}"].to(device).float() / 255.0 - mean) / std
        self.y = splits[f"y_{split}"].to(device)

    def __len__(self) -> int:
        return len(self.y)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        augment: str = "none",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch; shuffled (and augmented) when a generator is given, in order otherwise."""
        n = len(self)
        order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
        order = order.to(self.x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = self.x[idx]
            if augment != "none" and generator is not None:
                x = augment_batch(x, augment, generator)
            yield x, self.y[idx]


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``crop_flip``: random 4-pixel-padded crops and horizontal flips (the CIFAR recipe), done
    for the whole batch with one gather instead of per-image Python work."""
    if kind != "crop_flip":
        raise ValueError(f"unknown augmentation {kind!r}; use 'none' or 'crop_flip'")
    n, _, h, w = x.shape
    pad = 4
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # Offsets are drawn on the CPU generator so the stream is identical on every device.
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None]).view(n, 1, h, 1)
    cols = torch.arange(w, device=x.device)[None].expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = (dx[:, None] + cols).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]
