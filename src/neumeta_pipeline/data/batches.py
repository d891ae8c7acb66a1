"""Device-resident batching: a split is normalised and moved to the device once, then batched and
augmented there, so a GPU is never starved by a CPU data loader (MNIST and CIFAR fit easily)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .sources import STREAMED_SOURCE


class DeviceData:
    """One split as float tensors on ``device``, normalised with the training split's statistics."""

    def __init__(self, splits: dict, split: str, device: torch.device | str) -> None:
        mean = torch.tensor(splits["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(splits["std"], device=device).view(1, -1, 1, 1)
        self.x = (splits[f"x_{split}"].to(device).float() / 255.0 - mean) / std
        self.y = splits[f"y_{split}"].to(device)
        self.ignore_index = splits.get("ignore_index")  # label maps: what crops pad with

    def __len__(self) -> int:
        return len(self.y)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        augment: str = "none",
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch; shuffled (and augmented) when a generator is given, in order otherwise.

        ``shard=(rank, world)``: of each global batch this process takes positions ``rank::world``,
        so ``world`` processes together see the one-process batch. Every rank draws the same
        random numbers whatever its shard; a last batch smaller than ``world`` is left out so no
        rank gets an empty one.
        """
        rank, world = shard
        n = len(self)
        order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
        order = order.to(self.x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            crops = None
            if augment != "none" and generator is not None:
                crops = augmentation(len(idx), augment, generator)
            if len(idx) < world:
                continue
            idx = idx[rank::world]
            x, y = self.x[idx], self.y[idx]
            if crops is not None:
                crops = tuple(c[rank::world] for c in crops)
                x = apply_augmentation(x, crops)
                if y.dim() == 3:  # a label map moves with its image; what the crop brings in is void
                    y = apply_augmentation(y[:, None], crops, fill=self.ignore_index)[:, 0]
            yield x, y

    def take(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples at ``indices`` of the split, in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x.device)
        return self.x[idx], self.y[idx]


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``crop_flip``: random 4-pixel-padded crops and horizontal flips (the CIFAR recipe), done
    for the whole batch with one gather instead of per-image Python work."""
    return apply_augmentation(x, augmentation(len(x), kind, generator))


_PAD = 4


def augmentation(n: int, kind: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of ``n`` images' augmentation (row and column offsets, flips), on the CPU
    generator so the stream is identical on every device and every rank."""
    if kind != "crop_flip":
        raise ValueError(f"unknown augmentation {kind!r}; use 'none' or 'crop_flip'")
    dy = torch.randint(0, 2 * _PAD + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * _PAD + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def apply_augmentation(
    x: torch.Tensor, draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor], fill: float | int = 0
) -> torch.Tensor:
    """Crop and flip each image of ``x`` as drawn; the padding the crops reach into is ``fill``."""
    dy, dx, flip = (d.to(x.device) for d in draws)
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (_PAD, _PAD, _PAD, _PAD), value=fill)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None]).view(n, 1, h, 1)
    cols = torch.arange(w, device=x.device)[None].expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = (dx[:, None] + cols).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]


def split_data(splits: dict, split: str, device: torch.device | str):
    """One split ready for the training loop: device-resident, or streamed from disk for a
    source too large for memory (``imagefolder``). Both have ``len``, ``batches`` and ``take``."""
    if splits.get("source") == STREAMED_SOURCE:
        from .folders import FolderData

        return FolderData(splits, split, device)
    return DeviceData(splits, split, device)
