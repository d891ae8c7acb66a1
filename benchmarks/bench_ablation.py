"""Ablation of training options on a task: each variant's test accuracy per width over seeds.

Usage: python benchmarks/bench_ablation.py [--task mnist_offline] [--seeds 0 1 2] [--threads 2]
           [--variant NAME=PARAMS ...] [--out FILE]

A variant is a name and ``kedro run --params``-style overrides without the task prefix, e.g.
``uniform=train_inr.width_sampling=uniform``; several overrides are joined with ``;``, and a value
may be a list (``wide=morph.compression_range=[0.0,0.625]``). The variant
``baseline`` (no overrides) is always run first. Every run is a full pipeline run in a throw-away
copy of the project (see bench_reproducibility.py), one at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reproducibility import run_once  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mnist_offline")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value;key=value")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    variants = ([] if args.skip_baseline else [("baseline", "")]) + [tuple(v.split("=", 1)) for v in args.variant]
    runs = []
    for name, overrides in variants:
        params = ",".join(f"{args.task}.{o}" for o in overrides.split(";") if o)
        for seed in args.seeds:
            run = {"variant": name, **run_once(args.task, seed, args.threads, params)}
            runs.append(run)
            print(json.dumps(run), flush=True)
            if args.out:
                args.out.write_text(json.dumps(runs, indent=1))
    widths = list(runs[0]["accuracy"])
    print(f"\n{args.task}, {args.threads} thread(s), seeds {args.seeds}: test accuracy (%), median [min, max]")
    print("| variant | overrides | " + " | ".join(w + ("" if runs[0]["seen"][w] else " (unseen)") for w in widths) + " | wall s (median) |")
    print("|---|---|" + "---|" * len(widths) + "---|")
    for name, overrides in variants:
        chosen = [r for r in runs if r["variant"] == name]
        cells = []
        for w in widths:
            values = [100 * r["accuracy"][w] for r in chosen]
            cells.append(f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]")
        wall = statistics.median(r["seconds"] for r in chosen)
        print(f"| {name} | `{overrides or '-'}` | " + " | ".join(cells) + f" | {wall:.0f} |")


if __name__ == "__main__":
    main()
