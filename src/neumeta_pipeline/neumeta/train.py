"""One training loop for everything this project trains (pretrained networks and INRs), and the
NeuMeta objective that plugs into it.

``fit`` owns what every run needs: AdamW or SGD, linear warm-up then cosine decay, gradient
clipping, an EMA copy, validation-based model selection (never the test set) and a progress bar.
What differs between tasks is the ``objective``: a function from a batch to a loss.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..data.batches import Augment
from ..errors import UserError
from .distributed import rank_and_world
from .inr import NeuMetaINR
from .morph import MorphSpec, batch_statistics
from .resume import ResumeFile
from .tasks import TaskKind

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9, nesterov)
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    ema_decay: float | None = None
    augment: str | Augment = "none"  # a name, or an Augment with its settings (scale_crop_flip)
    progress: bool = True
    precision: str = "fp32"  # or "bf16": autocast the forward pass (for GPUs with bf16 units)


@dataclass
class FitResult:
    best: nn.Module  # the selected module (EMA copy when EMA is on), on the training device
    history: list[dict]
    best_epoch: int
    best_score: float
    resumed_from: int = 0  # epochs restored from a resume file (0: trained from the start)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, torch (CPU and CUDA) and return a CPU generator for data order and sampling."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu`` or ``cuda[:N]``, checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use 'auto' (the GPU when there is one), 'cpu' or 'cuda[:N]'") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device {name!r} was requested but this machine has no CUDA GPU; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= count:
            raise UserError(f"device {name!r} was requested but this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise UserError(f"device {name!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    return device


def device_label(device: torch.device) -> str:
    """What a training cost was measured on, for reports: the GPU's name or the CPU thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether the optimisers' fused kernels serve ``params``: one kernel over every tensor instead
    of a Python loop of small ops per tensor. On the default task's INR (80 small tensors, 2-core
    CPU) clipping and the AdamW step took 5.4 ms as that loop and 2.4 ms fused, of a ~40 ms step."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def cosine_decay(done: int, total: int) -> float:
    """The factor on the base learning rate after ``done`` of ``total`` steps: 1 down to 0 along a cosine."""
    return 0.5 * (1.0 + math.cos(math.pi * done / total))


