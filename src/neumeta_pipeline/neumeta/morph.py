"""Which tensors of a network the hypernetwork generates, and how a width configuration maps onto them.

A ``MorphSpec`` is derived from the channel groups of a (fused) network: the user names the
modules whose weights are generated and the channel groups whose width changes (glob patterns or
``"all"``). One compression ratio gamma sets every morphable group to
``max(1, round((1 - gamma) * full_size))`` channels, keeping the first channels of the permuted
order. Tensors outside the generated set that touch a morphable group are sliced the same way, so
any traceable network can be run at any width through ``torch.func.functional_call``.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from .graph import ChannelGroup, channel_groups, channel_index

GENERATABLE = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
# How tensors the INR does not generate are cut to a narrower width: their first channels (the
# paper's), or the mean of each cell of full channels that a generated narrow channel stands for.
NARROWINGS = ("first", "cells")


@dataclass(frozen=True)
class TensorSpec:
    """One generated tensor: a weight viewed as (out channels, in channels, kernel) or a bias."""

    name: str  # state-dict key, e.g. "layer3.2.conv1.weight"
    module: str
    layer: int  # index of its module among the generated modules (the INR's layer coordinate)
    kind: str  # "weight" or "bias"
    full_shape: tuple[int, ...]
    transposed: bool  # ConvTranspose stores (in, out, k...) instead of (out, in, k...)
    out_group: str | None  # channel group of the output channels (None: fixed, e.g. the logits)
    in_group: str | None
    in_block: int  # consecutive input indices per input channel (flatten into a Linear layer)

    @property
    def full_out(self) -> int:
        return self.full_shape[1 if self.transposed else 0]

    @property
    def full_in(self) -> int:
        """Input channels (not columns) of the weight; 1 for a bias."""
        if self.kind == "bias":
            return 1
        return self.full_shape[0 if self.transposed else 1] // self.in_block

    @property
    def kernel(self) -> int:
        """Values the INR predicts per (out, in) coordinate: kernel elements times the block."""
        if self.kind == "bias":
            return 1
        return math.prod(self.full_shape[2:]) * self.in_block


class MorphSpec:
    """The generated tensors and morphable channel groups of one network."""

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        generated: str | list[str] = "all",
        morphable: str | list[str] = "all",
        groups: list[ChannelGroup] | None = None,
        narrowing: str = "first",
    ) -> None:
        if narrowing not in NARROWINGS:
            raise ValueError(f"narrowing: unknown {narrowing!r}; choose from {NARROWINGS}")
        self.groups = groups if groups is not None else channel_groups(model, example_input)
        self.narrowing = narrowing
        modules = dict(model.named_modules())
        candidates = [name for name, m in modules.items() if isinstance(m, GENERATABLE)]
        # The input dimension of every convolution's and linear layer's weight, generated or not:
        # narrowing by cells sums a weight over a cell along it and averages along any other.
        self.input_dims = {f"{name}.weight": 0 if isinstance(modules[name], nn.ConvTranspose2d) else 1 for name in candidates}
        gen_modules = _select(candidates, generated, "generated", "conv/linear modules")
        for name in gen_modules:
            if getattr(modules[name], "groups", 1) != 1:
                raise ValueError(f"generated: cannot generate {name}: grouped/depthwise convolutions are not supported by the INR")

        by_member = {(m.tensor, m.dim): (g, m) for g in self.groups for m in g.members}
        group_names = [g.name for g in self.groups if g.permutable]
        touched = set()
        self.tensors: list[TensorSpec] = []
        for layer, name in enumerate(gen_modules):
            module = modules[name]
            transposed = isinstance(module, nn.ConvTranspose2d)
            for kind in ("weight", "bias"):
                tensor = getattr(module, kind)
                if tensor is None:
                    continue
                key = f"{name}.{kind}"
                out_dim = 1 if (transposed and kind == "weight") else 0
                out_group = by_member.get((key, out_dim))
                in_group, block = None, 1
                if kind == "weight":
                    found = by_member.get((key, 0 if transposed else 1))
                    if found is not None:
                        group, member = found
                        if member.start != 0 or member.block * group.size != tensor.shape[0 if transposed else 1]:
                            raise ValueError(
                                f"generated: cannot generate {key}: its input channels come from a concatenation "
                                f"(group {group.name!r}); generate the layers on either side instead"
                            )
                        in_group, block = group, member.block
                spec = TensorSpec(
                    name=key,
                    module=name,
                    layer=layer,
                    kind=kind,
                    full_shape=tuple(tensor.shape),
                    transposed=transposed and kind == "weight",  # a bias is (out,) either way
                    out_group=out_group[0].name if out_group and out_group[0].permutable else None,
                    in_group=in_group.name if in_group is not None and in_group.permutable else None,
                    in_block=block,
                )
                touched.update(g for g in (spec.out_group, spec.in_group) if g)
                self.tensors.append(spec)
        self.num_layers = len(gen_modules)
        self.morphable = _select([g for g in group_names if g in touched], morphable, "morphable", "channel groups of the generated tensors")
        sizes = {g.name: g.size for g in self.groups}
        self.full_widths = {name: sizes[name] for name in self.morphable}
        for t in self.tensors:
            if t.out_group in self.full_widths and t.full_out != sizes[t.out_group]:
                # e.g. a Linear whose output is reshaped into channels (a VAE's from_latent): its
                # rows are channels times positions, which the INR does not generate per channel.
                raise ValueError(
                    f"morphable: group {t.out_group!r} cannot morph: {t.name} produces it as {t.full_out} rows for "
                    f"{sizes[t.out_group]} channels; leave it out of morph.morphable"
                )
        # N, the constant that normalises size coordinates: the widest channel count generated.
        self.norm = max(max(t.full_out, t.full_in) for t in self.tensors)
        self.generated_modules = gen_modules

    def widths(self, compression: float) -> dict[str, int]:
        """Channel counts of every morphable group at compression ``gamma`` in [0, 1)."""
        if not 0.0 <= compression < 1.0:
            raise ValueError(f"compression must be in [0, 1), got {compression}")
        return {name: max(1, round((1.0 - compression) * full)) for name, full in self.full_widths.items()}

    def channels(self, spec: TensorSpec, widths: dict[str, int]) -> tuple[int, int]:
        """(out channels, in channels) of a generated tensor at ``widths``."""
        out = widths.get(spec.out_group, spec.full_out) if spec.out_group else spec.full_out
        inp = widths.get(spec.in_group, spec.full_in) if spec.in_group else spec.full_in
        return out, inp

    def frozen_tensors(self, model: nn.Module, widths: dict[str, int]) -> dict[str, torch.Tensor]:
        """Parameters and buffers that are not generated, sliced to ``widths`` where they touch a
        morphable group (e.g. a frozen consumer of a generated layer's channels)."""
        generated = {t.name for t in self.tensors}
        return self.narrow({k: v for k, v in named_tensors(model).items() if k not in generated}, widths)

    def narrow(self, tensors: dict[str, torch.Tensor], widths: dict[str, int]) -> dict[str, torch.Tensor]:
        """``tensors`` that are not generated (frozen or directly trained) cut to ``widths`` the way
        this spec narrows: the first channels of each group, or its cells (``pool_channels``)."""
        if self.narrowing == "first":
            return slice_channels(tensors, self.groups, widths)
        return pool_channels(tensors, self.groups, widths, self.input_dims)

    def run(self, model: nn.Module, widths: dict[str, int], weights: dict[str, torch.Tensor], x: torch.Tensor, **kwargs):
        """Forward ``x`` through ``model`` at ``widths`` with the generated ``weights`` (no in-place writes);
        ``kwargs`` go to the model's ``forward`` (a VAE's ``mode``)."""
        return functional_call(model, {**self.frozen_tensors(model, widths), **weights}, (x,), kwargs)

    def to_dict(self) -> dict:
        return {
            "tensors": [asdict(t) for t in self.tensors],
            "morphable": list(self.morphable),
            "full_widths": dict(self.full_widths),
            "num_layers": self.num_layers,
            "norm": self.norm,
            "groups": [g.to_dict() for g in self.groups],
            "generated_modules": list(self.generated_modules),
            "narrowing": self.narrowing,
            "input_dims": dict(self.input_dims),
        }

    @classmethod
    def from_dict(cls, data: dict) -> MorphSpec:
        spec = cls.__new__(cls)
        spec.tensors = [TensorSpec(**{**t, "full_shape": tuple(t["full_shape"])}) for t in data["tensors"]]
        spec.morphable = list(data["morphable"])
        spec.full_widths = {k: int(v) for k, v in data["full_widths"].items()}
        spec.num_layers = int(data["num_layers"])
        spec.norm = int(data["norm"])
        spec.groups = [ChannelGroup.from_dict(g) for g in data["groups"]]
        spec.generated_modules = list(data["generated_modules"])
        # Specs saved before narrowing existed cut every group to its first channels.
        spec.narrowing = data.get("narrowing", "first")
        spec.input_dims = {k: int(v) for k, v in data.get("input_dims", {}).items()}
        return spec


def shared_parameters(model: nn.Module, spec: MorphSpec, patterns: str | list[str]) -> dict[str, list[int]]:
    """Shapes of the parameters of the modules matching ``patterns`` that the INR does not
    generate (``"all"``: every such module), by state-dict name: the tensors trained directly and
    shared by every width, such as the classifier."""
    generated = set(spec.generated_modules)
    modules = {name: m for name, m in model.named_modules() if name and name not in generated}
    owners = [name for name, m in modules.items() if any(p is not None for p in m._parameters.values())]
    chosen = _select(owners, patterns, "shared", "modules with parameters the INR does not generate") if patterns else []
    return {f"{name}.{k}": list(p.shape) for name in chosen for k, p in modules[name]._parameters.items() if p is not None}


def generated_modules(spec: MorphSpec, patterns: str | list[str], what: str) -> list[str]:
    """The generated modules matching ``patterns`` (none for an empty list), in network order."""
    return _select(spec.generated_modules, patterns, what, "generated modules") if patterns else []


def blocks(spec: MorphSpec) -> list[list[str]]:
    """The generated modules grouped into blocks from input to output: modules with the same parent
    form one block (a residual block's convolutions); a module at the top level is a block alone."""
    grouped: dict[str, list[str]] = {}
    for name in spec.generated_modules:
        parent = name.rpartition(".")[0]
        grouped.setdefault(parent or name, []).append(name)
    return list(grouped.values())


def resize(model: nn.Module, groups: list[ChannelGroup], widths: dict[str, int]) -> nn.Module:
    """A standalone copy of ``model`` keeping the first ``widths[g]`` channels of each named group;
    module attributes (``out_channels``, ``in_features``, ...) follow the new shapes."""
    model = copy.deepcopy(model)
    _assign(model, slice_channels(named_tensors(model), groups, widths))
    return model


def groups_to_narrow(groups: list[ChannelGroup], widths: dict[str, int]) -> list[tuple[ChannelGroup, int]]:
    """The groups that ``widths`` makes narrower than full, with their widths; a group name that
    does not exist or a width outside [1, size] is an error."""
    known = {g.name: g for g in groups}
    unknown = set(widths) - set(known)
    if unknown:
        raise ValueError(f"unknown channel groups {sorted(unknown)}; known: {sorted(known)}")
    narrowed = []
    for name, width in widths.items():
        group = known[name]
        if not 1 <= width <= group.size:
            raise ValueError(f"width of {name} must be in [1, {group.size}], got {width}")
        if width < group.size:
            narrowed.append((group, width))
    return narrowed


def slice_channels(
    tensors: dict[str, torch.Tensor], groups: list[ChannelGroup], widths: dict[str, int]
) -> dict[str, torch.Tensor]:
    """``tensors`` (state-dict names) with the first ``widths[g]`` channels of each named group kept.

    Tensors a group does not touch are returned as they are; slicing is differentiable, so a
    shared full-width parameter can be trained through any of its narrower views.
    """
    out = dict(tensors)
    for group, width in groups_to_narrow(groups, widths):
        keep = torch.arange(width)
        for member in group.members:
            if member.tensor in out:
                t = out[member.tensor]
                out[member.tensor] = t.index_select(member.dim, channel_index(member, keep).to(t.device))
    return out


def cells(full: int, width: int) -> torch.Tensor:
    """(width, full) 0/1 matrix: row k marks the full channels whose centres fall in narrow channel
    k's cell ``[k / width, (k + 1) / width)``, the channels its centred coordinate stands for. Every
    cell holds at least one channel when ``width <= full``."""
    cell = ((torch.arange(full, dtype=torch.float64) + 0.5) * width / full).floor().long()
    matrix = torch.zeros(width, full)
    matrix[cell, torch.arange(full)] = 1.0
    return matrix


def pool_channels(
    tensors: dict[str, torch.Tensor], groups: list[ChannelGroup], widths: dict[str, int], input_dims: dict[str, int]
) -> dict[str, torch.Tensor]:
    """``tensors`` with each named group cut to ``widths[g]`` channels by cells: narrow channel k
    stands for the full channels whose centres fall in ``[k / n, (k + 1) / n)``, the cell the INR's
    centred coordinates give it. A tensor takes the mean of the cell's channels, except along a
    weight's input dimension (``input_dims``), where it takes their sum: the layer then reads one
    channel carrying the cell's mean activation in place of each of them. A network whose channels
    come in identical cells computes the same function narrowed this way. Differentiable, like
    ``slice_channels``."""
    out = dict(tensors)
    for group, width in groups_to_narrow(groups, widths):
        total = cells(group.size, width)
        mean = total / total.sum(1, keepdim=True)
        for member in group.members:
            if member.tensor not in out:
                continue
            t, dim, span = out[member.tensor], member.dim, group.size * member.block
            segment = t.narrow(dim, member.start, span).movedim(dim, 0)
            pool = (total if input_dims.get(member.tensor) == dim else mean).to(device=t.device, dtype=t.dtype)
            pooled = torch.einsum("kf,fbr->kbr", pool, segment.reshape(group.size, member.block, -1))
            pooled = pooled.reshape(width * member.block, *segment.shape[1:]).movedim(0, dim)
            before = t.narrow(dim, 0, member.start)
            after = t.narrow(dim, member.start + span, t.shape[dim] - member.start - span)
            out[member.tensor] = torch.cat([before, pooled, after], dim=dim)
    return out


def _assign(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put resized tensors back into ``model`` and update the shape attributes of its layers."""
    for key, value in tensors.items():
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(value.detach().clone(), requires_grad=owner._parameters[attr].requires_grad)
        else:
            owner._buffers[attr] = value.detach().clone()
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            module.in_channels = module.weight.shape[0]
            module.out_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = (module.weight if module.weight is not None else module.running_mean).shape[0]


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by state-dict name (the tensors a width configuration slices)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _select(candidates: list[str], patterns: str | list[str], what: str, kind: str) -> list[str]:
    """Names among ``candidates`` that match any glob pattern (``"all"`` takes every candidate).
    A pattern that matches nothing is an error that lists the choices: a typo must not silently
    shrink the selection."""
    if patterns == "all":
        return list(candidates)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = []
    for pattern in patterns:
        hits = [c for c in candidates if fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            raise ValueError(f"{what}: {pattern!r} matches none of the {kind}: {', '.join(candidates) or '(none)'}")
        chosen.extend(h for h in hits if h not in chosen)
    return [c for c in candidates if c in chosen]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` keeps BatchNorm layers with running statistics (not folded)."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Within: every BatchNorm of ``model`` normalises with the statistics of the batch it sees, as
    in training, and writes nothing (its running statistics belong to the pretrained widths)."""
    layers = [(m, m.training, m.track_running_stats) for m in model.modules() if isinstance(m, _BatchNorm)]
    try:
        for m, _, _ in layers:
            m.train()
            m.track_running_stats = False
        yield model
    finally:
        for m, training, track in layers:
            m.train(training)
            m.track_running_stats = track


@torch.no_grad()
def batchnorm_statistics(
    model: nn.Module, tensors: dict[str, torch.Tensor], images: torch.Tensor, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Running statistics of every BatchNorm of ``model`` run with ``tensors`` (state-dict names,
    as ``functional_call`` takes them; the model's own for the others), estimated afresh on
    ``images``: the exact average over the batches. A network whose generated weights differ from
    the pretrained ones needs its own statistics at every width. Neither ``model`` nor ``tensors``
    is changed; returns new running_mean, running_var and num_batches_tracked tensors."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats}
    fresh = {}
    for name, layer in layers.items():
        mean = tensors.get(f"{name}.running_mean", layer.running_mean)
        fresh[f"{name}.running_mean"] = torch.zeros_like(mean)
        fresh[f"{name}.running_var"] = torch.ones_like(mean)
        fresh[f"{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=mean.device)
    saved = [(m, m.training, m.momentum) for m in layers.values()]
    try:
        for m in layers.values():
            m.train()
            m.momentum = None  # cumulative average: every batch counts the same
        for batch in images.split(batch_size):
            functional_call(model, {**tensors, **fresh}, (batch,))
    finally:
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum
    return fresh
