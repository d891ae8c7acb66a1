"""Shared fixtures: tiny datasets written in their real on-disk formats, so the real loaders run."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

# pytest-xdist runs one worker per core (pyproject's addopts): each worker's torch then gets its
# share of the cores, so workers do not oversubscribe them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        stream.write(struct.pack(f">{array.ndim}I", *array.shape))
        stream.write(array.astype(np.uint8).tobytes())


def _digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose class is readable (a bright bar per class) so tiny runs can learn."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return images


def write_mnist(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", _digit_images(labels, rng))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return root


def _cifar_images(labels: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 60, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, label % 3, (label * 32) // classes : (label * 32) // classes + 3] = 255
    return images.reshape(len(labels), -1)


def write_cifar(root: Path, classes: int = 10, per_batch: int = 40, seed: int = 0) -> Path:
    """CIFAR's python-version layout: pickled dicts with 'data' (N, 3072) uint8 and labels."""
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder, files, key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], "fine_labels"
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        n = per_batch * (5 if classes == 100 and name == "train" else 1)
        labels = (np.arange(n) % classes).tolist()
        entry = {"batch_label": name, key: labels, "data": _cifar_images(np.array(labels), classes, rng)}
        with open(folder / name, "wb") as stream:
            pickle.dump(entry, stream, protocol=2)
    return root