def fit(
    module: nn.Module,
    objective: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]],
    train,
    validate: Callable[[nn.Module], float],
    config: FitConfig,
    generator: torch.Generator,
    desc: str = "train",
    resume: ResumeFile | None = None,
    finish: bool = True,
    extra_generators: tuple[torch.Generator, ...] = (),
    partial_steps: bool = False,
) -> FitResult:
    """Train ``module``'s parameters on ``objective``; return the copy with the best validation score.

    ``validate`` gets the module to score (the EMA copy when EMA is on) and returns higher-is-better.
    With ``resume``, the state is saved after every epoch and a saved state of the same run
    configuration is continued, giving the same result as an uninterrupted run; the file is
    removed at the end unless ``finish`` is false (a stage of a longer run: a completed state is
    replayed without training).

    ``train`` is a split with ``len`` and ``batches`` (``data.DeviceData`` or ``data.FolderData``).
    ``extra_generators``: other random streams the objective draws from, saved and restored with
    the run. ``partial_steps``: some parameters may get no gradient in a step (a tensor subset,
    block-wise stages), which a distributed run must look for. In a distributed run (an initialised process group) every rank takes its share of each
    global batch, ``DistributedDataParallel`` averages the gradients, and only rank 0 validates,
    shows progress and saves the resume state (with every rank's random streams); ``resume`` is
    given to rank 0 alone and its state reaches the others by broadcast.
    """
    rank, world = rank_and_world()
    params = [p for p in module.parameters() if p.requires_grad]
    fused = fused_supported(params)
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    elif config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay, fused=fused)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'adamw' or 'sgd'")
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return cosine_decay(step - warmup, max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = None
    if config.ema_decay is not None:
        ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    scored = ema.module if ema is not None else module
    if config.precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {config.precision!r}; use 'fp32' or 'bf16'")
    device_type = next(module.parameters()).device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.precision == "bf16")

    history: list[dict] = []
    best_state, best_score, best_epoch, first_epoch = None, -math.inf, -1, 0
    stateful = {"module": module, "optimizer": optimizer, "scheduler": scheduler, **({"ema": ema} if ema else {})}
    state = resume.load() if resume is not None else None
    if world > 1:
        box = [state]
        torch.distributed.broadcast_object_list(box, src=0)
        state = box[0]
    if state is not None:
        for name, obj in stateful.items():
            obj.load_state_dict(state[name])
        streams = state if rank == 0 else state["other_ranks"][rank - 1]
        generator.set_state(streams["generator"])
        for extra, saved in zip(extra_generators, streams.get("extra_generators", []), strict=True):
            extra.set_state(saved)
        torch.set_rng_state(streams["torch_rng"])
        history, best_state = state["history"], state["best_state"]
        best_score, best_epoch, first_epoch = state["best_score"], state["best_epoch"], state["epoch"]
        if resume is not None:
            log.info("resuming %s from epoch %d of %d (%s)", desc, first_epoch, config.epochs, resume.path)
    step = objective
    if world > 1:
        # DDP hooks the gradients of the parameters it wraps; the objective closes over the module,
        # so it is wrapped with it.
        step = nn.parallel.DistributedDataParallel(_Objective(module, objective), find_unused_parameters=partial_steps)
    bar = tqdm(total=total, initial=first_epoch * steps_per_epoch, desc=desc, disable=not config.progress or rank > 0, leave=False)
    for epoch in range(first_epoch, config.epochs):
        module.train()
        start, losses = time.perf_counter(), []
        for x, y in train.batches(config.batch_size, generator, config.augment, shard=(rank, world)):
            with autocast:
                loss, _ = step(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=fused)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(module)
            losses.append(loss.detach())
            bar.update()
        train_loss = torch.stack(losses).mean()
        if world > 1:
            torch.distributed.all_reduce(train_loss)  # the mean over ranks: the global batches' loss
            train_loss /= world
        train_loss = float(train_loss)
        streams = {"generator": generator.get_state(), "extra_generators": [g.get_state() for g in extra_generators],
                   "torch_rng": torch.get_rng_state()}
        other_ranks = []
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, streams)
            other_ranks = gathered[1:]
        if rank > 0:
            continue  # rank 0 alone scores, selects and saves
        scored.eval()
        with torch.no_grad():
            score = float(validate(scored))
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_score": score,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
            }
        )
        bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{score:.4f}")
        if score > best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(scored.state_dict())
        if resume is not None:
            resume.save(
                {
                    **{name: obj.state_dict() for name, obj in stateful.items()},
                    "epoch": epoch + 1,
                    **streams,
                    **({"other_ranks": other_ranks} if other_ranks else {}),
                    "history": history,
                    "best_state": best_state,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                }
            )
    bar.close()
    if resume is not None and finish:
        resume.finish()
    best = copy.deepcopy(scored)
    if best_state is not None:  # None on ranks other than 0, which never select
        best.load_state_dict(best_state)
    best.eval()
    return FitResult(best=best, history=history, best_epoch=best_epoch, best_score=best_score, resumed_from=first_epoch)


class _Objective(nn.Module):
    """A module whose forward is the objective, so DistributedDataParallel can wrap a training step."""

    def __init__(self, module: nn.Module, objective: Callable) -> None:
        super().__init__()
        self.module, self.objective = module, objective

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.objective(x, y)


