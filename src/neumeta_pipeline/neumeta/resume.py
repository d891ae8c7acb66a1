"""Resume files that belong to exactly one run configuration.

An interrupted training stage continues from its last finished epoch only when everything that
determines its result is the same: the seed, every setting of the stage, the device, and the
content of its inputs (the model it starts from, the data split). That description is the run's
``config``; its hash names the file, so configurations never share one and two configurations can
both have an interrupted run waiting. A run holds an exclusive lock on its file for as long as it
trains, so a second run of the same configuration at the same time stops with a clear message
instead of taking over the first one's state.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError

log = logging.getLogger(__name__)


class RunConflictError(UserError):
    """Another process is training the same configuration right now."""


class ResumeFileError(UserError):
    """A resume file exists but cannot be used."""


def content_hash(obj: Any) -> str:
    """SHA-256 of nested dicts, lists, tensors, arrays and scalars: equal content, equal hash.

    Tensors hash their dtype, shape and raw bytes, so a model or data split is identified by what it
    holds, not by where or when it was saved.
    """
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        digest.update(f"array{obj.dtype}{obj.shape}".encode())
        digest.update(np.ascontiguousarray(obj).data)
    elif isinstance(obj, dict):
        digest.update(b"{")
        for key in sorted(obj, key=str):
            digest.update(repr(key).encode())
            _feed(digest, obj[key])
        digest.update(b"}")
    elif isinstance(obj, (list, tuple)):
        digest.update(b"[")
        for item in obj:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(obj).encode())


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable ``key: old -> new`` lines between two run configurations."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class ResumeFile:
    """The saved state of one run configuration of one stage, locked while a run uses it.

    Use as a context manager around the whole stage; ``load`` gives the saved state (or ``None``),
    ``save`` writes a new one atomically, ``finish`` removes it once the stage has completed.
    ``extra`` is saved with every state: what a stage did before its loop (a warm start) and must
    report again when it resumes.
    """

    def __init__(self, folder: str | Path, stage: str, config: dict) -> None:
        self.stage, self.config = stage, json.loads(json.dumps(config, default=str))
        self.key = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(folder)
        self.path = self.folder / f"{stage}-{self.key}.pt"
        self.extra: dict = {}
        self._lock = None
        self._state: dict | None = None
        self._loaded = False

    # -- locking ---------------------------------------------------------------------------

    def __enter__(self) -> ResumeFile:
        self.folder.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(".lock")
        while True:
            handle = open(lock_path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise RunConflictError(
                    f"another run with the same configuration is training {self.stage} right now "
                    f"(process {holder}, lock {lock_path}); wait for it to finish, or change a parameter "
                    f"(e.g. the seed) to train a different configuration alongside it"
                ) from None
            # The holder before us may have removed the file after we opened it: lock the file
            # that is at the path now, or two runs could each hold a lock on a different inode.
            try:
                if os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle
        self.path.with_suffix(".json").write_text(json.dumps(self.config, indent=1, sort_keys=True))
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            if not self.path.exists():  # finished (or never saved): nothing for a later run to find
                self.path.with_suffix(".json").unlink(missing_ok=True)
                self.path.with_suffix(".lock").unlink(missing_ok=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- state -----------------------------------------------------------------------------

    def load(self) -> dict | None:
        """The saved state of this configuration, or ``None`` to start afresh (read once)."""
        if self._loaded:
            return self._state
        self._loaded = True
        if not self.path.exists():
            self._log_other_configurations()
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, foreign or not weights-only: never guess
            raise ResumeFileError(
                f"cannot read the resume file {self.path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                f"remove it to train {self.stage} afresh: rm {self.path}"
            ) from None
        if not isinstance(state, dict) or state.get("key") != self.key:
            raise ResumeFileError(
                f"{self.path} is not this configuration's resume file; remove it to train {self.stage} afresh: rm {self.path}"
            )
        self._state = state
        self.extra = state.get("extra", {})
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` (plus the key and ``extra``) so an interruption never leaves a torn file."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        torch.save({**state, "key": self.key, "config": self.config, "extra": self.extra}, tmp)
        tmp.replace(self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)

    def _log_other_configurations(self) -> None:
        # Say why an interrupted run is not continued: it was another configuration.
        for info in sorted(self.folder.glob(f"{self.stage}-*.json")):
            if info.stem == self.path.stem or not info.with_suffix(".pt").exists():
                continue
            try:
                changed = differences(json.loads(info.read_text()), self.config)
            except (OSError, ValueError):
                changed = ["(unreadable description)"]
            log.info(
                "%s starts afresh: the interrupted run in %s has another configuration (%s); it is kept for that one",
                self.stage, info.with_suffix(".pt"), "; ".join(changed[:6]) + (" ..." if len(changed) > 6 else ""),
            )
