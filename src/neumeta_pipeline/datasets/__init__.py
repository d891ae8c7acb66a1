"""Kedro dataset classes of this project."""

from .files import BytesDataset, TorchCheckpointDataset

__all__ = ["BytesDataset", "TorchCheckpointDataset"]
