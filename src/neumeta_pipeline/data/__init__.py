"""Data sources, device-resident batching and streamed image folders."""

from .batches import DEVICE_AUGMENTATIONS, Augment, DeviceData, augment_batch, split_data
from .folders import IMAGE_EXTENSIONS, FolderData, check_image_folder, folder_splits
from .sources import (
    SEGMENTATION_SOURCES,
    SOURCES,
    STREAMED_SOURCE,
    DataNotFoundError,
    check_available,
    load_source,
    make_splits,
    pad_label_maps,
    read_cifar_batch,
)

__all__ = [
    "SEGMENTATION_SOURCES", "SOURCES", "STREAMED_SOURCE", "DataNotFoundError", "DeviceData", "FolderData", "IMAGE_EXTENSIONS",
    "DEVICE_AUGMENTATIONS", "Augment", "augment_batch", "check_available", "check_image_folder", "folder_splits", "load_source", "make_splits", "pad_label_maps",
    "read_cifar_batch", "split_data",
]
