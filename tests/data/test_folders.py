import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from neumeta_pipeline.data import DataNotFoundError, DeviceData, FolderData, check_image_folder, folder_splits, make_splits
from neumeta_pipeline.data import folders
from tests.conftest import write_image_folder

AUG = "resized_crop_flip"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imagenet"))  # 3 classes x (6 train, 2 val)


def _splits(root, **kwargs):
    return folder_splits(root, val_fraction=1 / 3, seed=0, image_size=32, resize_size=36, **{"workers": 0, **kwargs})


def _label(file: str) -> int:
    return int(file.split("/")[1][1:])


def _eval_images(root, files) -> torch.Tensor:
    """The evaluation transform written out independently: shorter side to 36, centre 32x32."""
    transform = v2.Compose([v2.Resize(36, antialias=True), v2.CenterCrop(32)])
    return torch.stack([v2.functional.pil_to_tensor(transform(Image.open(root / f).convert("RGB"))) for f in files])


def _epoch(data, seed, augment=AUG, batch_size=4, shard=(0, 1)):
    return list(data.batches(batch_size, torch.Generator().manual_seed(seed), augment, shard))


def test_lists_classes_relative_files_and_a_stratified_validation_split(root):
    s = _splits(root)
    assert s["classes"] == ["n00000000", "n00000001", "n00000002"] and s["num_classes"] == 3
    assert (len(s["files_train"]), len(s["files_val"]), len(s["files_test"])) == (12, 6, 6)
    assert sorted(s["files_train"] + s["files_val"]) == sorted(f"train/n{c:08d}/img_{i}.JPEG" for c in range(3) for i in range(6))
    assert all(f.startswith("val/") for f in s["files_test"])
    for split in ("train", "val", "test"):
        assert s[f"y_{split}"].dtype == torch.int64
        assert s[f"y_{split}"].tolist() == [_label(f) for f in s[f"files_{split}"]]
    assert sorted(s["y_val"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert (s["source"], s["root"], s["image_size"], s["resize_size"], s["workers"]) == ("imagefolder", str(root), 32, 36, 0)


def test_split_draws_are_those_of_make_splits(root):
    s = _splits(root, max_train=5)
    files = [f"train/n{c:08d}/img_{i}.JPEG" for c in range(3) for i in range(6)]
    # make_splits on "images" that are their own index shows which indices it keeps.
    arrays = {"x_train": np.arange(18, dtype=np.uint8).reshape(18, 1, 1, 1), "y_train": np.repeat(np.arange(3), 6),
              "x_test": np.zeros((1, 1, 1, 1), np.uint8), "y_test": np.zeros(1, np.int64)}
    reference = make_splits(arrays, 1 / 3, 0.0, seed=0, max_train=5)
    assert s["files_train"] == [files[i] for i in reference["x_train"].flatten().tolist()]
    assert s["files_val"] == [files[i] for i in reference["x_val"].flatten().tolist()]


@pytest.mark.parametrize("layout", ["nothing", "train_only", "empty_val_class"])
def test_missing_images_name_the_folder_and_the_layout(tmp_path, layout):
    if layout != "nothing":
        write_image_folder(tmp_path, classes=2, per_class_train=1, per_class_val=0)
        if layout == "train_only":
            (tmp_path / "val" / "n00000000").rmdir()
            (tmp_path / "val" / "n00000001").rmdir()
            (tmp_path / "val").rmdir()
    with pytest.raises(DataNotFoundError, match=r"train/<wnid>/\*\.JPEG.*val/<wnid>/\*\.JPEG.*sorted into") as info:
        check_image_folder(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_validation_class_that_train_lacks_is_an_error(tmp_path):
    root = write_image_folder(tmp_path, classes=2, per_class_train=1, per_class_val=1)
    (root / "val" / "n00000001").rename(root / "val" / "n09999999")
    with pytest.raises(ValueError, match="n09999999"):
        folder_splits(root, 0.0, seed=0, mean=[0.0] * 3, std=[1.0] * 3)


def test_an_epoch_covers_every_image_once_with_its_folder_label(root):
    s = _splits(root)
    data = FolderData(s, "train", "cpu")
    batches = _epoch(data, seed=3, augment="none", batch_size=5)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3)).tolist()
    assert [len(y) for _, y in batches] == [5, 5, 2]
    assert torch.cat([y for _, y in batches]).tolist() == [_label(s["files_train"][i]) for i in order]
    assert torch.equal(torch.cat([x for x, _ in batches]), data.take(order)[0])
    in_order = torch.cat([y for _, y in data.batches(5)])
    assert in_order.tolist() == [_label(f) for f in s["files_train"]]


@pytest.mark.parametrize("world", [2, 3])
def test_shards_together_are_the_one_process_batch(root, world):
    data = FolderData(_splits(root), "train", "cpu")

    def epoch(shard):
        generator = torch.Generator().manual_seed(7)
        return list(data.batches(5, generator, AUG, shard)), generator.get_state()

    full, state = epoch((0, 1))
    kept = [b for b in full if len(b[1]) >= world]  # a last batch of 2 cannot feed 3 ranks
    for rank in range(world):
        batches, rank_state = epoch((rank, world))
        assert torch.equal(rank_state, state)
        assert len(batches) == len(kept)
        for (x, y), (full_x, full_y) in zip(batches, kept):
            assert torch.equal(x, full_x[rank::world]) and torch.equal(y, full_y[rank::world])


def test_augmentation_does_not_depend_on_the_number_of_workers_or_the_batch_size(root):
    s = _splits(root)
    serial, parallel = (_epoch(FolderData({**s, "workers": w}, "train", "cpu"), seed=1) for w in (0, 2))
    assert len(serial) == len(parallel) == 3
    for (x0, y0), (x2, y2) in zip(serial, parallel):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    other_size = _epoch(FolderData(s, "train", "cpu"), seed=1, batch_size=5)
    assert torch.equal(torch.cat([x for x, _ in serial]), torch.cat([x for x, _ in other_size]))


def test_the_seed_decides_the_augmented_epoch(root):
    data = FolderData(_splits(root), "train", "cpu")
    rng_state = torch.get_rng_state()
    first = torch.cat([x for x, _ in _epoch(data, seed=0)])
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's random stream is left alone
    assert torch.equal(first, torch.cat([x for x, _ in _epoch(data, seed=0)]))
    assert not torch.equal(first, torch.cat([x for x, _ in _epoch(data, seed=1)]))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()
    assert not torch.equal(first, data.take(order)[0])  # augmented, not the evaluation view
    unshuffled = torch.cat([x for x, _ in data.batches(4, None, AUG)])
    assert torch.equal(unshuffled, data.take(range(12))[0])  # no generator: no augmentation


def test_evaluation_batches_are_centre_crops_normalised_with_the_statistics(root):
    s = _splits(root, mean=[0.0] * 3, std=[1.0] * 3)
    x, y = next(FolderData(s, "test", "cpu").batches(6))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.allclose(x, _eval_images(root, s["files_test"]).float() / 255, atol=1e-6)
    shifted, _ = next(FolderData({**s, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}, "test", "cpu").batches(6))
    expected = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(shifted, expected, atol=1e-5)


def test_estimated_statistics_are_those_of_the_first_evaluation_images(root, monkeypatch):
    monkeypatch.setattr(folders, "_STAT_IMAGES", 5)
    s = _splits(root)
    images = _eval_images(root, s["files_train"][:5]).double() / 255
    assert s["mean"] == pytest.approx(images.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert s["std"] == pytest.approx(images.std(dim=(0, 2, 3)).tolist(), abs=1e-6)


def test_take_returns_the_evaluation_images_of_those_indices(root):
    s = _splits(root)
    x, y = FolderData(s, "train", "cpu").take(torch.tensor([5, 0, 3]))
    mean, std = (torch.tensor(s[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = (_eval_images(root, [s["files_train"][i] for i in (5, 0, 3)]).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5)
    assert y.tolist() == [s["y_train"][i].item() for i in (5, 0, 3)]
    resident = DeviceData({"x_train": torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1), "y_train": torch.arange(5),
                           "mean": [0.0], "std": [1.0]}, "train", "cpu")
    rx, ry = resident.take([4, 1])
    assert ry.tolist() == [4, 1] and torch.allclose(rx.flatten(), torch.tensor([4, 1]) / 255)


def test_an_unknown_augmentation_names_the_valid_ones(root):
    data = FolderData(_splits(root, mean=[0.0] * 3, std=[1.0] * 3), "train", "cpu")
    with pytest.raises(ValueError, match="none, resized_crop_flip"):
        next(data.batches(4, torch.Generator(), "crop_flip"))


def test_splits_survive_a_weights_only_round_trip(root, tmp_path):
    s = _splits(root)
    torch.save(s, tmp_path / "splits.pt")
    loaded = torch.load(tmp_path / "splits.pt", weights_only=True)
    assert loaded.keys() == s.keys()
    for key, value in s.items():
        assert torch.equal(loaded[key], value) if isinstance(value, torch.Tensor) else loaded[key] == value
