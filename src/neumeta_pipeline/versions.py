"""The versions a task's runs leave on disk, and keeping only the newest of them.

Every catalog entry is versioned: each run adds ``data/<layer>/<task>/<name>/<timestamp>/<name>``
and nothing is ever removed by a run. ``prune`` keeps the newest ``keep`` versions of each dataset
of a task and removes the rest (it only lists them unless told to apply).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

# Kedro's version names: UTC timestamps that sort in time order, e.g. 2026-11-22T03.12.16.123Z.
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}\.\d{3}Z$")


def versioned_datasets(data: Path, task: str) -> dict[Path, list[Path]]:
    """Each versioned dataset of ``task`` under ``data`` with its version folders, newest first."""
    found = {}
    for folder in sorted(p / task for p in data.iterdir() if (p / task).is_dir()):
        for dataset in sorted(p for p in folder.iterdir() if p.is_dir()):
            versions = [v for v in dataset.iterdir() if v.is_dir() and _VERSION.match(v.name) and (v / dataset.name).exists()]
            if versions:
                found[dataset] = sorted(versions, key=lambda v: v.name, reverse=True)
    return found


def tasks_on_disk(data: Path) -> list[str]:
    return sorted({p.name for layer in data.iterdir() if layer.is_dir() for p in layer.iterdir() if p.is_dir()})


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass
class PruneReport:
    kept: dict[Path, list[Path]] = field(default_factory=dict)
    removed: dict[Path, list[Path]] = field(default_factory=dict)
    freed_bytes: int = 0
    interrupted: list[Path] = field(default_factory=list)  # resume files of interrupted runs, never touched


def prune(data: Path, task: str, keep: int, apply: bool = False) -> PruneReport:
    """Keep the newest ``keep`` versions of every dataset of ``task``; remove the older ones when
    ``apply`` is true (otherwise only report them)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest version of each dataset), got {keep}")
    report = PruneReport()
    for dataset, versions in versioned_datasets(data, task).items():
        report.kept[dataset], old = versions[:keep], versions[keep:]
        if old:
            report.removed[dataset] = old
            report.freed_bytes += sum(_size(v) for v in old)
            if apply:
                for version in old:
                    shutil.rmtree(version)
    report.interrupted = sorted(data.glob(f"*/{task}/resume/*.pt"))
    return report
