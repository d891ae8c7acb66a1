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
