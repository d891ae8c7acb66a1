"""Channel groups: every (tensor, dim) slice of a network that must follow one channel permutation.

The model is run once on an example input under a ``TorchFunctionMode`` that sees every torch
call with real tensors (so shape-dependent Python control flow is fine, unlike symbolic tracing).
Each dimension of each live tensor carries a *label*: an ordered list of segments, each saying
"these indices along this dim are channels c0..c0+count of channel set N, ``block`` consecutive
indices per channel". Channel sets are union-find nodes; an op that couples two axes (a residual
add, a conv reading its input channels, a BatchNorm) unions their sets, and every parameter or
buffer slice that touches a set becomes a ``Member`` of it.

Ops are whitelisted. Anything else that touches a labelled axis marks that channel set as not
permutable with the op's name as the reason, so an unknown op can make a group unusable but never
silently wrong. The network's own input and output axes are marked the same way.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["Member", "ChannelGroup", "channel_groups", "channel_index"]


@dataclass(frozen=True)
class Member:
    """One tensor slice coupled to a group: channel ``c`` owns indices
    ``[start + c * block, start + (c + 1) * block)`` along ``dim`` of state-dict entry ``tensor``."""

    tensor: str
    dim: int
    start: int = 0
    block: int = 1


@dataclass
class ChannelGroup:
    """Channels that share one permutation (and one width) across all of ``members``."""

    name: str
    size: int
    members: list[Member]
    permutable: bool = True
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": self.size,
            "members": [{"tensor": m.tensor, "dim": m.dim, "start": m.start, "block": m.block} for m in self.members],
            "permutable": self.permutable,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ChannelGroup:
        return cls(
            name=str(d["name"]),
            size=int(d["size"]),
            members=[
                Member(str(m["tensor"]), int(m["dim"]), int(m.get("start", 0)), int(m.get("block", 1)))
                for m in d["members"]
            ],
            permutable=bool(d.get("permutable", True)),
            reason=str(d.get("reason", "")),
        )


def channel_index(member: Member, channels: torch.Tensor) -> torch.Tensor:
    """LongTensor of indices along ``member.dim`` for the given ordered channel ids (expanding blocks)."""
    channels = torch.as_tensor(channels, dtype=torch.long)
    offsets = torch.arange(member.block, dtype=torch.long, device=channels.device)
    return (member.start + channels[:, None] * member.block + offsets[None, :]).reshape(-1)


def channel_groups(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> list[ChannelGroup]:
    """Trace ``model`` on ``example_input`` (a tensor, or a tuple of positional inputs) and return its
    channel groups, ordered by their first producing module in ``model.named_modules()`` order.

    Only channel sets produced by a layer (conv, linear, conv-transpose, embedding) are returned;
    axes without a producer (the network input) are never permuted and are left out. The model is
    run in eval mode under ``torch.no_grad()`` and its training flags are restored afterwards.
    """
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    modes = {m: m.training for m in model.modules()}
    tracer = _Tracer(model)
    try:
        model.eval()
        with torch.no_grad():
            for x in inputs:
                if isinstance(x, torch.Tensor):
                    tracer.label_input(x)
            with tracer:
                out = model(*inputs)
    finally:
        for m, training in modes.items():
            m.training = training
    tracer.label_output(out)
    return tracer.groups()


# --------------------------------------------------------------------------------------------
# Union-find over channel sets.


class _Node:
    __slots__ = ("parent", "unit", "size", "members", "reasons", "producers", "fresh", "origin", "nodes")

    def __init__(self, size: int, origin: tuple[str, int] | None = None) -> None:
        self.parent: _Node = self
        # Original channels of this node per channel of its root: grows when the set is coarsened
        # (channels bundled into blocks, e.g. a Linear's rows viewed as (C, H, W)).
        self.unit = 1
        self.size = size
        self.members: list[Member] = []
        self.reasons: list[str] = []
        self.producers: set[str] = set()
        # A parameter axis never used yet: it may still be re-bound to a segmented label.
        self.fresh = origin is not None
        self.origin = origin
        self.nodes: list[_Node] = [self]


def _find(node: _Node) -> _Node:
    root = node
    while root.parent is not root:
        root = root.parent
    while node.parent is not root:
        node.parent, node = root, node.parent
    return root


# A segment: (node or None, c0, count, block, unit snapshot of node when made). None = indices
# without channel meaning (zero padding, a constant). A dim label is a tuple of segments or None.
Seg = tuple
Label = tuple | None


def _mark(root: _Node, reason: str) -> None:
    # A refused parameter axis must be unioned, not re-bound, on later use, so its reason spreads.
    root.fresh = False
    if reason not in root.reasons:
        root.reasons.append(reason)


def _coarsen(root: _Node, factor: int) -> None:
    root.size //= factor
    root.members = [replace(m, block=m.block * factor) for m in root.members]
    for n in root.nodes:
        n.unit *= factor


def _union(a: _Node, b: _Node) -> _Node:
    a, b = _find(a), _find(b)
    if a is b:
        return a
    if a.size != b.size:  # callers only union equal sizes; this is a guard, not a code path
        raise AssertionError(f"union of channel sets of sizes {a.size} and {b.size}")
    if len(a.nodes) < len(b.nodes):
        a, b = b, a
    b.parent = a
    a.nodes.extend(b.nodes)
    a.members.extend(b.members)
    for r in b.reasons:
        _mark(a, r)
    a.producers |= b.producers
    a.fresh = False
    b.nodes, b.members, b.reasons = [], [], []
    return a


def _resolve(seg: Seg) -> tuple[_Node | None, int, int, int]:
    """Segment in current units of its root: (root, c0, count, block)."""
    node, c0, count, block, unit = seg
    if node is None:
        return None, 0, count, block
    root = _find(node)
    f = node.unit // unit
    if c0 % f or count % f:
        _mark(root, "a slice of this channel axis no longer matches its channel blocks")
        return root, c0 // f, max(count // f, 1), block * f
    return root, c0 // f, count // f, block * f


def _seg(root: _Node | None, c0: int, count: int, block: int) -> Seg:
    if root is None:
        return (None, 0, count * block, 1, 1)
    return (root, c0, count, block, root.unit)


def _roots(label: Label) -> list[_Node]:
    out: list[_Node] = []
    for s in label or ():
        r = _resolve(s)[0]
        if r is not None and r not in out:
            out.append(r)
    return out


def _norm(label: Label) -> Label:
    if label is None or all(s[0] is None for s in label):
        return None
    return tuple(label)


def _full(root: _Node, c0: int, count: int) -> bool:
    return c0 == 0 and count == root.size


# --------------------------------------------------------------------------------------------
# Op classification (by name: the same op is reachable as torch.x, Tensor.x, F.x, aten.x).

_ELEMENTWISE = set(
    """add sub subtract mul multiply div divide true_divide truediv floor_divide floordiv remainder mod fmod
    pow float_power maximum minimum fmax fmin where clamp clip clamp_min clamp_max lerp addcmul addcdiv
    atan2 hypot copysign eq ne lt le gt ge greater less greater_equal less_equal not_equal logical_and
    logical_or logical_xor logical_not bitwise_and bitwise_or bitwise_xor bitwise_not and or xor invert
    masked_fill copy neg negative positive pos abs absolute exp exp2 expm1 log log2 log10 log1p sqrt rsqrt
    square reciprocal sin cos tan asin acos atan sinh cosh asinh acosh atanh tanh sigmoid logit sign sgn
    floor ceil round trunc frac erf erfc erfinv relu relu6 leaky_relu elu selu celu gelu silu mish
    hardswish hardsigmoid hardtanh softplus softsign softshrink hardshrink tanhshrink threshold logsigmoid
    rrelu nan_to_num isnan isinf isfinite dropout dropout1d dropout2d dropout3d alpha_dropout
    feature_alpha_dropout feature_dropout contiguous clone detach float double half bfloat16 int long bool
    cpu cuda requires_grad_ zero fill data softmax log_softmax softmin normalize zeros_like ones_like
    empty_like full_like rand_like randn_like""".split()
)
# Only the first tensor argument matters (the others give dtype/device).
_FIRST_ONLY = {"to", "type", "type_as", "new_tensor"}
_REDUCE = set(
    "sum mean nansum nanmean amax amin prod std var logsumexp norm vector_norm any all count_nonzero max min "
    "std_mean var_mean aminmax".split()
)
_INDEX_REDUCE = {"argmax", "argmin"}
_SPATIAL = {
    **{
        f"{p}{k}d": k
        for k in (1, 2, 3)
        for p in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "lp_pool", "fractional_max_pool")
    },
    **{f"{p}{k}d_with_indices": k for k in (1, 2, 3) for p in ("max_pool", "adaptive_max_pool", "fractional_max_pool")},
    **{name: -1 for name in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear")},
    **{f"{p}upsample_{mode}": -1 for p in ("", "_") for mode in (
        "nearest1d", "nearest2d", "nearest3d", "nearest_exact1d", "nearest_exact2d", "nearest_exact3d",
        "linear1d", "bilinear2d", "bicubic2d", "trilinear3d")},
}
_RESHAPE = set("view reshape flatten unflatten squeeze unsqueeze view_as reshape_as ravel".split())
_TRANSPOSE = set("permute transpose swapaxes swapdims movedim moveaxis t T mT H mH adjoint".split())
_EXPAND = {"expand", "expand_as", "broadcast_to"}
_SPLIT = {"split", "chunk", "tensor_split", "split_with_sizes", "unsafe_split", "unsafe_chunk"}
# Fresh constant tensors that merely borrow dtype/device from their input.
_NEW = {"new_zeros", "new_ones", "new_empty", "new_full"}
_ESCAPES = {"setitem", "numpy", "tolist", "array", "item"}
_CONV = {"conv1d": 1, "conv2d": 2, "conv3d": 3}
_CONVT = {"conv_transpose1d": 1, "conv_transpose2d": 2, "conv_transpose3d": 3}


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", "") or ""
    if name in ("__get__", "__set__"):  # Tensor properties such as .T, .data
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        if core in _ELEMENTWISE or core in ("getitem", "setitem", "matmul"):
            return core
        if core[:1] in ("r", "i") and core[1:] in _ELEMENTWISE:
            return core[1:] + ("_" if core[0] == "i" else "")
        return core
    return name


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _dims(dim: Any, ndim: int) -> list[int] | None:
    if dim is None or isinstance(dim, bool) or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return None
    if isinstance(dim, (tuple, list)):
        return [operator.index(d) % ndim for d in dim]
    return [operator.index(dim) % ndim]


# --------------------------------------------------------------------------------------------


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.params: dict[int, tuple[str, torch.Tensor]] = {}
        for key, t in model.state_dict(keep_vars=True).items():
            self.params.setdefault(id(t), (key, t))
        self.module_order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        self.registry: dict[tuple[str, int], Label] = {}
        # id -> (tensor kept alive so ids stay unique, label per dim, taint roots)
        self.records: dict[int, tuple[torch.Tensor, tuple[Label, ...], tuple[_Node, ...]]] = {}
        self.all_nodes: list[_Node] = []

    # ---- nodes and labels ------------------------------------------------------------------

    def _new(self, size: int, origin: tuple[str, int] | None = None, reason: str = "") -> _Node:
        node = _Node(size, origin)
        if reason:
            node.reasons.append(reason)
        self.all_nodes.append(node)
        return node

    def _opaque(self, size: int, reason: str) -> Label:
        if size <= 1:
            return None
        return (_seg(self._new(size, reason=reason), 0, size, 1),)

    def label_input(self, x: torch.Tensor) -> None:
        labels = tuple(self._opaque(s, "coupled to the network's input axis") for s in x.shape)
        self.records[id(x)] = (x, labels, ())

    def label_output(self, out: Any) -> None:
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                labels, taint = self._label(t), self._taint(t)
                for lab in labels:
                    for r in _roots(lab):
                        _mark(r, "coupled to the network's output axis")
                for r in taint:
                    _mark(r, "channel indices (argmax/max indices) reach the output")

    def _param_label(self, key: str, t: torch.Tensor) -> tuple[Label, ...]:
        labels = []
        for d, size in enumerate(t.shape):
            if size <= 1:
                labels.append(None)
                continue
            if (key, d) not in self.registry:
                node = self._new(size, origin=(key, d))
                node.members.append(Member(key, d))
                self.registry[(key, d)] = (_seg(node, 0, size, 1),)
            labels.append(self.registry[(key, d)])
        return tuple(labels)

    def _label(self, t: torch.Tensor) -> tuple[Label, ...]:
        rec = self.records.get(id(t))
        if rec is not None and rec[0] is t:
            return rec[1]
        p = self.params.get(id(t))
        if p is not None and p[1] is t:
            return self._param_label(p[0], t)
        # A tensor made outside any traced op (attribute, non-persistent buffer): a constant.
        return (None,) * t.dim()

    def _taint(self, t: torch.Tensor) -> tuple[_Node, ...]:
        rec = self.records.get(id(t))
        return rec[2] if rec is not None and rec[0] is t else ()

    def _set(self, t: torch.Tensor, labels, taint: tuple[_Node, ...] = ()) -> None:
        labels = tuple(None if size <= 1 else _norm(lab) for lab, size in zip(labels, t.shape))
        if len(labels) != t.dim():
            raise AssertionError("label rank mismatch")
        for lab in labels:
            for r in _roots(lab):
                r.fresh = False
        self.records[id(t)] = (t, labels, tuple(taint))

    # ---- coupling --------------------------------------------------------------------------

    def _rebind(self, fresh: _Node, target: Label, why: str) -> None:
        """A parameter axis seen for the first time takes the segments of what it meets."""
        key, dim = fresh.origin
        fresh.members, fresh.fresh = [], False
        offset = 0
        for s in target:
            root, c0, count, block = _resolve(s)
            if root is not None:
                if _full(root, c0, count):
                    root.members.append(Member(key, dim, offset, block))
                else:
                    _mark(root, f"part of this channel axis is used by {key} ({why})")
            offset += count * block
        self.registry[(key, dim)] = target

    def _couple(self, a: Label, b: Label, why: str) -> Label:
        if a is None and b is None:
            return None
        if a is None or b is None:
            lab = a if b is None else b
            for r in _roots(lab):
                _mark(r, f"combined by {why} with a tensor whose axis has no channel identity (a constant?)")
            return lab
        ra, rb = [_resolve(s) for s in a], [_resolve(s) for s in b]
        if len(ra) == 1 and len(rb) == 1:
            (na, ca, ka, ba), (nb, cb, kb, bb) = ra[0], rb[0]
            if na is not None and nb is not None and ba == bb and ka == kb and _full(na, ca, ka) and _full(nb, cb, kb):
                _union(na, nb)
                return a
        for mine, lab in ((ra, b), (rb, a)):
            if len(mine) == 1 and mine[0][0] is not None:
                node, c0, count, block = mine[0]
                if node.fresh and block == 1 and _full(node, c0, count):
                    self._rebind(node, lab, why)
                    return lab
        self._align(ra, rb, why)
        return a

    def _align(self, ra: list, rb: list, why: str) -> None:
        i = j = 0
        while i < len(ra) and j < len(rb):
            la, lb = ra[i][2] * ra[i][3], rb[j][2] * rb[j][3]
            if la == lb:
                self._pair(ra[i], rb[j], why)
                i, j = i + 1, j + 1
                continue
            # Boundaries disagree: everything up to the next common boundary is entangled.
            bad = [ra[i], rb[j]]
            while la != lb and i < len(ra) and j < len(rb):
                if la < lb:
                    i += 1
                    if i < len(ra):
                        la += ra[i][2] * ra[i][3]
                        bad.append(ra[i])
                else:
                    j += 1
                    if j < len(rb):
                        lb += rb[j][2] * rb[j][3]
                        bad.append(rb[j])
            for s in bad:
                if s[0] is not None:
                    _mark(s[0], f"{why} mixes channel ranges that do not line up")
            i, j = i + 1, j + 1

    def _pair(self, sa: tuple, sb: tuple, why: str) -> None:
        (na, ca, ka, ba), (nb, cb, kb, bb) = sa, sb
        if na is None and nb is None:
            return
        if na is None or nb is None:
            _mark(na or nb, f"combined by {why} with indices that have no channel identity")
            return
        if na is nb and (ca, ka, ba) == (cb, kb, bb):
            return
        if ba != bb:
            # A coarser side (one channel = many indices) forces the finer side into blocks.
            (nf, cf, kf, bf), (nc, cc, kc, bc) = (sa, sb) if ba < bb else (sb, sa)
            factor = bc // bf
            if bc % bf == 0 and _full(nf, cf, kf) and kf % factor == 0 and _full(nc, cc, kc):
                _coarsen(nf, factor)
                _union(nf, nc)
                return
        elif ka == kb and _full(na, ca, ka) and _full(nb, cb, kb):
            _union(na, nb)
            return
        for n in (na, nb):
            _mark(n, f"{why} couples only part of this channel axis")

    # ---- label algebra ---------------------------------------------------------------------

    def _slice(self, label: Label, lo: int, hi: int, why: str) -> Label:
        if label is None or hi <= lo:
            return None
        out, offset = [], 0
        for s in label:
            root, c0, count, block = _resolve(s)
            length = count * block
            a, b = max(lo, offset), min(hi, offset + length)
            if a < b:
                if root is None:
                    out.append(_seg(None, 0, b - a, 1))
                elif (a - offset) % block or (b - offset) % block:
                    _mark(root, f"{why} cuts through a channel block")
                    out.extend(self._opaque(b - a, f"{why} cuts through a channel block") or ())
                else:
                    sub = (c0 + (a - offset) // block, (b - a) // block)
                    if not _full(root, *sub):
                        _mark(root, f"channel axis sliced by {why}")
                    out.append(_seg(root, sub[0], sub[1], block))
            offset += length
        return _norm(tuple(out))

    def _scale_block(self, label: Label, factor: int) -> Label:
        if label is None:
            return None
        out = []
        for s in label:
            root, c0, count, block = _resolve(s)
            if root is None:
                out.append(_seg(None, 0, count * block * factor, 1))
            else:
                out.append(_seg(root, c0, count, block * factor))
        return tuple(out)

    def _div_block(self, label: Label, tail: int, why: str) -> Label | bool:
        """Label of the leading dim when this axis is viewed as (leading, tail); False if impossible."""
        out = []
        for s in label:
            root, c0, count, block = _resolve(s)
            if root is None:
                if (count * block) % tail:
                    return False
                out.append(_seg(None, 0, count * block // tail, 1))
            elif block % tail == 0:
                out.append(_seg(root, c0, count, block // tail))
            elif tail % block == 0 and _full(root, c0, count) and count % (tail // block) == 0:
                _coarsen(root, tail // block)
                out.append(_seg(root, 0, root.size, 1))
            else:
                return False
        return tuple(out)

    def _refuse(self, labels, reason: str) -> None:
        for lab in labels:
            for r in _roots(lab):
                _mark(r, reason)

    # ---- dispatch --------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        name = _op_name(func)
        if not outs:
            # Values leaving torch (numpy, lists) or written into part of a tensor can no longer be
            # followed; shape queries (size, dim, shape) are harmless and fall through.
            if name in _ESCAPES:
                self._refuse([lab for t in ins for lab in self._label(t)], f"values leave the traced graph via {name}")
            return out
        for t in ins:
            for r in self._taint(t):
                _mark(r, f"channel indices (argmax/max indices) consumed by {name}")
        try:
            handled = self._handle(name, func, args, kwargs, out, outs, ins)
        except Exception as exc:  # an op we thought we understood surprised us: refuse, loudly
            handled = False
            name = f"{name} ({type(exc).__name__}: {exc})"
        if not handled:
            reason = f"passes through unsupported op {name!r}"
            in_labels = [lab for t in ins for lab in self._label(t)]
            self._refuse(in_labels, reason)
            touched = any(lab is not None for lab in in_labels)
            for t in outs:
                if touched:
                    self._set(t, [self._opaque(s, reason) for s in t.shape])
                else:
                    self._set(t, [None] * t.dim())
        return out

    def _handle(self, name, func, args, kwargs, out, outs, ins) -> bool:
        base = name[:-1] if name.endswith("_") and name[:-1] in _ELEMENTWISE else name
        if base in _ELEMENTWISE:
            return self._elementwise(name, ins, outs)
        if name in _NEW:
            for t in outs:
                self._set(t, [None] * t.dim())
            return True
        if name in _FIRST_ONLY:
            x = args[0]
            if len(outs) != 1 or outs[0].shape != x.shape:
                return False
            self._set(outs[0], self._label(x), self._taint(x))
            return True
        if name in _CONV:
            return self._conv(args, kwargs, outs, _CONV[name], transposed=False)
        if name in _CONVT:
            return self._conv(args, kwargs, outs, _CONVT[name], transposed=True)
        if name == "linear":
            return self._linear(args, kwargs, outs)
        if name in ("batch_norm", "instance_norm"):
            return self._channel_norm(name, args, kwargs, outs)
        if name in ("layer_norm", "rms_norm"):
            return self._layer_norm(name, args, kwargs, outs)
        if name == "group_norm":
            return self._group_norm(args, kwargs, outs)
        if name == "prelu":
            x, w = args[0], _arg(args, kwargs, 1, "weight")
            lab = list(self._label(x))
            if w.numel() > 1:
                lab[1] = self._couple(lab[1], self._label(w)[0], "prelu")
            self._set(outs[0], lab)
            return True
        if name == "embedding":
            idx, w = args[0], _arg(args, kwargs, 1, "weight")
            wl = self._label(w)
            self._producer(wl[1], w)
            self._set(outs[0], self._label(idx) + (wl[1],))
            return True
        if name in _REDUCE or name in _INDEX_REDUCE:
            return self._reduce(name, args, kwargs, outs, ins)
        if name in _SPATIAL:
            return self._spatial(name, args, outs)
        if name == "pad":
            return self._pad(args, kwargs, outs)
        if name in _RESHAPE:
            x = args[0]
            if len(outs) != 1 or outs[0].numel() != x.numel():
                return False
            new = self._reshape(self._label(x), tuple(x.shape), tuple(outs[0].shape), name)
            self._set(outs[0], new, self._taint(x))
            return True
        if name in _TRANSPOSE:
            return self._transpose(func, args, kwargs, outs)
        if name in _EXPAND:
            x = args[0]
            lab, shape = self._label(x), outs[0].shape
            pad = len(shape) - x.dim()
            new = [lab[d] if x.shape[d] == shape[pad + d] else None for d in range(x.dim())]
            self._set(outs[0], [None] * pad + new, self._taint(x))
            return True
        if name in ("cat", "concat", "concatenate", "stack"):
            return self._cat(name, args, kwargs, outs)
        if name in _SPLIT or name in ("unbind", "narrow", "select"):
            return self._split(name, args, kwargs, outs)
        if name == "getitem":
            return self._getitem(args[0], args[1], outs)
        return False

    # ---- handlers --------------------------------------------------------------------------

    def _producer(self, label: Label, weight: torch.Tensor) -> None:
        p = self.params.get(id(weight))
        key = p[0] if p is not None else None
        for s in label or ():
            root = _resolve(s)[0]
            if root is None:
                continue
            origin = key or (s[0].origin[0] if s[0].origin else None)
            if origin is not None:
                root.producers.add(origin.rsplit(".", 1)[0] if "." in origin else "")

    def _elementwise(self, name: str, ins: list, outs: list) -> bool:
        shape = outs[0].shape
        for t in outs:
            if t.shape != shape:
                return False
        for t in ins:
            if t.dim() > len(shape):
                return False
            if any(s not in (1, shape[len(shape) - t.dim() + d]) for d, s in enumerate(t.shape)):
                return False
        labels = []
        for d in range(len(shape)):
            cands = []
            for t in ins:
                k = d - (len(shape) - t.dim())
                if k >= 0 and t.shape[k] == shape[d] and shape[d] > 1:
                    cands.append(self._label(t)[k])
            lab = cands[0] if cands else None
            for other in cands[1:]:
                lab = self._couple(lab, other, name)
            labels.append(lab)
        taint = tuple(r for t in ins for r in self._taint(t))
        for t in outs:
            self._set(t, labels, taint)
        return True

    def _conv(self, args, kwargs, outs, nsp: int, transposed: bool) -> bool:
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        b = _arg(args, kwargs, 2, "bias")
        groups = _arg(args, kwargs, 6, "groups", 1)  # same slot for conv and conv_transpose
        cdim = x.dim() - nsp - 1
        xl, wl = self._label(x), self._label(w)
        why = "conv_transpose" if transposed else "conv"
        self._refuse(xl[cdim + 1 :], f"used as a spatial axis by {why}")
        cin = x.shape[cdim]
        if groups == 1:
            # Conv weights are (out, in, k...); transposed ones are (in, out, k...).
            in_dim, out_dim = (0, 1) if transposed else (1, 0)
            self._couple(xl[cdim], wl[in_dim], why)
            out_c = wl[out_dim]
            self._producer(out_c, w)
        elif groups == cin and (w.shape[0] == cin if transposed else w.shape[1] == 1):
            # Depthwise: output channel o reads only input channel o // m, so each input channel
            # carries its m output channels along as one block; no new channels are produced.
            m = w.shape[1] if transposed else w.shape[0] // cin
            out_c = self._scale_block(xl[cdim], m)
            if transposed:
                self._couple(xl[cdim], wl[0], why)
            else:
                out_c = self._couple(out_c, wl[0], why)
        else:
            reason = f"grouped {why} (groups={groups}) ties channels to fixed groups"
            self._refuse([xl[cdim]], reason)
            out_c = self._opaque(outs[0].shape[cdim], reason) if transposed else wl[0]
            self._refuse([out_c], reason)
            self._producer(out_c, w)
        if b is not None:
            out_c = self._couple(out_c, self._label(b)[0], f"{why} bias")
        self._set(outs[0], list(xl[:cdim]) + [out_c] + [None] * nsp)
        return True

    def _linear(self, args, kwargs, outs) -> bool:
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        b = _arg(args, kwargs, 2, "bias")
        xl, wl = self._label(x), self._label(w)
        self._couple(xl[-1], wl[1], "linear")
        out_c = wl[0]
        self._producer(out_c, w)
        if b is not None:
            out_c = self._couple(out_c, self._label(b)[0], "linear bias")
        self._set(outs[0], list(xl[:-1]) + [out_c])
        return True

    def _channel_norm(self, name, args, kwargs, outs) -> bool:
        x = args[0]
        lab = list(self._label(x))
        if x.dim() < 2:
            return False
        for t in list(args[1:5]) + [kwargs.get(k) for k in ("running_mean", "running_var", "weight", "bias")]:
            if isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == x.shape[1] and t.shape[0] > 1:
                lab[1] = self._couple(lab[1], self._label(t)[0], name)
        self._set(outs[0], lab)
        return True

    def _layer_norm(self, name, args, kwargs, outs) -> bool:
        x = args[0]
        shape = tuple(_arg(args, kwargs, 1, "normalized_shape"))
        lab = list(self._label(x))
        k = len(shape)
        candidates = list(args[2:4]) + [kwargs.get("weight"), kwargs.get("bias")]
        tensors = [t for t in candidates if isinstance(t, torch.Tensor)]
        for t in tensors:
            tl = self._label(t)
            for i in range(k):
                lab[x.dim() - k + i] = self._couple(lab[x.dim() - k + i], tl[i], name)
        self._set(outs[0], lab)
        return True

    def _group_norm(self, args, kwargs, outs) -> bool:
        x = args[0]
        g = _arg(args, kwargs, 1, "num_groups")
        lab = list(self._label(x))
        for t in list(args[2:4]) + [kwargs.get("weight"), kwargs.get("bias")]:
            if isinstance(t, torch.Tensor) and t.numel() > 1:
                lab[1] = self._couple(lab[1], self._label(t)[0], "group_norm")
        if g not in (1, x.shape[1]):
            self._refuse([lab[1]], f"group_norm with {g} groups ties channels to fixed groups")
        self._set(outs[0], lab)
        return True

    def _reduce(self, name, args, kwargs, outs, ins) -> bool:
        x = args[0]
        if name in ("max", "min") and len(ins) > 1:
            return self._elementwise(name, ins, outs)
        dim_index = 2 if name in ("norm", "vector_norm") else 1
        dims = _dims(_arg(args, kwargs, dim_index, "dim", kwargs.get("axis")), max(x.dim(), 1))
        lab = self._label(x)
        if dims is None:
            dims = list(range(x.dim()))
        reduced = [lab[d] for d in dims if d < x.dim()]
        taint: tuple[_Node, ...] = ()
        if name in _INDEX_REDUCE:
            taint = tuple(r for lb in reduced for r in _roots(lb))
        for t in outs:
            if t.dim() == x.dim():
                new = [None if d in dims else lab[d] for d in range(x.dim())]
            elif t.dim() == x.dim() - len(set(dims)):
                new = [lab[d] for d in range(x.dim()) if d not in dims]
            else:
                return False
            is_index = t.dtype == torch.long and name in ("max", "min", "argmax", "argmin")
            self._set(t, new, taint or (tuple(r for lb in reduced for r in _roots(lb)) if is_index else ()))
        return True

    def _spatial(self, name, args, outs) -> bool:
        x = args[0]
        k = _SPATIAL[name]
        k = x.dim() - 2 if k < 0 else k
        lab = self._label(x)
        lead = x.dim() - k
        self._refuse(lab[lead:], f"used as a spatial axis by {name}")
        for t in outs:
            if t.dim() != x.dim():
                return False
            self._set(t, list(lab[:lead]) + [None] * k)
        return True

    def _pad(self, args, kwargs, outs) -> bool:
        x = args[0]
        pad = list(_arg(args, kwargs, 1, "pad"))
        mode = _arg(args, kwargs, 2, "mode", "constant")
        lab = list(self._label(x))
        for i in range(len(pad) // 2):
            d = x.dim() - 1 - i
            lo, hi = pad[2 * i], pad[2 * i + 1]
            if (lo, hi) == (0, 0) or lab[d] is None:
                lab[d] = None if (lo, hi) != (0, 0) else lab[d]
                continue
            if mode != "constant":
                self._refuse([lab[d]], f"{mode} padding of a channel axis")
                lab[d] = self._opaque(outs[0].shape[d], f"{mode} padding of a channel axis")
                continue
            # Constant padding adds indices without channel identity; negative padding crops.
            keep_lo, keep_hi = max(-lo, 0), x.shape[d] - max(-hi, 0)
            inner = self._slice(lab[d], keep_lo, keep_hi, "pad") or [_seg(None, 0, keep_hi - keep_lo, 1)]
            new = ([_seg(None, 0, lo, 1)] if lo > 0 else []) + list(inner) + ([_seg(None, 0, hi, 1)] if hi > 0 else [])
            lab[d] = _norm(tuple(new))
        self._set(outs[0], lab)
        return True

    def _reshape(self, lab, in_shape, out_shape, why) -> list:
        ins = [(i, s) for i, s in enumerate(in_shape) if s != 1]
        outs = [(j, s) for j, s in enumerate(out_shape) if s != 1]
        new: list[Label] = [None] * len(out_shape)
        i = j = 0
        while i < len(ins) and j < len(outs):
            ii, jj = [i], [j]
            pi, pj = ins[i][1], outs[j][1]
            while pi != pj:
                if pi < pj:
                    i += 1
                    ii.append(i)
                    pi *= ins[i][1]
                else:
                    j += 1
                    jj.append(j)
                    pj *= outs[j][1]
            chunk_in = [lab[ins[k][0]] for k in ii]
            out_dims = [outs[k][0] for k in jj]
            result = self._reshape_chunk(chunk_in, [ins[k][1] for k in ii], [outs[k][1] for k in jj])
            if result is False:
                reason = f"{why} mixes a channel axis with other axes"
                self._refuse(chunk_in, reason)
                result = [self._opaque(outs[k][1], reason) for k in jj]
            for d, lb in zip(out_dims, result):
                new[d] = lb
            i, j = i + 1, j + 1
        return new

    def _reshape_chunk(self, labels, in_sizes, out_sizes):
        if all(lb is None for lb in labels):
            return [None] * len(out_sizes)
        if len(labels) == 1 and len(out_sizes) == 1:
            return [labels[0]]
        if len(out_sizes) == 1:
            # Merge, row-major: only the leading axis may carry channels (each becomes a block).
            if any(lb is not None for lb in labels[1:]):
                return False
            return [self._scale_block(labels[0], math.prod(in_sizes[1:]))]
        if len(labels) == 1:
            lead = self._div_block(labels[0], math.prod(out_sizes[1:]), "view")
            if lead is False:
                return False
            return [_norm(lead)] + [None] * (len(out_sizes) - 1)
        return False

    def _transpose(self, func, args, kwargs, outs) -> bool:
        x = args[0]
        # Run the same op on a meta tensor with strides 2**i to read off the axis permutation.
        probe = torch.empty_strided(tuple(x.shape), tuple(2**i for i in range(x.dim())), device="meta")
        res = func(probe, *args[1:], **kwargs)
        if not isinstance(res, torch.Tensor) or res.dim() != x.dim():
            return False
        order = {2**i: i for i in range(x.dim())}
        lab = self._label(x)
        try:
            new = [lab[order[s]] if size > 1 else None for s, size in zip(res.stride(), res.shape)]
        except KeyError:
            return False
        self._set(outs[0], new, self._taint(x))
        return True

    def _cat(self, name, args, kwargs, outs) -> bool:
        tensors = [t for t in _arg(args, kwargs, 0, "tensors")]
        dim = _arg(args, kwargs, 1, "dim", kwargs.get("axis", 0))
        out = outs[0]
        if name == "stack":
            d0 = operator.index(dim) % out.dim()
            labels = [list(self._label(t)) for t in tensors]
            merged = []
            for d in range(out.dim() - 1):
                lab = labels[0][d]
                for other in labels[1:]:
                    lab = self._couple(lab, other[d], "stack")
                merged.append(lab)
            merged.insert(d0, None)
            self._set(out, merged)
            return True
        tensors = [t for t in tensors if not (t.dim() == 1 and t.shape[0] == 0)]
        d0 = operator.index(dim) % out.dim()
        labels = [self._label(t) for t in tensors]
        merged: list[Label] = []
        for d in range(out.dim()):
            if d == d0:
                segs = []
                for t, lb in zip(tensors, labels):
                    segs.extend(lb[d] if lb[d] is not None else [_seg(None, 0, t.shape[d], 1)])
                merged.append(_norm(tuple(segs)))
            else:
                lab = labels[0][d]
                for other in labels[1:]:
                    lab = self._couple(lab, other[d], "cat")
                merged.append(lab)
        self._set(out, merged)
        return True

    def _split(self, name, args, kwargs, outs) -> bool:
        x = args[0]
        lab = self._label(x)
        taint = self._taint(x)
        if name in ("unbind", "select"):
            d = operator.index(_arg(args, kwargs, 1, "dim", 0)) % x.dim()
            if lab[d] is not None:
                self._refuse([lab[d]], f"single channels picked by {name}")
            for t in outs:
                self._set(t, [lab[k] for k in range(x.dim()) if k != d], taint)
            return True
        if name == "narrow":
            d = operator.index(_arg(args, kwargs, 1, "dim")) % x.dim()
            start = operator.index(_arg(args, kwargs, 2, "start")) % max(x.shape[d], 1)
            pieces = [(start, outs[0].shape[d])]
        else:
            d = operator.index(_arg(args, kwargs, 2, "dim", 0)) % x.dim()
            pieces, offset = [], 0
            for t in outs:
                pieces.append((offset, t.shape[d]))
                offset += t.shape[d]
            if offset != x.shape[d]:
                return False
        for t, (start, size) in zip(outs, pieces):
            new = list(lab)
            if not (start == 0 and size == x.shape[d]):
                new[d] = self._slice(lab[d], start, start + size, name)
            self._set(t, new, taint)
        return True

    def _getitem(self, x, idx, outs) -> bool:
        if not isinstance(idx, tuple):
            idx = (idx,)
        if any(isinstance(i, (torch.Tensor, list, bool)) for i in idx):
            return False
        n_spec = sum(1 for i in idx if i is not None and i is not Ellipsis)
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            idx = idx[:k] + (slice(None),) * (x.dim() - n_spec) + idx[k + 1 :]
        else:
            idx = idx + (slice(None),) * (x.dim() - n_spec)
        lab = self._label(x)
        new: list[Label] = []
        d = 0
        for i in idx:
            if i is None:
                new.append(None)
                continue
            if isinstance(i, slice):
                start, stop, step = i.indices(x.shape[d])
                if (start, stop, step) == (0, x.shape[d], 1) or lab[d] is None:
                    new.append(lab[d] if (start, stop, step) == (0, x.shape[d], 1) else None)
                elif step == 1:
                    new.append(self._slice(lab[d], start, stop, "indexing"))
                else:
                    self._refuse([lab[d]], "strided indexing of a channel axis")
                    new.append(self._opaque(len(range(start, stop, step)), "strided indexing of a channel axis"))
            else:
                operator.index(i)
                if lab[d] is not None:
                    self._refuse([lab[d]], "single channels picked by indexing")
            d += 1
        if len(new) != outs[0].dim():
            return False
        self._set(outs[0], new, self._taint(x))
        return True

    # ---- result ----------------------------------------------------------------------------

    def groups(self) -> list[ChannelGroup]:
        roots = []
        for n in self.all_nodes:
            r = _find(n)
            if r is n and r.producers and r.members:
                roots.append(r)
        order = self.module_order
        big = len(order)
        roots.sort(key=lambda r: min(order.get(p, big) for p in r.producers))
        result = []
        for r in roots:
            members = list(dict.fromkeys(r.members))
            name = min(r.producers, key=lambda p: (order.get(p, big), p))
            result.append(ChannelGroup(name, r.size, members, permutable=not r.reasons, reason="; ".join(r.reasons)))
        _check_members(result, self.params)
        return result


def _check_members(groups: list[ChannelGroup], params: dict) -> None:
    """Last line of defence: no member outside its tensor, no index owned by two groups."""
    shapes = {key: tuple(t.shape) for key, t in params.values()}
    owners: dict[tuple[str, int], list[tuple[int, int, ChannelGroup]]] = {}
    for g in groups:
        for m in g.members:
            shape = shapes.get(m.tensor)
            if shape is None or m.dim >= len(shape) or m.start + g.size * m.block > shape[m.dim]:
                g.permutable = False
                g.reason = "; ".join(filter(None, [g.reason, f"member {m} does not fit its tensor (internal check)"]))
                continue
            owners.setdefault((m.tensor, m.dim), []).append((m.start, m.start + g.size * m.block, g))
    for spans in owners.values():
        spans.sort(key=lambda s: s[0])
        for (a0, a1, ga), (b0, b1, gb) in zip(spans, spans[1:]):
            if b0 < a1:
                for g in (ga, gb):
                    g.permutable = False
                    g.reason = "; ".join(filter(None, [g.reason, "two groups claim the same indices (internal check)"]))
