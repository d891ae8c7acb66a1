import pytest
import torch

from neumeta_pipeline.data import DeviceData, augment_batch


def _splits(n=10):
    return {"x_train": torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 2, 2), "y_train": torch.arange(n),
            "mean": [0.0], "std": [1.0]}


def test_an_epoch_visits_every_example_once():
    data = DeviceData(_splits(), "train", "cpu")
    ys = torch.cat([y for _, y in data.batches(3, torch.Generator().manual_seed(0))])
    assert sorted(ys.tolist()) == list(range(10))
    assert ys.tolist() != list(range(10))  # shuffled
    assert torch.cat([y for _, y in data.batches(3)]).tolist() == list(range(10))  # in order


def test_attached_outputs_travel_with_their_examples_in_every_order_and_shard():
    data = DeviceData(_splits(), "train", "cpu")
    outputs = torch.arange(10.0)[:, None] * torch.tensor([[1.0, -1.0]])  # example i's output is (i, -i)
    attached = data.with_outputs(outputs)
    assert data.outputs is None  # the split itself is unchanged
    for rank in (0, 1):
        for x, (y, out) in attached.batches(4, torch.Generator().manual_seed(1), shard=(rank, 2)):
            torch.testing.assert_close(out, outputs[y])
            torch.testing.assert_close(x, data.x[y])
    with pytest.raises(ValueError, match="without augmentation, not 'crop_flip'"):
        next(attached.batches(4, torch.Generator().manual_seed(1), "crop_flip"))
    with pytest.raises(ValueError, match="9 outputs for a split of 10 examples"):
        data.with_outputs(outputs[:9])


def test_crop_flip_is_a_translated_and_maybe_mirrored_window():
    x = torch.randn(64, 3, 8, 8)
    out = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(64):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert not torch.equal(out, x)


def test_a_label_map_is_cropped_and_flipped_with_its_image_and_padded_with_void():
    n, h, w = 16, 6, 7
    labels = torch.arange(h * w).view(1, h, w).repeat(n, 1, 1) % 11  # labels that tell pixels apart
    images = labels[:, None].to(torch.uint8).repeat(1, 3, 1, 1)       # each image shows its own labels
    splits = {"x_train": images, "y_train": labels, "mean": [0.0] * 3, "std": [1 / 255] * 3, "ignore_index": 11}
    x, y = next(DeviceData(splits, "train", "cpu").batches(n, torch.Generator().manual_seed(0), "crop_flip"))
    real = y != 11
    assert real.any() and (~real).any()  # some crops reach into the padding, which is void
    torch.testing.assert_close(x[:, 0][real], y[real].float())  # every labelled pixel still sits under its label
    assert not torch.equal(y, labels)


def _scale_crop(x, crop, scale, fy, fx, flip, fill=0):
    from neumeta_pipeline.data.batches import Augment, apply_augmentation

    n = len(x)
    draws = (torch.full((n,), scale, dtype=torch.float64), torch.full((n,), fy, dtype=torch.float64),
             torch.full((n,), fx, dtype=torch.float64), torch.full((n,), flip))
    return apply_augmentation(x, draws, fill=fill, augment=Augment("scale_crop_flip", crop, (scale, scale)))


def test_scale_crop_flip_at_scale_one_is_a_window_of_the_image_for_images_and_label_maps():
    labels = torch.arange(6 * 8).view(1, 6, 8) % 13
    images = labels[:, None].float().repeat(1, 2, 1, 1)
    # Offsets 2 of 6 - 4 = 2 free rows and 3 of 8 - 4 = 4 free columns: whole pixels.
    out = _scale_crop(images, (4, 4), 1.0, 1.0, 0.75, False)
    torch.testing.assert_close(out, images[:, :, 2:6, 3:7])
    assert torch.equal(_scale_crop(labels[:, None], (4, 4), 1.0, 1.0, 0.75, False, fill=99)[:, 0], labels[:, 2:6, 3:7])
    flipped = _scale_crop(images, (4, 4), 1.0, 1.0, 0.75, True)
    torch.testing.assert_close(flipped, images[:, :, 2:6, 3:7].flip(-1))


def test_scale_crop_flip_zooms_by_the_scale_and_pads_label_maps_with_void():
    ramp = torch.arange(16.0).view(1, 1, 1, 16).repeat(1, 1, 16, 1)  # each pixel holds its column
    out = _scale_crop(ramp, (8, 8), 2.0, 0.5, 0.5, False)
    steps = out[0, 0, 4, 1:-1].diff()
    torch.testing.assert_close(steps, torch.full_like(steps, 0.5))  # twice as many pixels per column
    labels = torch.randint(0, 5, (3, 1, 8, 8))
    shrunk = _scale_crop(labels, (8, 8), 0.5, 0.5, 0.5, False, fill=11)  # the image covers the middle half
    assert (shrunk[:, :, :2] == 11).all() and (shrunk[:, :, -2:] == 11).all()
    inside = shrunk[:, :, 2:6, 2:6]
    assert (inside != 11).all() and set(inside.unique().tolist()) <= set(labels.unique().tolist())


def test_scale_crop_flip_batches_are_crops_with_their_label_maps():
    n, h, w = 12, 16, 16
    labels = torch.randint(0, 4, (n, h, w))
    splits = {"x_train": labels[:, None].to(torch.uint8).repeat(1, 3, 1, 1), "y_train": labels, "mean": [0.0] * 3,
              "std": [1 / 255] * 3, "ignore_index": 11}
    from neumeta_pipeline.data.batches import Augment

    augment = Augment("scale_crop_flip", (8, 8), (0.5, 2.0))
    x, y = next(DeviceData(splits, "train", "cpu").batches(n, torch.Generator().manual_seed(0), augment))
    assert x.shape == (n, 3, 8, 8) and y.shape == (n, 8, 8)
    assert set(y.unique().tolist()) <= {0, 1, 2, 3, 11}
    again = next(DeviceData(splits, "train", "cpu").batches(n, torch.Generator().manual_seed(0), augment))
    assert torch.equal(again[1], y)  # the draws come from the generator alone
