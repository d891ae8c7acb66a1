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
