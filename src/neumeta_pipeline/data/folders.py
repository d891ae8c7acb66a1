"""Streaming ImageFolder data (ImageNet layout): images stay on disk and are decoded by DataLoader
workers each epoch, since ImageNet is far too large to keep on the device like ``DeviceData``.

Only file lists and labels live in the splits dict, so it saves and loads with ``weights_only``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import UserError
from .sources import DataNotFoundError, _stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
AUGMENTATIONS = ("none", "resized_crop_flip")
_STAT_IMAGES = 500  # enough images for stable channel statistics, few enough to read quickly


def _missing(root: Path, problem: str) -> str:
    return (
        f"image folder {root} is not usable ({problem}): expected the ImageNet layout "
        f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG, one folder per class, with "
        f"ImageNet's validation images sorted into the same class folders. Fill it by extracting "
        f"ILSVRC2012_img_train.tar (and each class tar inside it) into {root}/train/ and "
        f"ILSVRC2012_img_val.tar into {root}/val/, then moving every validation image into its "
        f"class folder with the devkit's ground truth (e.g. the common valprep.sh script)."
    )


def _images_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _scan(root: Path) -> tuple[list[str], dict[str, tuple[list[str], np.ndarray]]]:
    """Classes (sorted train/ folder names) and, per split folder, relative file paths and labels."""
    found = {}
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise DataNotFoundError(_missing(root, f"{root / part} does not exist"))
        classes = sorted(p.name for p in (root / part).iterdir() if p.is_dir())
        found[part] = {name: _images_in(root / part / name) for name in classes}
        if not any(found[part].values()):
            raise DataNotFoundError(_missing(root, f"{root / part} holds no class folder with images"))
    classes = sorted(found["train"])
    extra = sorted(set(found["val"]) - set(classes))
    if extra:
        raise UserError(f"{root}/val has class folders that {root}/train lacks: {', '.join(extra)}")
    label_of = {name: i for i, name in enumerate(classes)}
    lists = {}
    for part, per_class in found.items():
        files = [f"{part}/{name}/{file}" for name in sorted(per_class) for file in per_class[name]]
        labels = [label_of[name] for name in sorted(per_class) for _ in per_class[name]]
        lists[part] = (files, np.asarray(labels, dtype=np.int64))
    return classes, lists


def check_image_folder(root: str | Path) -> None:
    """Fail now, with what to do, unless ``root`` holds ``train/<class>/`` and ``val/<class>/`` images."""
    _scan(Path(root))


def folder_splits(
    root: str | Path,
    val_fraction: float,
    seed: int,
    max_train: int | None = None,
    image_size: int = 224,
    resize_size: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    workers: int = 4,
) -> dict:
    """File lists and labels of train/val/test, with validation carved out of ``train/`` exactly as
    ``make_splits`` does and ``val/`` as the test split. Channel statistics not given are estimated
    from the first training images under the evaluation transform."""
    root = Path(root)
    classes, lists = _scan(root)
    files, labels = lists["train"]
    rng = np.random.default_rng(seed)
    train, val = _stratified_split(labels, val_fraction, rng)
    if max_train is not None:
        train = np.sort(rng.permutation(train)[:max_train])
    splits = {
        "source": "imagefolder",
        "root": str(root),
        "classes": classes,
        "files_train": [files[i] for i in train],
        "y_train": torch.from_numpy(labels[train]),
        "files_val": [files[i] for i in val],
        "y_val": torch.from_numpy(labels[val]),
        "files_test": lists["val"][0],
        "y_test": torch.from_numpy(lists["val"][1]),
        "num_classes": len(classes),
        "image_size": image_size,
        "resize_size": resize_size,
        "workers": workers,
    }
    if mean is None or std is None:
        estimated_mean, estimated_std = _channel_stats(splits)
        mean = estimated_mean if mean is None else mean
        std = estimated_std if std is None else std
    splits["mean"] = [float(v) for v in mean]
    splits["std"] = [float(v) for v in std]
    return splits


def _channel_stats(splits: dict) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (unbiased, clamped like ``make_splits``) on the [0, 1] scale,
    accumulated in float64 so 500 full-size images never sit in memory at once."""
    images = _Images(splits, "train")
    count = min(_STAT_IMAGES, len(images.files))
    batches = [[(i, None) for i in range(start, min(start + 50, count))] for start in range(0, count, 50)]
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for x, _ in _loader(images, batches, splits["workers"], pin=False):
        x = x.double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        pixels += x.numel() // 3
    mean = total / pixels
    var = (squares - pixels * mean * mean) / max(pixels - 1, 1)
    return mean.tolist(), var.clamp_min(0).sqrt().clamp_min(1e-3).tolist()


