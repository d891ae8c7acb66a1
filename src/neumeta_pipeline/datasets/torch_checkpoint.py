"""A versioned Kedro dataset for torch checkpoints (dicts of tensors and plain values).

Loading uses ``torch.load(..., weights_only=True)``: a checkpoint may only hold tensors, numbers,
strings, lists and dicts, so opening a file never runs code from it. Everything this project
stores (models, INR checkpoints, data splits) is written in that form.
"""

from __future__ import annotations

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


class TorchCheckpointDataset(AbstractVersionedDataset[dict, dict]):
    """``torch.save`` / ``torch.load(weights_only=True)`` on any fsspec filesystem, versionable."""

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

    def load(self) -> dict:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, "rb") as stream:
            try:
                return torch.load(stream, map_location="cpu", weights_only=True)
            except Exception as exc:  # a file from elsewhere, or one holding arbitrary objects
                raise DatasetError(
                    f"{path} is not a checkpoint that loads with weights_only=True "
                    f"(only tensors, numbers, strings, lists and dicts are accepted): {exc}"
                ) from exc

    def save(self, data: dict) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        with self._fs.open(path, "wb") as stream:
            torch.save(data, stream)
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
