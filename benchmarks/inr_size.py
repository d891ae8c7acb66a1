"""Stored parameters of the INR under each layout, next to the parameters of the network it generates.

Usage: python benchmarks/inr_size.py [--sizes 256x5,128x3,64x2] [--num-frequencies F] [--check]

Networks (random initialisations; a count does not depend on weight values), every conv/linear
weight and bias generated (``generated: all``) after BatchNorm is folded, as the pipeline does:

  LeNet h = 32 (conf/base/parameters_mnist.yml's network and its F), CIFAR ResNet20 and ResNet56
  (F from conf/base/parameters_cifar10.yml).

Each layout is counted without FiLM, and the shared ones also with ``modulation: film``.
INR sizes are ``hidden x depth`` of the residual MLPs; counts come from ``inr_parameter_count``
(the formula), and with ``--check`` every INR is also built and its ``sum(p.numel())`` compared.
Buffers (F Fourier frequencies, an output shift and scale per generated tensor) are not counted.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from neumeta_pipeline.models import build_model  # noqa: E402
from neumeta_pipeline.neumeta.fuse import fuse_batchnorm  # noqa: E402
from neumeta_pipeline.neumeta.inr import LAYOUTS, MODULATIONS, NeuMetaINR, inr_parameter_count, mlp_keys  # noqa: E402
from neumeta_pipeline.neumeta.morph import MorphSpec  # noqa: E402

# (label, model name, kwargs, input shape, task whose INR frequencies are used)
NETWORKS = [
    ("LeNet h=32", "lenet", {"width": 32, "num_classes": 10}, (1, 28, 28), "mnist"),
    ("ResNet20", "resnet20", {"num_classes": 10}, (3, 32, 32), "cifar10"),
    ("ResNet56", "resnet56", {"num_classes": 10}, (3, 32, 32), "cifar10"),
]


def task_frequencies(task: str) -> int:
    with open(ROOT / "conf" / "base" / f"parameters_{task}.yml") as f:
        return int(yaml.safe_load(f)[task]["inr"]["num_frequencies"])


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        hidden, depth = item.lower().split("x")
        sizes.append((int(hidden), int(depth)))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="256x5,128x3,64x2", help="hidden x depth pairs, comma separated")
    parser.add_argument("--num-frequencies", type=int, default=None, help="F for every network (default: the task's)")
    parser.add_argument("--check", action="store_true", help="also build each INR and count its parameters")
    args = parser.parse_args()
    sizes = parse_sizes(args.sizes)

    header = ["network", "network params (with BN)", "generated params (BN folded)", "F", "layout", "modulation", "MLPs"]
    header += [f"INR {h}x{d}" for h, d in sizes]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, name, kwargs, shape, task in NETWORKS:
        net = build_model(name, **kwargs).eval()
        fused = fuse_batchnorm(net)
        spec = MorphSpec(fused, torch.zeros(1, *shape))
        own = sum(p.numel() for p in net.parameters())
        generated = sum(p.numel() for p in fused.parameters())
        freqs = args.num_frequencies or task_frequencies(task)
        # FiLM is counted for the shared layouts only: with one MLP per tensor it adds values
        # without telling anything apart.
        shared = [layout for layout in LAYOUTS if layout != "per_tensor"]
        rows = [(layout, "none") for layout in LAYOUTS] + [(layout, m) for layout in shared for m in MODULATIONS if m != "none"]
        for layout, modulation in rows:
            cells = []
            for hidden, depth in sizes:
                config = {"num_frequencies": freqs, "hidden": hidden, "depth": depth, "layout": layout, "modulation": modulation}
                count = inr_parameter_count(config, spec)
                if args.check:
                    built = sum(p.numel() for p in NeuMetaINR(spec, **config).parameters())
                    if built != count:
                        raise SystemExit(f"{label} {layout}/{modulation} {hidden}x{depth}: formula {count:,} != module {built:,}")
                cells.append(f"{count:,} ({count / own:.2f}x)")
            mlps = len(set(mlp_keys(spec, layout)))
            print(f"| {label} | {own:,} | {generated:,} | {freqs} | {layout} | {modulation} | {mlps} | " + " | ".join(cells) + " |")
    print()
    print("(ratio: INR parameters / the network's own parameters with BN)")
    if args.check:
        print("checked: every formula count equals sum(p.numel()) of the built INR")


if __name__ == "__main__":
    main()
