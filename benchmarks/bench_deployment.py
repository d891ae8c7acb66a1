"""Validation and test scores of one trained INR's networks under several deployment settings.

Usage: python benchmarks/bench_deployment.py --task mnist [--version V] [--settings 1:0,50:1,50:1:1000]
           [--compressions 0,0.25,0.5,0.75] [--threads 2] [--data data]

A width is deployed as the average of K networks generated at noisy coordinates (``sample.samples``
and ``sample.noise`` in the task's parameters), optionally renormalised on N training images
(``sample.renormalise_images``). This measures what those choices do, without training anything:
for each ``K:noise`` or ``K:noise:N`` setting, every width's validation and test score (the
task's metric) from the INR checkpoint in ``data/``. Choose a setting by the validation scores at
trained widths only; the test columns report, and the columns of untrained widths say what the
choice does there.

The INR checkpoint is the task's newest version unless ``--version`` is given; the fused network
and the data split are the versions that INR was trained on, found by the content hashes the
checkpoint records (so a later run of the task cannot pair it with the wrong network).
Networks come from the pipeline's ``sample_weights`` stage (sample seed 0, BatchNorm statistics
estimated as in a run where BatchNorm was kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from neumeta_pipeline.data.batches import split_data  # noqa: E402
from neumeta_pipeline.models.checkpoint import load_model  # noqa: E402
from neumeta_pipeline.neumeta.resume import content_hash  # noqa: E402
from neumeta_pipeline.neumeta.tasks import task_kind  # noqa: E402
from neumeta_pipeline.pipelines.neumeta.nodes import sample_weights  # noqa: E402
from neumeta_pipeline.versions import versioned_datasets  # noqa: E402


def versions_of(data: Path, task: str, name: str) -> list[Path]:
    """The version folders of one of ``task``'s datasets, newest first."""
    for dataset, versions in versioned_datasets(data, task).items():
        if dataset.name == name:
            return versions
    raise SystemExit(f"no versions of {name} for task {task!r} under {data}: run `kedro run --pipelines={task}` first")


def load(version: Path) -> dict:
    return torch.load(version / version.parent.name, weights_only=True)


def matching(data: Path, task: str, name: str, digest: str) -> dict:
    """The version of ``name`` whose content hash is ``digest``."""
    for version in versions_of(data, task, name):
        obj = load(version)
        if content_hash(obj) == digest:
            return obj
    raise SystemExit(f"none of {task}'s {name} versions is the one the INR was trained on (hash {digest[:12]}); was it pruned?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--version", help="the INR checkpoint's version (default: the newest)")
    parser.add_argument("--settings", default="1:0,10:0.5,50:0.5,50:1,200:1,50:1.5",
                        help="K:noise or K:noise:N (N renormalisation images; BN-folded networks only), comma-separated")
    parser.add_argument("--compressions", help="comma-separated (default: 0,0.25,0.5,0.625,0.75,0.875)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        settings = [(int(k), float(noise), int(n[0]) if n else 0) for k, noise, *n in (s.split(":") for s in args.settings.split(","))]
    except ValueError:
        raise SystemExit(f"--settings {args.settings!r}: give K:noise or K:noise:N, e.g. 1:0,50:1,50:1:1000") from None

    checkpoints = versions_of(args.data, args.task, "inr_checkpoint.pt")
    chosen = next((v for v in checkpoints if v.name == args.version), None) if args.version else checkpoints[0]
    if chosen is None:
        raise SystemExit(f"no INR checkpoint version {args.version!r}; there are: {', '.join(v.name for v in checkpoints)}")
    checkpoint = load(chosen)
    fused = matching(args.data, args.task, "fused_model.pt", checkpoint["trained_on"]["fused_model"])
    splits = matching(args.data, args.task, "data_split.pt", checkpoint["trained_on"]["splits"])
    kind = task_kind(splits)
    data = {name: split_data(splits, name, "cpu") for name in ("val", "test")}
    compressions = [float(c) for c in args.compressions.split(",")] if args.compressions else [0.0, 0.25, 0.5, 0.625, 0.75, 0.875]

    print(f"{args.task}, INR {chosen.name}: {kind.metric} (%), validation / test, per compression")
    print("| K | noise | renormalised on | " + " | ".join(f"{100 * c:g}%" for c in compressions) + " |")
    print("|---|---|---|" + "---|" * len(compressions))
    for samples, noise, images in settings:
        # The pipeline's own stage, so sampling, calibration and renormalisation are those of a run.
        sample = {"compressions": compressions, "samples": samples, "noise": noise, "renormalise_images": images}
        networks = sample_weights(checkpoint, fused, splits, sample)
        cells = []
        for gamma in compressions:
            net = load_model(networks[f"{gamma:g}"])
            val, test = (100 * kind.score(net, data[name]) for name in ("val", "test"))
            cells.append(f"{val:.2f} / {test:.2f}")
        print(f"| {samples} | {noise:g} | {images or '-'} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
