"""BatchNorm re-parameterisation: fold an eval-mode BatchNorm into the conv/linear layer before it.

With running statistics, BN is the per-channel affine map ``y = x * s + t`` with
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``; applied to a layer's output channel it
scales that channel's weights by ``s`` and turns its bias ``b`` into ``b * s + t``. NeuMeta only
generates conv/linear weights, so BN has to disappear first.

Which BN follows which layer is read from a ``torch.fx`` trace. The decision depends on the
architecture only (never on weight values), so fusing a freshly built model of the same
architecture gives the same state-dict keys and shapes: fused checkpoints load with
``strict=True`` into ``fuse_batchnorm(build_model(...))``.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter

import torch
import torch.fx
from torch import nn

__all__ = ["fuse_batchnorm", "fusable_pairs"]

_BN_FOR = {
    nn.BatchNorm1d: (nn.Conv1d, nn.ConvTranspose1d, nn.Linear),
    nn.BatchNorm2d: (nn.Conv2d, nn.ConvTranspose2d),
    nn.BatchNorm3d: (nn.Conv3d, nn.ConvTranspose3d),
}
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _settings(model: nn.Module) -> dict:
    """``forward``'s arguments after the input that have defaults (a VAE's ``mode``), held at those
    defaults: torch.fx would trace them as inputs, and a branch on one cannot be traced."""
    arguments = list(inspect.signature(model.forward).parameters.values())[1:]
    return {a.name: a.default for a in arguments if a.default is not inspect.Parameter.empty}


def fusable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(producer, batchnorm)`` module paths where the BN reads the producer's output and nothing
    else reads it. Raises ``RuntimeError`` if the model cannot be traced by ``torch.fx``.

    Linear followed by BatchNorm1d is taken to act on (N, features) activations.
    """
    try:
        graph = torch.fx.symbolic_trace(model, concrete_args=_settings(model) or None).graph
    except Exception as exc:
        raise RuntimeError(
            f"fuse_batchnorm needs a torch.fx-traceable model; tracing {type(model).__name__} failed with "
            f"{type(exc).__name__}: {exc}. Make the forward free of data-dependent control flow, or "
            "fold the BatchNorm layers by hand."
        ) from exc
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = modules[node.target]
        # Exact types: a subclass may transform its weight in forward (e.g. weight
        # standardisation), which would undo the folded scale.
        producers = _BN_FOR.get(type(bn))
        if producers is None or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        layer = modules[src.target]
        if type(layer) not in producers:
            continue
        # A second reader of the layer's output (or a second call of either module) would see
        # the folded values too.
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue  # no running statistics: eval mode normalises with batch statistics
        if _out_channels(layer) != bn.num_features:
            continue
        pairs.append((src.target, node.target))
    return pairs


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every BatchNorm that directly and solely follows a
    Conv/ConvTranspose/Linear folded into it (running statistics), the BN replaced by
    ``nn.Identity()`` at the same path, and a bias added to layers that had none."""
    fused = copy.deepcopy(model)
    modules = dict(fused.named_modules())
    for layer_name, bn_name in fusable_pairs(fused):
        _fold(modules[layer_name], modules[bn_name])
        parent, _, child = bn_name.rpartition(".")
        setattr(fused.get_submodule(parent) if parent else fused, child, nn.Identity())
    return fused


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return layer.out_channels


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    weight = layer.weight
    f64 = torch.float64
    scale = torch.rsqrt(bn.running_var.to(f64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(f64)
    shift = -bn.running_mean.to(f64) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(f64)
    w = weight.to(f64)
    if isinstance(layer, _TRANSPOSED):
        # (in, out / groups, k...): output channel g * (out / groups) + j lives at [group g rows, j].
        g = layer.groups
        shape = w.shape
        w = w.reshape(g, shape[0] // g, shape[1], *shape[2:])
        w = w * scale.reshape(g, 1, shape[1], *([1] * (len(shape) - 2)))
        w = w.reshape(shape)
    else:
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    bias = layer.bias.to(f64) * scale + shift if layer.bias is not None else shift
    weight.copy_(w.to(weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_(bias.to(layer.bias.dtype))
    else:
        layer.bias = nn.Parameter(bias.to(device=weight.device, dtype=weight.dtype), requires_grad=weight.requires_grad)
