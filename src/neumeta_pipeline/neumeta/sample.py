"""Turn a trained INR into standalone networks: K-sample averaged weights for a width, written
into a resized copy of the target network that runs without the INR."""

from __future__ import annotations

import torch
from torch import nn

from .inr import NeuMetaINR
from .morph import MorphSpec, batchnorm_statistics, cells, has_batchnorm, resize


@torch.no_grad()
def sample_model(
    inr: NeuMetaINR,
    target: nn.Module,
    widths: dict[str, int],
    samples: int,
    noise: float,
    seed: int,
    calibration: torch.Tensor | None = None,
) -> nn.Module:
    """The network at ``widths`` with the INR's weights averaged over ``samples`` noisy coordinates;
    with ``calibration`` images, its BatchNorm statistics are estimated on them."""
    if samples < 1:
        raise ValueError(f"samples (K) must be >= 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    weights = inr.generate(widths, noise=noise if samples > 1 else 0.0, samples=samples, generator=generator)
    model = resize(target, inr.spec.groups, widths)
    # resize keeps the first channels; the tensors the INR does not generate are cut as in training.
    state = {**model.state_dict(), **inr.spec.frozen_tensors(target, widths)}
    for name, value in weights.items():
        if state[name].shape != value.shape:
            raise RuntimeError(f"generated {name} has shape {tuple(value.shape)}, the network expects {tuple(state[name].shape)}")
        state[name] = value
    if calibration is not None:
        state.update(batchnorm_statistics(model, state, calibration))
    model.load_state_dict(state)
    return model.eval()


def load_inr(checkpoint: dict) -> NeuMetaINR:
    """Rebuild a trained INR from the checkpoint ``train_inr`` writes."""
    # Checkpoints written before layouts and coordinate options existed have one MLP per tensor and
    # corner coordinates with width-scaled noise; say so here rather than lean on the constructor's
    # defaults, which may change.
    config = {
        "layout": "per_tensor", "centred": False, "noise_scaling": "width", "size_inputs": True, "modulation": "none",
        **checkpoint["inr_config"],
    }
    inr = NeuMetaINR(MorphSpec.from_dict(checkpoint["spec"]), **config)
    inr.load_state_dict(checkpoint["state_dict"])
    return inr.eval()


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the module it measures has run."""


def _channel_moments(output: torch.Tensor, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-output-channel sum and sum of squares (float64) of one module output, and the count."""
    channels = output.movedim(-1 if isinstance(module, nn.Linear) else 1, -1)
    rows = channels.reshape(-1, channels.shape[-1]).double()
    return rows.sum(0), rows.square().sum(0), rows.shape[0]


def _moments_to_stats(total: torch.Tensor, squares: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = total / count
    return mean, (squares / count - mean.square()).clamp_min(0.0).sqrt()


@torch.no_grad()
def _output_statistics(
    model: nn.Module, modules: list[str], images: torch.Tensor, batch_size: int, stop: bool = False
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Mean and standard deviation of every output channel of ``modules`` over ``images``, and the
    order in which the forward pass first reached them. With ``stop``, each pass ends right after
    the first of ``modules`` runs (the layers after it do not change its statistics)."""
    named = dict(model.named_modules())
    sums: dict[str, list] = {}
    order: list[str] = []
    calls: dict[str, int] = {}

    def hook(name):
        def record(module, _inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise ValueError(f"{name} runs more than once per forward pass (shared weights): its outputs cannot be renormalised")
            moments = _channel_moments(output, module)
            if name not in sums:
                sums[name] = list(moments)
                order.append(name)
            else:
                sums[name] = [a + b for a, b in zip(sums[name], moments)]
            if stop:
                raise _Reached
        return record

    handles = [named[name].register_forward_hook(hook(name)) for name in modules]
    try:
        for batch in images.split(batch_size):
            calls.clear()
            try:
                model(batch)
            except _Reached:
                pass
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(modules) - set(sums))
    if missing:
        raise RuntimeError(f"the forward pass never reached the generated modules {missing}: their outputs cannot be renormalised")
    return {name: _moments_to_stats(*moments) for name, moments in sums.items()}, order


def renormalisation_problems(model: nn.Module, spec: MorphSpec) -> list[str]:
    """Why ``renormalise`` cannot correct ``model`` (empty when it can)."""
    problems = []
    if has_batchnorm(model):
        problems.append(
            "the network keeps BatchNorm, whose statistics are already estimated afresh at every width "
            "(morph.batchnorm: keep); renormalise BN-folded networks only (morph.batchnorm: fold)"
        )
    named = dict(model.named_modules())
    no_bias = [name for name in spec.generated_modules if getattr(named[name], "bias", None) is None]
    if no_bias:
        problems.append(f"the generated modules {no_bias} have no bias to carry the mean correction")
    return problems


@torch.no_grad()
def renormalise(
    model: nn.Module, reference: nn.Module, spec: MorphSpec, widths: dict[str, int], images: torch.Tensor, batch_size: int = 256
) -> nn.Module:
    """Rescale and shift every output channel of the generated modules of ``model`` (at ``widths``)
    so that, on ``images``, its mean and standard deviation equal the averages of those of the
    full-width ``reference`` channels it stands for, module by module in forward order (each
    module measured with the ones before it already corrected). Changes ``model`` in place.

    Why: a narrow channel's weights are the INR's values averaged over the cell of full channels
    it replaces. Averaging partly uncorrelated weights shrinks the spread of that channel's
    pre-activations, and the shrinkage compounds through the layers, most at widths far from
    those trained. The correction is the affine map ``a * (y - mean) + target_mean`` with
    ``a = target_std / std``, folded into the module's weight and bias, so the network keeps its
    architecture. Narrow channel k stands for the full channels of its cell (``morph.cells``); an
    output that does not narrow (the logits) is matched channel by channel.
    """
    problems = renormalisation_problems(model, spec)
    if problems:
        raise ValueError("cannot renormalise this network: " + "; ".join(problems))
    model.eval()
    modules = list(spec.generated_modules)
    targets, order = _output_statistics(reference.eval(), modules, images, batch_size)
    named = dict(model.named_modules())
    for name in order:
        module = named[name]
        mean, std = _output_statistics(model, [name], images, batch_size, stop=True)[0][name]
        full_mean, full_std = targets[name]
        average = cells(len(full_mean), len(mean)).double()
        average /= average.sum(1, keepdim=True)
        target_mean, target_std = average @ full_mean, average @ full_std
        # A channel that is constant on the images (a dead unit) has no spread to rescale: shift it only.
        alive = std > 1e-6 * target_std.clamp_min(1e-12)
        scale = torch.where(alive, target_std / std.clamp_min(1e-30), torch.ones_like(std))
        out_dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0
        shape = [1] * module.weight.dim()
        shape[out_dim] = -1
        module.weight.mul_(scale.view(shape).to(module.weight.dtype))
        module.bias.copy_((scale * (module.bias.double() - mean) + target_mean).to(module.bias.dtype))
    return model
