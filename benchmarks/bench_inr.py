"""Benchmark of NeuMeta INR training steps and K-sample weight generation.

Usage: python benchmarks/bench_inr.py [--device auto|cpu|cuda] [--steps N] [--threads N]
                                      [--warmup N] [--sample-repeats N] [--cases a,b,c,sample] [--seed S]
                                      [--tensor-fraction F] [--unfused]

Measured, all with random-init networks (no checkpoint or data set needed; timings do not depend
on the weight values):

  a. LeNet width 32, whole network generated, batch 128 of 1x28x28, INR/loss settings from
     conf/base/parameters_mnist.yml.
  b. CIFAR ResNet20 with BatchNorm fused, last block generated (layer3.2.conv1/conv2, the inner
     width morphs), batch 128 of 3x32x32, settings from conf/base/parameters_cifar10.yml.
  c. as b, but the inner width of every residual block is generated and morphs.
  sample. ``sample_model`` of the full ResNet20 of c with K = 50 noisy coordinate samples at
     compression 0.

A training step is what ``fit`` does per batch in the pipeline's ``train_inr`` node: the
``NeuMetaLoss`` (sample a compression, generate the weights, run the frozen target with
``MorphSpec.run``, cross-entropy + lambda_recon * full-width reconstruction + lambda_reg * L2),
backward, gradient clipping, AdamW step and EMA update (clipping, EMA, ``tensor_fraction`` and
``precision`` as configured; the config's defaults are fp32 and every tensor trained). Each step
is timed on its own and the median is reported, after warm-up steps; the compression (and so the
width and the cost) is drawn per step from the seeded generator, so min/max are shown too. Each
case also reports how many CPUs other processes kept busy while it ran (Linux): on a shared
machine a timing taken while another process held a core is not a measurement of this code.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from neumeta_pipeline.models import build_model  # noqa: E402
from neumeta_pipeline.neumeta.fuse import fuse_batchnorm  # noqa: E402
from neumeta_pipeline.neumeta.inr import NeuMetaINR  # noqa: E402
from neumeta_pipeline.neumeta.morph import MorphSpec  # noqa: E402
from neumeta_pipeline.neumeta.sample import sample_model  # noqa: E402
from neumeta_pipeline.neumeta.train import NeuMetaLoss, fused_supported, resolve_device, seed_everything  # noqa: E402

BATCH = 128
PAPER_CIFAR_GPU_HOURS = 1.3
CIFAR_STEPS_PER_EPOCH = math.ceil(50_000 / BATCH)  # 391: the full CIFAR training set
PIPELINE_STEPS_PER_EPOCH = math.ceil(45_000 / BATCH)  # 352: the pipeline keeps 10% for validation
EPOCHS = 200

# Default timed steps per case. On a 2-core CPU a step of c costs seconds, so the slow cases get
# fewer steps to keep the whole run near three minutes; a GPU can afford many more.
DEFAULT_STEPS = {"cpu": {"a": 50, "b": 20, "c": 10}, "cuda": {"a": 100, "b": 100, "c": 50}}
DEFAULT_WARMUP = {"cpu": 3, "cuda": 10}
DEFAULT_SAMPLE_REPEATS = {"cpu": 5, "cuda": 5}

ALL_BLOCKS = {"generated": ["layer*.*.conv1", "layer*.*.conv2"], "morphable": ["layer*.*.conv1"]}


def load_params(task: str) -> dict:
    """The task's parameters as the pipeline reads them, so the benchmark follows the config."""
    with open(ROOT / "conf" / "base" / f"parameters_{task}.yml") as f:
        return yaml.safe_load(f)[task]


def synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without this the clock would stop before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"CPU {name} ({os.cpu_count()} logical CPUs)"


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"
    try:
        import resource

        # ru_maxrss is in KiB on Linux; it is the process's peak so far, not this case's alone.
        return f"process peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:,.0f} MiB"
    except (ImportError, OSError):
        return "peak memory unknown"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unavailable"


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # guest time is already counted in user/nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many CPUs other processes kept busy over an interval: the machine's busy CPU time minus
    this process's. The load average lags by a minute; this says whether a timing was shared."""

    def __enter__(self) -> OtherLoad:
        self.busy, self.own, self.tic = _busy_seconds(), _own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        end = _busy_seconds()
        wall = time.perf_counter() - self.tic
        if self.busy is None or end is None or wall <= 0:
            self.text = "other processes: unknown"
            return
        others = max(0.0, (end - self.busy) - (_own_seconds() - self.own)) / wall
        self.text = f"other processes busy on {others:.2f} of {os.cpu_count()} CPUs meanwhile"


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Case:
    """One INR training setting: the frozen target, its MorphSpec, the INR, loss, optimiser, EMA."""

    def __init__(
        self,
        key: str,
        label: str,
        task: str,
        morph_override: dict | None,
        device: torch.device,
        seed: int,
        tensor_fraction: float | None = None,
        fused: bool = True,
    ):
        params = load_params(task)
        model_p, morph_p, inr_p, train_p = params["model"], params["morph"], params["inr"], params["train_inr"]
        morph = {**morph_p, **(morph_override or {})}
        self.key, self.label, self.device = key, label, device
        generator = seed_everything(seed)
        net = build_model(model_p["name"], **model_p.get("kwargs", {})).eval()
        # The pipeline generates the fused network (LeNet has no BatchNorm: fusing is a no-op there).
        target = fuse_batchnorm(net).to(device)
        for p in target.parameters():
            p.requires_grad_(False)
        shape = tuple(model_p["input_shape"])
        self.spec = MorphSpec(target, torch.zeros(1, *shape, device=device), morph["generated"], morph["morphable"])
        self.inr = NeuMetaINR(self.spec, **inr_p, reference=target.state_dict()).to(device)
        self.target = target
        # Both default as in the pipeline's TrainINRParams when the config leaves them out.
        fraction = train_p.get("tensor_fraction", 1.0) if tensor_fraction is None else tensor_fraction
        precision = train_p.get("precision", "fp32")
        self.loss = NeuMetaLoss(
            self.inr, target, self.spec, tuple(morph["compression_range"]), train_p["coord_noise"],
            train_p["lambda_recon"], train_p["lambda_reg"], generator, fraction,
        )
        # fit autocasts only the objective (forward); backward and the optimiser stay outside.
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        self.params = [p for p in self.inr.parameters() if p.requires_grad]
        # As fit: fused optimiser kernels where they serve (--unfused: the per-tensor loop, for comparison).
        self.fused = fused and fused_supported(self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=train_p["lr"], weight_decay=train_p.get("weight_decay", 0.0), fused=self.fused)
        self.grad_clip = train_p.get("grad_clip")
        ema_decay = train_p.get("ema_decay")
        self.ema = None
        if ema_decay is not None:
            self.ema = AveragedModel(self.inr, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        # Data drawn on the CPU generator, then moved: the same batch on every device.
        self.x = torch.randn(BATCH, *shape, generator=generator).to(device)
        num_classes = model_p.get("kwargs", {}).get("num_classes", 10)
        self.y = torch.randint(0, num_classes, (BATCH,), generator=generator).to(device)
        self.generated_params = sum(math.prod(t.full_shape) for t in self.spec.tensors)
        self.inr_params = sum(p.numel() for p in self.inr.parameters())
        self.summary = (
            f"{len(self.spec.tensors)} tensors of {len(self.spec.generated_modules)} modules generated, "
            f"morphable {self.spec.full_widths}; INR F={inr_p['num_frequencies']} hidden={inr_p['hidden']} "
            f"depth={inr_p['depth']}; compression {morph['compression_range']}, noise {train_p['coord_noise']}, "
            f"recon {train_p['lambda_recon']}, reg {train_p['lambda_reg']}, clip {self.grad_clip}, EMA {ema_decay}, "
            f"tensor_fraction {fraction}, {precision}, {'fused' if self.fused else 'per-tensor'} AdamW"
        )

    def step(self) -> None:
        """One batch of ``fit``'s inner loop (the LR schedule's bookkeeping left out: it is free)."""
        with self.autocast:
            loss, _ = self.loss(self.x, self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=self.fused)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.inr)

    def time_steps(self, warmup: int, steps: int) -> list[float]:
        self.inr.train()
        for _ in range(warmup):
            self.step()
        times = []
        for _ in range(steps):
            synchronize(self.device)
            tic = time.perf_counter()
            self.step()
            synchronize(self.device)
            times.append(time.perf_counter() - tic)
        return times


CASES = {
    "a": ("a  LeNet-32, all generated", "mnist", None),
    "b": ("b  ResNet20 fused, last block", "cifar10", None),
    "c": ("c  ResNet20 fused, all blocks", "cifar10", ALL_BLOCKS),
}


