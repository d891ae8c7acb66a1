"""Versioned Kedro datasets for torch checkpoints and raw bytes (ONNX files).

Checkpoints load with ``torch.load(..., weights_only=True)``: a checkpoint may only hold tensors,
numbers, strings, lists and dicts, so opening a file never runs code from it. Everything this
project stores (models, INR checkpoints, data splits) is written in that form.
"""

from __future__ import annotations

from abc import abstractmethod
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)


class _VersionedFile(AbstractVersionedDataset):
    """One file on any fsspec filesystem, versionable; subclasses say how to read and write it."""

    def __init__(
        self,
        *,
        filepath: str,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        fs_args = deepcopy(fs_args) or {}
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(deepcopy(credentials) or {}), **fs_args)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    @abstractmethod
    def _read(self, stream, path: str): ...

    @abstractmethod
    def _write(self, data, stream) -> None: ...

    def load(self):
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, "rb") as stream:
            return self._read(stream, path)

    def save(self, data) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        with self._fs.open(path, "wb") as stream:
            self._write(data, stream)
        self._invalidate_cache()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(path)

    def _release(self) -> None:
        super()._release()
        self._invalidate_cache()

    def _invalidate_cache(self) -> None:
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))


class TorchCheckpointDataset(_VersionedFile):
    """``torch.save`` / ``torch.load(weights_only=True)``."""

    def _read(self, stream, path: str) -> dict:
        try:
            return torch.load(stream, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file from elsewhere, or one holding arbitrary objects
            raise DatasetError(
                f"{path} is not a checkpoint that loads with weights_only=True "
                f"(only tensors, numbers, strings, lists and dicts are accepted): {exc}"
            ) from exc

    def _write(self, data: dict, stream) -> None:
        torch.save(data, stream)


class BytesDataset(_VersionedFile):
    """A file's bytes as they are (an exported ONNX model)."""

    def _read(self, stream, path: str) -> bytes:
        return stream.read()

    def _write(self, data: bytes, stream) -> None:
        if not isinstance(data, bytes):
            raise DatasetError(f"BytesDataset saves bytes, got {type(data).__name__}")
        stream.write(data)
