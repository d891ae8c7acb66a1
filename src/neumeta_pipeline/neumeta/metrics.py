"""Evaluation metrics and model cost counts."""

from __future__ import annotations

import torch
from torch import nn

@torch.no_grad()
def accuracy(forward, data, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``forward`` (a module or any callable from inputs to logits) on ``data``."""
    correct = 0
    for x, y in data.batches(batch_size):
        correct += int((forward(x).argmax(dim=1) == y).sum())
    return correct / max(1, len(data))


@torch.no_grad()
def segmentation_scores(forward, data, num_classes: int, ignore_index: int | None, batch_size: int = 16) -> dict:
    """Segmentation metrics of ``forward`` (inputs to per-pixel logits) over a whole split: pixel
    counts are summed over every image first, then turned into scores (not averaged per batch or
    per image). Pixels labelled ``ignore_index`` (void) count nowhere.

    Returns ``miou`` (mean IoU over the classes that occur in the labels or the predictions),
    ``iou`` (per class; NaN for a class that occurs in neither), ``pixel_accuracy`` and ``mean_f1``.
    """
    import segmentation_models_pytorch as smp

    totals = torch.zeros(4, num_classes, dtype=torch.long)
    for x, y in data.batches(batch_size):
        stats = smp.metrics.get_stats(forward(x).argmax(dim=1), y, mode="multiclass", num_classes=num_classes, ignore_index=ignore_index)
        totals += torch.stack([s.sum(0).cpu() for s in stats])
    tp, fp, fn, tn = totals
    present = (tp + fp + fn) > 0
    iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none").double()
    f1 = smp.metrics.f1_score(tp, fp, fn, tn, reduction="none").double()
    iou[~present] = float("nan")
    labelled = int((tp + fn).sum())  # every valid pixel is a tp or an fn of its true class
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "iou": iou.tolist(),
        "pixel_accuracy": int(tp.sum()) / max(1, labelled),
        "mean_f1": float(f1[present].mean()) if present.any() else float("nan"),
    }


def count_params_and_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward pass of the whole network."""
    import torch_pruning as tp

    model = model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(params), int(macs)


def weight_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in model.parameters())))


def collapse_alarms(
    accuracies: dict[float, float], norms: dict[float, float], reference_norm: float,
    chance: float | None = None, reference_accuracy: float | None = None, generated_ratio: float | None = None,
    metric: str = "accuracy",
) -> list[str]:
    """The collapse signature of a hypernetwork: one score (``accuracies``: the main ``metric``) at every width (the generated part
    has become an identity or a constant), every width near chance level while the reference
    network is not (the generated weights do not work at all), or generated weights whose norm
    has vanished: the whole network's, or (``generated_ratio``) the generated weights' at full width
    against the pretrained ones', which catches a generated residual branch that has gone quiet
    while the rest of the network keeps the scores up (and nearly equal at every width)."""
    alarms = []
    if generated_ratio is not None and generated_ratio < 0.1:
        alarms.append(
            f"the generated weights at full width have {100 * generated_ratio:.1f}% of the pretrained ones' norm (median "
            f"over tensors): "
            f"the INR does not reproduce them, so the generated part is nearly switched off"
        )
    if len(accuracies) > 1 and len(set(accuracies.values())) == 1:
        value = next(iter(accuracies.values()))
        alarms.append(f"every width has {metric} {value:.4f}: the generated part may have collapsed")
    elif chance is not None and reference_accuracy is not None and reference_accuracy > chance + 0.1:
        # Even the best width keeps under a quarter of the pretrained network's margin over chance.
        # A fixed margin (two points) missed a whole-ResNet20 run at 9-16% on 466 test images;
        # a healthy run's best (seen) width is close to the reference, far above this line.
        best = max(accuracies.values(), default=None)
        if best is not None and best < chance + 0.25 * (reference_accuracy - chance):
            alarms.append(
                f"every width is near chance level (best {best:.4f}, chance {chance:.4f}) while the "
                f"pretrained network has {reference_accuracy:.4f}: the generated weights do not work"
            )
    for gamma, norm in norms.items():
        if norm < 1e-2 * reference_norm:
            alarms.append(f"compression {gamma:g}: weight norm {norm:.3g} is under 1% of the pretrained {reference_norm:.3g}")
    return alarms


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same ``n`` examples.

    ``x`` is (n, d1) and ``y`` is (n, d2) (other shapes are flattened per example). 1 means the
    same representation up to rotation and isotropic scale; it is computed through whichever of
    the n x n Gram matrices or the d1 x d2 cross-covariance is smaller (the two are equal).
    """
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"CKA needs the same n >= 2 examples in both, got {x.shape[0]} and {y.shape[0]}")
    x = x.flatten(1).double()
    y = y.flatten(1).double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    if x.shape[0] <= max(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T
        cross, norm_x, norm_y = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        cross, norm_x, norm_y = (y.T @ x).pow(2).sum(), (x.T @ x).norm(), (y.T @ y).norm()
    if norm_x == 0 or norm_y == 0:
        raise ValueError("CKA is undefined for a constant representation")
    return float(cross / (norm_x * norm_y))


def mean_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over examples of KL(p || q) between the softmax outputs of two models."""
    log_p, log_q = torch.log_softmax(p_logits.double(), 1), torch.log_softmax(q_logits.double(), 1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


@torch.no_grad()
def features_and_logits(model: nn.Module, layer: str, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of submodule ``layer`` (flattened per example) and the logits, for ``images``."""
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"the model has no layer {layer!r}; layers: {', '.join(names)}") from None
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().flatten(1)))
    try:
        logits = torch.cat([model.eval()(x) for x in images.split(batch_size)])
    finally:
        handle.remove()
    return torch.cat(captured), logits
