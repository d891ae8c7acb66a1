import pickle

import pytest
import torch
from kedro.io.core import DatasetError, Version

from neumeta_pipeline.datasets import TorchCheckpointDataset


def test_versioned_round_trip_keeps_every_version(tmp_path):
    path = str(tmp_path / "model.pt")
    first = TorchCheckpointDataset(filepath=path, version=Version(None, "2026-01-01T00.00.00.000Z"))
    first.save({"state_dict": {"w": torch.ones(2)}, "arch": {"name": "lenet"}})
    second = TorchCheckpointDataset(filepath=path, version=Version(None, "2026-01-02T00.00.00.000Z"))
    second.save({"state_dict": {"w": torch.zeros(2)}, "arch": {"name": "lenet"}})
    latest = TorchCheckpointDataset(filepath=path, version=Version(None, None)).load()
    assert torch.equal(latest["state_dict"]["w"], torch.zeros(2))
    pinned = TorchCheckpointDataset(filepath=path, version=Version("2026-01-01T00.00.00.000Z", None)).load()
    assert torch.equal(pinned["state_dict"]["w"], torch.ones(2))


def test_a_file_holding_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"payload": Exploit()}, path, pickle_module=pickle)
    with pytest.raises(DatasetError, match="weights_only=True"):
        TorchCheckpointDataset(filepath=str(path)).load()


def test_bytes_round_trip_and_wrong_type(tmp_path):
    from neumeta_pipeline.datasets import BytesDataset

    dataset = BytesDataset(filepath=str(tmp_path / "model.onnx"), version=Version(None, None))
    dataset.save(b"\x08\x01onnx")
    assert BytesDataset(filepath=str(tmp_path / "model.onnx"), version=Version(None, None)).load() == b"\x08\x01onnx"
    with pytest.raises(DatasetError, match="saves bytes"):
        BytesDataset(filepath=str(tmp_path / "other.onnx")).save("text")