def time_sampling(device: torch.device, seed: int, warmup: int, repeats: int) -> tuple[Case, list[float], int]:
    """Seconds per ``sample_model`` call for the all-blocks ResNet20 at compression 0 with K = 50."""
    case = Case("sample", "sample", "cifar10", ALL_BLOCKS, device, seed)
    sample_p = load_params("cifar10")["sample"]
    samples = 50
    case.inr.eval()
    widths = case.spec.widths(0.0)
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        tic = time.perf_counter()
        net = sample_model(case.inr, case.target, widths, samples, sample_p["noise"], sample_p["seed"])
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - tic)
        del net
    return case, times, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (auto: cuda when available)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per training case (default: per case and device)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (and sample calls) first")
    parser.add_argument("--sample-repeats", type=int, default=None, help="timed sample_model calls")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--cases", default="a,b,c,sample")
    parser.add_argument("--tensor-fraction", type=float, default=None,
                        help="NeuMetaLoss tensor_fraction for the training cases (default: the config's, else 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unfused", action="store_true", help="AdamW and clipping as a Python loop over tensors (before fused kernels)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    kind = device.type if device.type in DEFAULT_STEPS else "cpu"
    warmup = DEFAULT_WARMUP[kind] if args.warmup is None else args.warmup
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES) - {"sample"}
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from a, b, c, sample")
    if any(v is not None and v < 1 for v in (args.steps, args.sample_repeats)):
        parser.error("--steps and --sample-repeats must be >= 1 (there is no median of nothing)")
    if args.tensor_fraction is not None and not 0.0 < args.tensor_fraction <= 1.0:
        parser.error("--tensor-fraction must be in (0, 1]")

    wall = time.perf_counter()
    print(f"torch {torch.__version__} | device {device} = {device_name(device)} | "
          f"{torch.get_num_threads()} torch threads | {load_average()} at start")
    print(f"random-init weights (seed {args.seed}), random batches of {BATCH}; warm-up {warmup}, "
          "median over timed steps; one step = NeuMetaLoss + backward + grad clip + AdamW + EMA")

    results = {}
    rows = []
    for key in (c for c in cases if c in CASES):
        label, task, override = CASES[key]
        case = Case(key, label, task, override, device, args.seed, args.tensor_fraction, not args.unfused)
        steps = DEFAULT_STEPS[kind][key] if args.steps is None else args.steps
        reset_peak_memory(device)
        with OtherLoad() as other:
            times = case.time_steps(warmup, steps)
        med = statistics.median(times)
        results[key] = med
        rows.append((label, case.generated_params, case.inr_params, steps, med, min(times), max(times)))
        # Printed with the CPU time other processes took meanwhile: a shared core invalidates a timing.
        print(f"  {label}: {case.summary} [{other.text}; {peak_memory(device)}]", flush=True)
        del case

    if rows:
        print()
        print(f"{'case':<32} {'generated':>10} {'INR params':>11} {'steps':>6} {'ms/step':>9} "
              f"{'steps/s':>8} {'min-max ms':>15}")
        for label, gen, inr, steps, med, lo, hi in rows:
            print(f"{label:<32} {gen:>10,} {inr:>11,} {steps:>6} {med * 1e3:>9.1f} {1 / med:>8.2f} "
                  f"{f'{lo * 1e3:.0f}-{hi * 1e3:.0f}':>15}")

    if "b" in results:
        ms = results["b"] * 1e3
        hours = ms * CIFAR_STEPS_PER_EPOCH * EPOCHS / 3.6e6
        hours_pipe = ms * PIPELINE_STEPS_PER_EPOCH * EPOCHS / 3.6e6
        print(f"\n200-epoch CIFAR extrapolation for b: {ms:.1f} ms/step x {CIFAR_STEPS_PER_EPOCH} steps/epoch x "
              f"{EPOCHS} epochs = {hours:.2f} h on this device (paper: {PAPER_CIFAR_GPU_HOURS} GPU-hours)")
        print(f"  the pipeline's 45,000-image training split ({PIPELINE_STEPS_PER_EPOCH} steps/epoch): "
              f"{hours_pipe:.2f} h; validation and the reconstruction warm start not included")

    if "sample" in cases:
        repeats = DEFAULT_SAMPLE_REPEATS[kind] if args.sample_repeats is None else args.sample_repeats
        sample_warmup = min(warmup, 1)  # one untimed call is enough here: each call is large
        reset_peak_memory(device)
        with OtherLoad() as other:
            case, times, samples = time_sampling(device, args.seed, sample_warmup, repeats)
        rows_k = sum(math.prod(case.spec.channels(t, case.spec.widths(0.0))) for t in case.spec.tensors) * samples
        print(f"\nsample_model, ResNet20 all blocks (as c), compression 0, K = {samples}: "
              f"{statistics.median(times):.2f} s median over {repeats} calls "
              f"(min {min(times):.2f}, max {max(times):.2f}; {sample_warmup} untimed first); "
              f"{rows_k:,} INR coordinate evaluations, {case.generated_params:,} weights written "
              f"[{other.text}; {peak_memory(device)}]")

    print(f"\ntotal wall time {time.perf_counter() - wall:.0f} s | {load_average()} at end")


if __name__ == "__main__":
    main()
