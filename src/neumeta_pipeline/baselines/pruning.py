"""Structured pruning of chosen channel groups, without fine-tuning (the paper's pruning baseline).

Channel importance comes from torch-pruning: the L1 or L2 norm of every weight attached to a
channel (the group norm over producers, consumers and BatchNorm), random scores, first-order
Taylor (|w * dL/dw|) or the diagonal-Fisher Hessian proxy of Optimal Brain Damage (w^2 E[g^2]),
the last two from gradients on calibration images. For each group the least important channels
are removed until it has the requested width; every other channel of the network is untouched.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from ..neumeta.graph import ChannelGroup
from ..neumeta.morph import groups_to_narrow
from ..neumeta.tasks import TaskKind

IMPORTANCES = ("l1", "l2", "random", "taylor", "hessian")
NEEDS_GRADIENTS = ("taylor", "hessian")


# torch-pruning is imported where it is used, not here: it pulls in timm and torchvision's
# detection models (about 10 s on a 2-core CPU), and every `kedro` command reads IMPORTANCES
# through the parameter schemas.


@functools.cache
def _summed_hessian_importance() -> type:
    import torch_pruning as tp

    class SummedHessianImportance(tp.importance.GroupHessianImportance):
        # torch-pruning 1.6.1 stores the running sums under the parameter but looks them up by
        # name, so each sample overwrites the last instead of adding to it; this keeps the real sum.
        def accumulate_grad(self, model: nn.Module) -> None:
            for param in model.parameters():
                if param.grad is not None:
                    self._accu_grad[param] = self._accu_grad.get(param, 0.0) + param.grad.detach().pow(2)
                    self._counter[param] = self._counter.get(param, 0) + 1

    return SummedHessianImportance


def prune_channels(
    model: nn.Module,
    groups: list[ChannelGroup],
    widths: dict[str, int],
    importance: str,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    kind: TaskKind = TaskKind(),
) -> nn.Module:
    """A copy of ``model`` in which each group of ``widths`` keeps its most important channels.

    ``images`` trace the network (and, with ``labels``, give Taylor and Hessian their gradients;
    Hessian takes one backward pass per image) through ``kind``'s training loss: cross-entropy
    (label maps work too, void pixels ignored) or a VAE's negative ELBO. Kept channels stay in
    their original order.
    """
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; use one of {IMPORTANCES}")
    if importance in NEEDS_GRADIENTS and labels is None:
        raise ValueError(f"{importance} importance needs labelled calibration images")
    import torch_pruning as tp

    narrowed = groups_to_narrow(groups, widths)
    model = copy.deepcopy(model).eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=images[:1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a VAE's loss draws posterior noise: the same draws on every run
        scorer = _scorer(importance, model, images, labels, kind)
    generator = torch.Generator().manual_seed(seed)

    # Score every group on the intact network first: pruning one group changes other layers'
    # parameter objects (and so the gradients the scorers read), never another group's indices.
    plan = []
    for group, width in narrowed:
        producer, prune_fn = _producer(model, group)
        if importance == "random":
            scores = torch.rand(group.size, generator=generator)
        else:
            scores = scorer(graph.get_pruning_group(producer, prune_fn, idxs=list(range(group.size))))
        if scores is None or scores.numel() != group.size:
            raise RuntimeError(f"torch-pruning scored {group.name} with {None if scores is None else scores.numel()} values, expected {group.size}")
        keep = set(torch.argsort(scores.float().cpu(), descending=True, stable=True)[:width].tolist())
        plan.append((producer, prune_fn, [i for i in range(group.size) if i not in keep]))
    for producer, prune_fn, drop in plan:
        graph.get_pruning_group(producer, prune_fn, idxs=drop).prune()
    for param in model.parameters():
        param.grad = None
    return model.eval()


def _scorer(importance: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, kind: TaskKind):
    import torch_pruning as tp

    if importance in ("l1", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=1 if importance == "l1" else 2)
    if importance == "random":
        return None  # drawn from the seeded generator above, not torch's global stream
    model.zero_grad(set_to_none=True)
    if importance == "taylor":
        kind.loss(kind.output(model, images), images, labels).backward()
        return tp.importance.GroupTaylorImportance()
    scorer = _summed_hessian_importance()()
    for x, y in zip(images, labels):
        model.zero_grad(set_to_none=True)
        kind.loss(kind.output(model, x[None]), x[None], y[None]).backward()
        scorer.accumulate_grad(model)
    return scorer


def _producer(model: nn.Module, group: ChannelGroup) -> tuple[nn.Module, object]:
    """A conv or linear layer whose output channels are the group, with torch-pruning's function
    for removing them (any producer gives the whole coupled group)."""
    import torch_pruning as tp

    for member in group.members:
        module_name, _, attr = member.tensor.rpartition(".")
        module = model.get_submodule(module_name)
        if attr == "weight" and member.start == 0 and isinstance(module, nn.ConvTranspose2d):
            if member.dim == 1:  # a transposed conv keeps its output channels on dim 1
                return module, tp.prune_conv_out_channels
            continue
        if attr == "weight" and member.dim == 0 and member.start == 0:
            if isinstance(module, nn.Conv2d):
                return module, tp.prune_conv_out_channels
            if isinstance(module, nn.Linear):
                return module, tp.prune_linear_out_channels
    raise ValueError(f"channel group {group.name!r} has no conv or linear layer producing it; it cannot be pruned")
