"""Device-resident batching: a split is normalised and moved to the device once, then batched and
augmented there, so a GPU is never starved by a CPU data loader (MNIST and CIFAR fit easily)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .sources import STREAMED_SOURCE

# What device-resident data can be augmented with (streamed data: ``folders.AUGMENTATIONS``).
DEVICE_AUGMENTATIONS = ("none", "crop_flip", "scale_crop_flip")


@dataclass(frozen=True)
class Augment:
    """A training augmentation: its name and, for ``scale_crop_flip``, the crop and scale range.

    - ``crop_flip``: random 4-pixel-padded crops and horizontal flips at the image's own size (the
      CIFAR recipe).
    - ``scale_crop_flip``: each image rescaled by a factor drawn uniformly from ``scale``, a random
      ``crop`` (height, width) window of it, and a horizontal flip (the segmentation recipe). The
      crops are smaller than the images, so a training step costs less than one on whole images;
      evaluation still sees whole images. Where a window reaches past the image, images get 0
      (the mean, once normalised) and label maps get void.
    """

    name: str = "none"
    crop: tuple[int, int] | None = None
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.name not in DEVICE_AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.name!r}; use one of {DEVICE_AUGMENTATIONS}")
        if self.name == "scale_crop_flip" and self.crop is None:
            raise ValueError("augmentation 'scale_crop_flip' needs a crop size (height, width)")

    @classmethod
    def of(cls, augment: str | Augment) -> Augment:
        return augment if isinstance(augment, Augment) else cls(augment)


class DeviceData:
    """One split as float tensors on ``device``, normalised with the training split's statistics."""

    def __init__(self, splits: dict, split: str, device: torch.device | str) -> None:
        mean = torch.tensor(splits["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(splits["std"], device=device).view(1, -1, 1, 1)
        self.x = (splits[f"x_{split}"].to(device).float() / 255.0 - mean) / std
        self.y = splits[f"y_{split}"].to(device)
        self.ignore_index = splits.get("ignore_index")  # label maps: what crops pad with
        self.outputs: torch.Tensor | None = None  # see with_outputs

    def __len__(self) -> int:
        return len(self.y)

    def with_outputs(self, outputs: torch.Tensor) -> DeviceData:
        """This split whose batches carry ``outputs[i]`` (a frozen network's output on example i)
        with each label: they yield ``(x, (y, outputs))``. Only un-augmented batches can: an
        output belongs to the image as stored, not to a crop of it."""
        if len(outputs) != len(self):
            raise ValueError(f"{len(outputs)} outputs for a split of {len(self)} examples")
        data = copy.copy(self)
        data.outputs = outputs.to(self.x.device)
        return data

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        augment: str | Augment = "none",
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch; shuffled (and augmented) when a generator is given, in order otherwise.

        ``shard=(rank, world)``: of each global batch this process takes positions ``rank::world``,
        so ``world`` processes together see the one-process batch. Every rank draws the same
        random numbers whatever its shard; a last batch smaller than ``world`` is left out so no
        rank gets an empty one.
        """
        rank, world = shard
        augment = Augment.of(augment)
        if self.outputs is not None and augment.name != "none" and generator is not None:
            raise ValueError(f"a split with outputs attached has batches without augmentation, not {augment.name!r}")
        n = len(self)
        order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
        order = order.to(self.x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            crops = None
            if augment.name != "none" and generator is not None:
                crops = augmentation(len(idx), augment, generator)
            if len(idx) < world:
                continue
            idx = idx[rank::world]
            x, y = self.x[idx], self.y[idx]
            if crops is not None:
                crops = tuple(c[rank::world] for c in crops)
                x = apply_augmentation(x, crops, augment=augment)
                if y.dim() == 3:  # a label map moves with its image; what the crop brings in is void
                    y = apply_augmentation(y[:, None], crops, fill=self.ignore_index, augment=augment)[:, 0]
            yield x, (y if self.outputs is None else (y, self.outputs[idx]))

    def take(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples at ``indices`` of the split, in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x.device)
        return self.x[idx], self.y[idx]


def augment_batch(x: torch.Tensor, augment: str | Augment, generator: torch.Generator) -> torch.Tensor:
    """A whole batch augmented at once (one gather or one resampling, no per-image Python work)."""
    augment = Augment.of(augment)
    return apply_augmentation(x, augmentation(len(x), augment, generator), augment=augment)


_PAD = 4


def augmentation(n: int, augment: str | Augment, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The random draws of ``n`` images' augmentation, one tensor of ``n`` per quantity (so a shard
    of the batch takes its rows), drawn from the CPU generator so the stream is identical on every
    device and every rank: ``crop_flip``: row and column offsets, flips; ``scale_crop_flip``:
    scales, the window's position as fractions of the free room, flips."""
    augment = Augment.of(augment)
    if augment.name == "scale_crop_flip":
        low, high = augment.scale
        scale = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        where = torch.rand(2, n, generator=generator, dtype=torch.float64)
        flip = torch.rand(n, generator=generator) < 0.5
        return scale, where[0], where[1], flip
    if augment.name != "crop_flip":
        raise ValueError(f"no random draws for augmentation {augment.name!r}")
    dy = torch.randint(0, 2 * _PAD + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * _PAD + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def apply_augmentation(
    x: torch.Tensor, draws: tuple[torch.Tensor, ...], fill: float | int = 0, augment: str | Augment = "crop_flip"
) -> torch.Tensor:
    """Augment each image of ``x`` as drawn; what a window reaches past the image is ``fill``.
    Integer tensors (label maps) are resampled by nearest neighbour, so no label is invented."""
    augment = Augment.of(augment)
    if augment.name == "scale_crop_flip":
        return _scale_crop_flip(x, draws, augment.crop, fill)
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


def _scale_crop_flip(x: torch.Tensor, draws: tuple[torch.Tensor, ...], crop: tuple[int, int], fill: float | int) -> torch.Tensor:
    """One affine resampling per image: the window of the image scaled by ``s`` that lands in a
    ``crop``-sized output is a (crop / s)-sized region of the original, placed at the drawn fraction
    of the room left around it (negative room: the region is larger than the image and overhangs)."""
    scale, fy, fx, flip = draws
    n, _, h, w = x.shape
    ch, cw = crop
    rh, rw = ch / scale, cw / scale  # the region's size in original pixels
    top, left = fy * (h - rh), fx * (w - rw)
    # affine_grid's coordinates run from -1 to 1 across the image's outer pixel edges
    # (align_corners=False): the output's edges map to the region's edges, mirrored when flipped.
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) * rw / w
    theta[:, 0, 2] = (2 * left + rw) / w - 1
    theta[:, 1, 1] = rh / h
    theta[:, 1, 2] = (2 * top + rh) / h - 1
    grid = F.affine_grid(theta.to(device=x.device, dtype=torch.float32), [n, x.shape[1], ch, cw], align_corners=False)
    if x.is_floating_point():
        if fill != 0:
            raise ValueError("scale_crop_flip pads images with 0 (the mean, once normalised), not a fill value")
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Labels shifted by one so that zero marks "outside the image", then resampled by nearest neighbour.
    shifted = F.grid_sample((x + 1).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).round().long()
    return torch.where(shifted == 0, torch.as_tensor(fill, dtype=x.dtype, device=x.device), shifted - 1).to(x.dtype)


def split_data(splits: dict, split: str, device: torch.device | str):
    """One split ready for the training loop: device-resident, or streamed from disk for a
    source too large for memory (``imagefolder``). Both have ``len``, ``batches`` and ``take``."""
    if splits.get("source") == STREAMED_SOURCE:
        from .folders import FolderData

        return FolderData(splits, split, device)
    return DeviceData(splits, split, device)
