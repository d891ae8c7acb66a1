"""Benchmark of the weight-smoothing permutation (mSHP) on CIFAR ResNet20 and torchvision ResNets.

Usage: python benchmarks/bench_surgery.py [--models resnet20,resnet18,resnet50] [--solvers auto,two_opt,local_search]
       [--threads N] [--no-single-matrix]

Weights are random initialisations (seed 0), BatchNorm left at its initial statistics and not
fused: no checkpoint is needed, but i.i.d. random channels have little order to find, so the TV
reductions here say little about trained networks. For each solver it prints the group count,
the largest group, summed TV over permutable groups before/after ``smooth`` and its wall time
(tracing included), and below them the TV reached when each group is ordered by the path of its
producer's weight matrix alone (single-matrix TSP, solved with two_opt) instead of all coupled
tensors. For ``auto`` it also says which solver ordered how many groups.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from neumeta_pipeline.models import build_model  # noqa: E402
from neumeta_pipeline.neumeta.graph import ChannelGroup, Member, channel_groups  # noqa: E402
from neumeta_pipeline.neumeta.permute import (  # noqa: E402
    _effective_members,
    _features,
    _path_cost,
    _tv,
    smooth,
    solve_path,
)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "resnet20":
        return build_model("resnet20").eval(), torch.randn(1, 3, 32, 32)
    import torchvision

    return getattr(torchvision.models, name)(weights=None).eval(), torch.randn(1, 3, 64, 64)


def producer_member(model: nn.Module, group: ChannelGroup) -> Member:
    """The output-channel slice of the weight of the layer the group is named after."""
    out_dim = 1 if isinstance(model.get_submodule(group.name), nn.modules.conv._ConvTransposeNd) else 0
    key = f"{group.name}.weight" if group.name else "weight"
    return next(m for m in group.members if m.tensor == key and m.dim == out_dim)


def single_matrix_tv(model: nn.Module, groups: list[ChannelGroup], solver: str, seed: int) -> tuple[float, float]:
    """Summed group TV when each group follows the path of its producer's weight only."""
    state = model.state_dict()
    total, tic = 0.0, time.perf_counter()
    for g in groups:
        if not g.permutable:
            continue
        full = _features(state, _effective_members(model, g), g.size)
        if g.size <= 2:
            total += _tv(full)
            continue
        own = _features(state, [producer_member(model, g)], g.size)
        d = torch.cdist(own[None], own[None], p=1)[0].numpy()
        order = solve_path(d, solver=solver, seed=seed)
        # Same acceptance rule as smooth: keep the identity unless the (weight-only) path is shorter.
        if _path_cost(d, order) >= _path_cost(d, np.arange(g.size)):
            order = np.arange(g.size)
        total += _tv(full[torch.from_numpy(order)])
    return total, time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet18")
    parser.add_argument("--solvers", default="two_opt,local_search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-single-matrix", action="store_true", help="skip the single-matrix TSP comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          "random-init weights, BN not fused")
    for name in args.models.split(","):
        model, x = build(name)
        tic = time.perf_counter()
        groups = channel_groups(model, x)
        trace_s = time.perf_counter() - tic
        permutable = [g for g in groups if g.permutable]
        largest = max(permutable, key=lambda g: g.size)
        print(f"\n== {name}: {len(groups)} groups ({len(permutable)} permutable), largest {largest.name} "
              f"with {largest.size} channels; tracing {trace_s:.2f} s")
        print(f"{'solver':>19} | {'TV before':>12} {'TV after':>12} {'ratio':>7} {'smooth s':>9} | slowest group")
        for solver in args.solvers.split(","):
            tic = time.perf_counter()
            _, report = smooth(model, x, seed=args.seed, solver=solver)
            wall = time.perf_counter() - tic
            before, after = report["tv_before"], report["tv_after"]
            slowest = max(report["groups"], key=lambda e: e["seconds"])
            print(f"{solver:>19} | {before:12.1f} {after:12.1f} {after / before:7.4f} {wall:9.2f} | "
                  f"{slowest['group']} ({slowest['channels']} ch) {slowest['seconds']:.2f} s", flush=True)
            used = Counter(e["solver"] for e in report["groups"] if e["solver"])
            if solver == "auto":
                sizes = {u: sorted({e["channels"] for e in report["groups"] if e["solver"] == u}) for u in used}
                print(f"{'':>19} | groups per solver: " + ", ".join(f"{u} {n} ({sizes[u][0]}-{sizes[u][-1]} ch)" for u, n in used.items()))
        if args.no_single_matrix:
            continue
        # The objective, not the solver, is compared here: both orders come from two_opt.
        single, single_s = single_matrix_tv(model, groups, "two_opt", args.seed)
        print(f"{'single-matrix TSP':>19} | {before:12.1f} {single:12.1f} {single / before:7.4f} {single_s:9.2f} | "
              "each group ordered by its producer weight's path only (two_opt)")


if __name__ == "__main__":
    main()