class _Images(Dataset):
    """Decodes one split's files; an item is ``(index, seed)``: seed None is the evaluation
    transform, an int the training augmentation drawn from that seed alone."""

    def __init__(self, splits: dict, split: str) -> None:
        self.root = Path(splits["root"])
        self.files = splits[f"files_{split}"]
        self.labels = splits[f"y_{split}"].tolist()
        # Imported here: torchvision takes about a second to import, which every process that
        # imports the data package (each worker of a distributed run) would otherwise pay.
        from torchvision.transforms import v2

        size = splits["image_size"]
        self.evaluate = v2.Compose([v2.Resize(splits["resize_size"], antialias=True), v2.CenterCrop(size)])
        self.augment = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(0.5)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        index, seed = item
        # torchvision's ImageFolder loader (PIL, RGB); its own decoders are deprecated for torchcodec.
        from torchvision.datasets.folder import pil_loader
        from torchvision.transforms.v2.functional import pil_to_tensor

        image = pil_loader(str(self.root / self.files[index]))
        if seed is None:
            return pil_to_tensor(self.evaluate(image)), self.labels[index]
        # Seed only the CPU generator (torch.manual_seed would also reseed CUDA, which fork_rng
        # with devices=[] does not restore); the caller's CPU stream is restored on exit.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return pil_to_tensor(self.augment(image)), self.labels[index]


def _loader(images: _Images, batches: list[list[tuple[int, int | None]]], workers: int, pin: bool) -> DataLoader:
    # A private generator: the loader draws its workers' base seed at every epoch, which would
    # otherwise advance the caller's global random stream (items are seeded on their own anyway).
    return DataLoader(images, batch_sampler=batches, num_workers=workers, pin_memory=pin, generator=torch.Generator())


class FolderData:
    """One split streamed from disk: uint8 batches decoded by workers, moved to ``device`` and
    normalised there with the splits' statistics. Same interface as ``DeviceData``."""

    def __init__(self, splits: dict, split: str, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.workers = splits["workers"]
        self.images = _Images(splits, split)
        self.y = splits[f"y_{split}"].to(self.device)
        self.mean = torch.tensor(splits["mean"], device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(splits["std"], device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        return x.sub_(self.mean).div_(self.std), y.to(self.device, non_blocking=True)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        augment: str = "none",
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch; shuffled (and augmented) when a generator is given, in order otherwise.
        With ``shard=(rank, world)`` this process gets positions ``rank::world`` of every global
        batch; the generator is consumed the same way on every rank. Image ``p`` of the epoch's
        order is augmented from seed ``base + p`` alone, so neither workers nor shards change it."""
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTATIONS)}")
        n = len(self)
        order = (torch.arange(n) if generator is None else torch.randperm(n, generator=generator)).tolist()
        base = None
        if augment != "none" and generator is not None:
            base = int(torch.randint(2**62, (), generator=generator))
        rank, world = shard
        # A last batch smaller than ``world`` is left out (as DeviceData does) so no rank gets an empty one.
        batches = [
            [(order[p], None if base is None else base + p) for p in range(start, min(start + batch_size, n))[rank::world]]
            for start in range(0, n, batch_size)
            if min(batch_size, n - start) >= world
        ]
        for x, y in _loader(self.images, batches, self.workers, pin=self.device.type == "cuda"):
            yield self._to_device(x, y)

    def take(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation-transformed images at ``indices`` of the split, and their labels."""
        return self._to_device(*default_collate([self.images[(int(i), None)] for i in indices]))