def write_npz(path: Path, n_train: int = 200, n_test: int = 100, classes: int = 10, seed: int = 0) -> Path:
    """An arrays file like a partial CIFAR-10 export: uint8 NCHW images and integer labels."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % classes
        arrays[f"x_{split}"] = _cifar_images(labels, classes, rng).reshape(n, 3, 32, 32)
        arrays[f"y_{split}"] = labels.astype(np.int64)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "raw")


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "raw", classes=10)


@pytest.fixture(autouse=True)
def no_tracked_run_left_open():
    """Every Kedro run in a test must close its MLflow run: one left open would be reused by the
    next run in the process, which would then log into it (and fail on a changed parameter)."""
    yield
    import mlflow

    run = mlflow.active_run()
    if run is not None:
        mlflow.end_run()
        pytest.fail(f"an MLflow run was left open: {run.info.run_name} ({run.info.run_id})")


def write_image_folder(
    root: Path,
    classes: int = 3,
    per_class_train: int = 6,
    per_class_val: int = 2,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> Path:
    """ImageNet's layout (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``) of real JPEGs: noise with
    a bright bar in a class-dependent row band, sizes alternating (h, w) and (w, h) so resizing runs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class_train), ("val", per_class_val)):
        for label in range(classes):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = size if i % 2 == 0 else size[::-1]
                image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
                band = (label * h) // classes
                image[band : band + max(2, h // (2 * classes))] = 255
                Image.fromarray(image).save(folder / f"img_{i}.JPEG", format="JPEG")
    return root


def write_camvid(root: Path, counts: tuple[int, int, int] = (6, 2, 3), size: tuple[int, int] = (24, 32), seed: int = 0) -> Path:
    """CamVid in the SegNet tutorial's layout under ``root/CamVid``: RGB PNGs in train/val/test and
    one-channel label PNGs of the same names in trainannot/valannot/testannot. Each label map has
    horizontal bands of a few classes, a void (11) strip, and the image is brighter where the class
    index is higher, so a tiny network can learn something."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    for split, count in zip(("train", "val", "test"), counts):
        for folder in (split, f"{split}annot"):
            (root / "CamVid" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            label = np.zeros((h, w), dtype=np.uint8)
            for band, cls in enumerate(rng.choice(11, size=4, replace=False)):
                label[band * h // 4 : (band + 1) * h // 4] = cls
            label[:, :2] = 11  # void
            image = (label[..., None] * 20 + rng.integers(0, 30, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "CamVid" / split / f"img_{i:03d}.png")
            Image.fromarray(label).save(root / "CamVid" / f"{split}annot" / f"img_{i:03d}.png")
    return root


def _voc_palette() -> list[int]:
    """VOC's colour map (class c's colour from the bits of c), 256 RGB entries, as its PNGs carry."""
    palette = []
    for c in range(256):
        r = g = b = 0
        for shift in range(8):
            r |= ((c >> (3 * shift)) & 1) << (7 - shift)
            g |= ((c >> (3 * shift + 1)) & 1) << (7 - shift)
            b |= ((c >> (3 * shift + 2)) & 1) << (7 - shift)
        palette += [r, g, b]
    return palette


VOC_SIZES = ((20, 28), (28, 20), (24, 24), (16, 30))  # (height, width), cycled: VOC's images differ in size


def write_voc(root: Path, counts: tuple[int, int] = (8, 3), sizes: tuple = VOC_SIZES, seed: int = 0) -> Path:
    """PASCAL VOC 2012's layout under ``root/VOCdevkit/VOC2012``: JPEGs in JPEGImages, palette label
    PNGs in SegmentationClass, and the id lists ImageSets/Segmentation/train.txt and val.txt. Image
    i has size ``sizes[i % len(sizes)]``; its label map is background with one object rectangle
    (class 1-20) ringed by a void (255) boundary, as VOC draws them, and the image is brighter where
    the class index is higher, so a tiny network can learn something."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "VOCdevkit" / "VOC2012"
    lists = folder / "ImageSets" / "Segmentation"
    for path in (folder / "JPEGImages", folder / "SegmentationClass", lists):
        path.mkdir(parents=True, exist_ok=True)
    index = 0
    for image_set, count in zip(("train", "val"), counts):
        ids = []
        for _ in range(count):
            name, (h, w) = f"2007_{index:06d}", sizes[index % len(sizes)]
            label = np.zeros((h, w), dtype=np.uint8)
            top, left = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2))
            label[top - 1 : h - 1, left - 1 : w - 1] = 255  # the boundary ring, then the object inside it
            label[top : h - 2, left : w - 2] = 1 + index % 20
            image = (label[..., None] % 255 * 10 + rng.integers(0, 30, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / "JPEGImages" / f"{name}.jpg", format="JPEG")
            png = Image.fromarray(label)
            png.putpalette(_voc_palette())  # a palette ("P") image, whose pixel values are the class indices
            png.save(folder / "SegmentationClass" / f"{name}.png")
            ids.append(name)
            index += 1
        (lists / f"{image_set}.txt").write_text("".join(f"{name}\n" for name in ids))
    return root


CELEBA_SIZE = (218, 178)  # (height, width) of CelebA's aligned faces


def write_celeba(root: Path, counts: tuple[int, int, int] = (8, 2, 2), size: tuple[int, int] = (24, 20), seed: int = 0) -> Path:
    """CelebA in torchvision's layout under ``root/celeba``: JPEGs in img_align_celeba/ named as
    CelebA's (000001.jpg, ...) and list_eval_partition.txt assigning ``counts`` of them to train (0),
    valid (1) and test (2), in interleaved order as a real list would not be, so the split must come
    from the file and not from the order. Images are ``size`` (height, width), small to stay fast,
    except the first, which is CelebA's real 178x218 so the 148x148 centre crop runs; each is noise
    with a bright centred square whose size varies, so a tiny VAE has something to reconstruct."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    codes = [code for code, count in enumerate(counts) for _ in range(count)]
    codes = [codes[i] for i in rng.permutation(len(codes))]
    lines = []
    for index, code in enumerate(codes):
        h, w = CELEBA_SIZE if index == 0 else size
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        half = int(rng.integers(2, min(h, w) // 2))
        image[h // 2 - half : h // 2 + half, w // 2 - half : w // 2 + half] = 220
        name = f"{index + 1:06d}.jpg"
        Image.fromarray(image).save(folder / "img_align_celeba" / name, format="JPEG")
        lines.append(f"{name} {code}\n")
    (folder / "list_eval_partition.txt").write_text("".join(lines))
    return root
