"""Data sources and device-resident batching."""

from .batches import DeviceData, augment_batch
from .sources import SOURCES, DataNotFoundError, check_available, load_source, make_splits, read_cifar_batch

__all__ = ["SOURCES", "DataNotFoundError", "check_available", "DeviceData", "augment_batch", "load_source", "make_splits", "read_cifar_batch"]
