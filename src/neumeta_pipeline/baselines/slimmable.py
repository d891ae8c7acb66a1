"""Slimmable networks: one set of weights shared by every width, a private BatchNorm per width.

Width ``w`` of a layer uses its first ``w`` channels, as in NeuMeta's permuted order, so the same
channel groups and width dicts apply. BatchNorm cannot be shared (the statistics of a narrower
layer differ), so every trained width keeps its own affine parameters and running statistics:
"switchable BatchNorm". A width that was never trained borrows the BatchNorm of the nearest
wider trained width, sliced to its channels; that is what makes unseen widths a real test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from ..neumeta.graph import ChannelGroup
from ..neumeta.morph import named_tensors, resize, slice_channels
from ..neumeta.tasks import TaskKind

_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class SlimmableNetwork(nn.Module):
    """``model``'s weights shared by the width configurations in ``widths`` (one dict per width)."""

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], widths: list[dict[str, int]]) -> None:
        super().__init__()
        if not widths:
            raise ValueError("a slimmable network needs at least one width to train")
        self.model = model
        self.groups = groups
        self.widths = [dict(w) for w in widths]
        self.norm_names = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        # The shared network's own BatchNorms are never used: each width has a private copy.
        for name in self.norm_names:
            model.get_submodule(name).requires_grad_(False)
        self.norms = nn.ModuleList(
            nn.ModuleDict({_key(n): resize(model, groups, w).get_submodule(n).requires_grad_(True) for n in self.norm_names})
            for w in self.widths
        )

    def forward(self, x: torch.Tensor, index: int = 0, **kwargs):
        """Run width ``self.widths[index]``; in training mode its private running statistics update.
        ``kwargs`` go to the model's ``forward`` (a VAE's ``mode``)."""
        shared = {k: v for k, v in named_tensors(self.model).items() if k.rpartition(".")[0] not in self.norm_names}
        tensors = slice_channels(shared, self.groups, self.widths[index])
        # The private tensors go in unsliced and as themselves, so BatchNorm's in-place running
        # statistics updates land in this width's buffers.
        tensors.update(self._private(index))
        return functional_call(self.model, tensors, (x,), kwargs)

    def extract(self, widths: dict[str, int]) -> nn.Module:
        """A standalone network at ``widths`` (trained or not), with the BatchNorm it would run with."""
        index = self.norm_source(widths)
        net = resize(self.model, self.groups, widths)
        state = net.state_dict()
        state.update(slice_channels(self._private(index), self.groups, widths))
        net.load_state_dict(state, strict=True)
        return net.eval()

    def norm_source(self, widths: dict[str, int]) -> int:
        """The trained width whose BatchNorm serves ``widths``: itself if trained, else the
        narrowest trained width that is at least as wide in every group."""
        wider = [i for i, w in enumerate(self.widths) if all(w.get(g, 0) >= c for g, c in widths.items())]
        if not wider:
            raise ValueError(f"widths {widths} are wider than every trained width {self.widths}; train a wider one")
        return min(wider, key=lambda i: sum(self.widths[i].values()))

    def _private(self, index: int) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.norm_names:
            norm = self.norms[index][_key(name)]
            out.update({f"{name}.{a}": getattr(norm, a) for a in _NORM_TENSORS if getattr(norm, a, None) is not None})
        return out

    def stored_parameters(self) -> int:
        """What deploying every width takes: the shared weights plus each width's private BatchNorm."""
        shared = sum(p.numel() for n, p in self.model.named_parameters() if n.rpartition(".")[0] not in self.norm_names)
        return shared + sum(p.numel() for p in self.norms.parameters())


def slimmable_objective(net: SlimmableNetwork, kind: TaskKind = TaskKind()) -> Callable:
    """The task loss summed over every trained width for each batch (the slimmable training rule:
    all widths see every batch, their gradients add up on the shared weights)."""

    def objective(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        losses = [kind.loss(kind.output(lambda x, i=i, **mode: net(x, i, **mode), x), x, y) for i in range(len(net.widths))]
        loss = torch.stack(losses).sum()
        return loss, {"task": loss.detach()}

    return objective


def _key(module_name: str) -> str:
    # ModuleDict keys cannot contain dots.
    return module_name.replace(".", "__")
