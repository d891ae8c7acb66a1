"""Kedro dataset classes of this project."""

from .torch_checkpoint import TorchCheckpointDataset

__all__ = ["TorchCheckpointDataset"]