def task_objective(model: nn.Module, kind: TaskKind = TaskKind()) -> Callable:
    """The kind's loss of ``model`` on a batch (cross-entropy per image or per pixel, negative ELBO)."""

    def objective(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = kind.loss(kind.output(model, x), x, y)
        return loss, {"task": loss.detach()}

    return objective


RECONSTRUCTION_SCHEDULES = ("constant", "cosine")


def fit_reconstruction(
    inr: NeuMetaINR,
    reference: dict[str, torch.Tensor],
    steps: int,
    lr: float,
    noise: float,
    generator: torch.Generator,
    schedule: str = "constant",
) -> list[float]:
    """Warm start: fit the INR to the full-width (permuted, fused) weights alone, no data needed.

    The task loss through a freshly initialised INR trains slowly (hundreds of epochs in the
    paper); starting from an INR that already reproduces the pretrained network lets a short run
    spend its steps on the narrower widths. Returns the loss every step.

    ``schedule``: ``constant`` keeps ``lr`` throughout; ``cosine`` decays it to zero over the steps.
    With coordinate noise every step fits a different jitter of the coordinates, so a constant rate
    ends on the last of a run of noisy steps and a decaying one on a settled point (which scored
    higher after 2,000 steps on one network and lower after 4,000: docs/results.md).
    """
    if schedule not in RECONSTRUCTION_SCHEDULES:
        raise ValueError(f"unknown reconstruction schedule {schedule!r}; choose from {RECONSTRUCTION_SCHEDULES}")
    params = inr.generator_parameters()
    optimizer = torch.optim.Adam(params, lr=lr, fused=fused_supported(params))
    full = inr.spec.widths(0.0)
    losses = []
    for step in range(steps):
        if schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = lr * cosine_decay(step, steps)
        loss = inr.standardised_error(inr.generate(full, noise=noise, generator=generator, raw=True), reference)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


WIDTH_SAMPLING = ("continuous", "uniform")


@dataclass
class NeuMetaLoss:
    """Task loss at sampled widths + lambda_recon * reconstruction at full width + lambda_reg * L2,
    optionally + lambda_kd * distillation from the full-width network's outputs.

    ``width_sampling``: ``continuous`` draws a compression uniformly from the range and rounds each
    group's width (the two edge widths of the range come up half as often as the others);
    ``uniform`` draws the narrowest group's width uniformly among its integer values in the range,
    the other groups at the same compression, as the authors' code draws h for LeNet. ``widths_per_step`` > 1 averages the task loss over that many configurations per
    step, the first always the full width (gradient accumulation over widths). ``sandwich`` makes
    the second the narrowest configuration of the range, in every step (the "sandwich rule" of
    universally slimmable networks): drawn uniformly among n widths it would train in one step of n
    (n = 13 for ResNet20's inner widths 4-16), where a network trained for that width gets them all.

    ``active`` (block-wise training) limits the INR to a subset of the generated tensors: the
    others keep the reference weights, and only the channel groups the active tensors touch morph.
    ``batch_stats``: the target keeps its BatchNorm layers, which then normalise the generated
    networks with each batch's statistics (the distillation teacher keeps the pretrained ones).

    ``recon_share`` < 1 adds the reconstruction term only in that share of steps, drawn per step
    from ``generator`` (so a resumed run draws the same steps), at the same weight: its average
    weight becomes ``lambda_recon * recon_share``. Generating every tensor at full width is a
    whole extra INR pass per step (on LeNet the dearest part of a step), so this is the lever on
    training cost. At 1 nothing is drawn and the random streams are those before the option.

    ``y`` may come as ``(labels, teacher outputs)``: the split carries the teacher's outputs,
    computed once by ``teacher_outputs`` (``train_inr.teacher_cache``), and the step skips the
    teacher's forward pass (on full MNIST about a third of a step).
    """

    inr: NeuMetaINR
    target: nn.Module  # the permuted, fused full-width network (frozen)
    spec: MorphSpec
    compression_range: tuple[float, float]
    coord_noise: float
    lambda_recon: float
    lambda_reg: float
    generator: torch.Generator
    tensor_fraction: float = 1.0  # share of generated tensors that get gradients each step
    width_sampling: str = "continuous"
    widths_per_step: int = 1
    lambda_kd: float = 0.0
    kd_temperature: float = 1.0
    active: set[str] | None = None
    batch_stats: bool = False  # the target keeps BatchNorm: generated networks normalise with batch statistics
    kind: TaskKind = TaskKind()  # the task loss and distillation term (classification or segmentation)
    recon_share: float = 1.0  # share of steps that add the reconstruction term
    sandwich: bool = False  # the narrowest configuration of the range in every step, after the full width

    def __post_init__(self) -> None:
        if self.width_sampling not in WIDTH_SAMPLING:
            raise ValueError(f"unknown width_sampling {self.width_sampling!r}; use one of {WIDTH_SAMPLING}")
        if self.sandwich and self.widths_per_step < 3:
            raise ValueError(f"sandwich needs widths_per_step >= 3 (full, narrowest, sampled), got {self.widths_per_step}")
        if not 0.0 < self.recon_share <= 1.0:
            raise ValueError(f"recon_share must be in (0, 1], got {self.recon_share}")
        self.full = self.spec.widths(0.0)
        state = self.target.state_dict()
        self.reference = {t.name: state[t.name].detach() for t in self.spec.tensors}
        low, high = self.compression_range
        # Uniform sampling: every integer width of the narrowest morphable group in the range,
        # the other groups at the same compression (LeNet: h, 2h, 4h for each integer h).
        smallest = min(self.spec.full_widths.values(), default=1)
        low_w, high_w = max(1, round((1.0 - high) * smallest)), round((1.0 - low) * smallest)
        self.configurations = [self.spec.widths(1.0 - w / smallest) for w in range(low_w, high_w + 1)]
        # The narrowest configuration the sampling can draw.
        self.narrowest = self.configurations[0] if self.width_sampling == "uniform" else self.spec.widths(high)

    def sample_widths(self) -> dict[str, int]:
        if self.width_sampling == "uniform":
            return self.restrict(self.configurations[int(torch.randint(len(self.configurations), (), generator=self.generator))])
        low, high = self.compression_range
        gamma = low + (high - low) * float(torch.rand((), generator=self.generator))
        return self.restrict(self.spec.widths(gamma))

    def restrict(self, widths: dict[str, int]) -> dict[str, int]:
        """``widths`` with the groups no active tensor touches at full width (all of them morph
        when every tensor is active)."""
        if self.active is None:
            return widths
        touched = {g for t in self.spec.tensors if t.name in self.active for g in (t.out_group, t.in_group)}
        return {g: (w if g in touched else self.full[g]) for g, w in widths.items()}

    def weights(
        self, inr: NeuMetaINR, widths: dict[str, int], noise: float, samples: int = 1,
        generator: torch.Generator | None = None, trained: set[str] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(the MLPs' values, every tensor the network at ``widths`` takes from ``inr``): the active
        tensors generated, the inactive ones from the reference, sliced to ``widths``."""
        raw = inr.generate(widths, noise=noise, samples=samples, generator=generator, trained=trained, only=self.active, raw=True)
        weights = inr.complete(widths, raw)
        if self.active is not None:
            frozen = {name: ref for name, ref in self.reference.items() if name not in self.active}
            weights.update(self.spec.narrow(frozen, widths))
        return raw, weights

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The distillation teacher's outputs on every image of ``x``, in chunks of ``batch_size``.
        The teacher is frozen and in eval mode, so an image's output does not depend on its batch."""
        return torch.cat([self.target(x[start : start + batch_size]) for start in range(0, len(x), batch_size)])

    def __call__(self, x: torch.Tensor, y: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        configurations = [self.full] * (self.widths_per_step > 1) + [self.restrict(self.narrowest)] * self.sandwich
        configurations += [self.sample_widths() for _ in range(self.widths_per_step - len(configurations))]
        trained = None
        if self.tensor_fraction < 1.0:
            # The paper's speed-up: only a random subset of tensors is back-propagated per step.
            count = max(1, round(self.tensor_fraction * len(self.spec.tensors)))
            pick = torch.randperm(len(self.spec.tensors), generator=self.generator)[:count]
            trained = {self.spec.tensors[i].name for i in pick.tolist()}
        teacher = None
        if isinstance(y, tuple):
            y, teacher = y
        if self.lambda_kd > 0 and teacher is None:
            with torch.no_grad():
                teacher = self.target(x)
        task = kd = reg = 0.0
        full = None
        for widths in configurations:
            raw, weights = self.weights(self.inr, widths, self.coord_noise, generator=self.generator, trained=trained)
            with batch_statistics(self.target) if self.batch_stats else contextlib.nullcontext():
                output = self.kind.output(lambda x, **mode: self.spec.run(self.target, widths, weights, x, **mode), x)
            task = task + self.kind.loss(output, x, y) / len(configurations)
            if self.lambda_kd > 0 and widths != self.full:
                divergence = self.kind.distill(output, teacher, self.kd_temperature)
                kd = kd + self.kd_temperature**2 * divergence / len(configurations)
            if self.lambda_reg > 0:
                reg = reg + torch.stack([w.norm() for w in raw.values()]).sum() / len(configurations)
            if widths == self.full and full is None:
                full = raw
        loss, logs = task, {"task": task.detach()}
        reconstruct = self.lambda_recon > 0
        if reconstruct and self.recon_share < 1.0:
            reconstruct = float(torch.rand((), generator=self.generator)) < self.recon_share
        if reconstruct:
            if full is None:
                full = self.inr.generate(
                    self.full, noise=self.coord_noise, generator=self.generator, trained=trained, only=self.active, raw=True
                )
            recon = self.inr.standardised_error(full, self.reference)
            loss = loss + self.lambda_recon * recon
            logs["recon"] = recon.detach()
        if self.lambda_reg > 0:
            loss = loss + self.lambda_reg * reg
            logs["reg"] = reg.detach()
        if self.lambda_kd > 0 and torch.is_tensor(kd):
            loss = loss + self.lambda_kd * kd
            logs["kd"] = kd.detach()
        return loss, logs
