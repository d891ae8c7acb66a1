"""Thin nodes for the baselines NeuMeta is compared against, and the comparison reports.

Every baseline node returns ``(models, history)``: ``models`` maps a method name (``individual``,
``slimmable``, ``pruning_l1``, ...) to ``{compression: checkpoint}`` at the same widths NeuMeta is
evaluated at; ``history`` records what the training cost and where it ran, and how many
parameters the method has to store to serve every width.
"""

from __future__ import annotations

import logging
import time

import pandas as pd
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from ...baselines import fresh_at_widths
from ...baselines.distill import distillation_objective
from ...baselines.pruning import NEEDS_GRADIENTS, prune_channels
from ...baselines.slimmable import SlimmableNetwork, slimmable_objective
from ...config import BaselineParams, EvaluateParams, FitParams, ModelParams, MorphParams, SimilarityParams
from ...data import split_data
from ...errors import UserError
from ...models import build_model, load_encoder_weights
from ...models.checkpoint import example_input, load_model, model_checkpoint
from ...neumeta.fuse import fuse_batchnorm
from ...neumeta.graph import channel_groups
from ...neumeta.metrics import count_params_and_macs, features_and_logits, linear_cka
from ...neumeta.morph import MorphSpec
from ...neumeta.resume import content_hash
from ...neumeta.train import task_objective, device_label, fit, resolve_device, seed_everything
from ...neumeta.tasks import METRIC_NAMES, METRIC_SHORT, metric_scale, metric_unit, table_metric, task_kind
from ..neumeta.nodes import (
    check_labels, check_trained_on, first_images, fit_config, pretrain_recipe, result_row, resume_file, run_distributed, split_label,
    table_scores,
)

log = logging.getLogger(__name__)


def train_individual(
    splits: dict, model: dict, pretrain: dict, morph: dict, baselines: dict, distributed: dict | None, seed: int, device: str,
    task: str,
) -> tuple[dict, dict]:
    """One network per width, trained from scratch with the pretraining recipe and seed."""
    return run_distributed(
        distributed, task, "individual", _train_individual, splits, model, pretrain, morph, baselines, seed, device, task
    )


def _train_individual(
    splits: dict, model: dict, pretrain: dict, morph: dict, baselines: dict, seed: int, device: str, task: str
) -> tuple[dict, dict]:
    arch, widths, params, dev = _setup(model, morph, baselines, device)
    recipe, inputs = pretrain_recipe(pretrain), {"splits": content_hash(splits)}
    models, runs = {}, {}
    for gamma, w in widths.items():
        generator = seed_everything(seed)
        net = fresh_at_widths(arch, w).to(dev)
        check_labels(splits, net, example_input(arch).to(dev))
        settings = {"model": arch, "widths": w}
        with resume_file(recipe, task, f"individual_{gamma:g}", seed, dev, settings, inputs) as resume:
            objective = task_objective(net, task_kind(splits))
            result = _fit_network(net, objective, splits, dev, recipe, generator, f"individual {gamma:g}", resume)
        models[f"{gamma:g}"] = model_checkpoint(result.best, arch, widths=w, compression=gamma, seen_in_training=True, trained_on=inputs)
        runs[f"{gamma:g}"] = result.history
        log.info("individual %g: validation score %.4f", gamma, result.best_score)
    return {"individual": models}, _history(dev, "individual", runs, sum(_parameters(m["state_dict"]) for m in models.values()))


def train_slimmable(
    splits: dict, model: dict, pretrain: dict, morph: dict, baselines: dict, distributed: dict | None, seed: int, device: str,
    task: str,
) -> tuple[dict, dict]:
    """One Slimmable network (shared weights, switchable BatchNorm) trained on every seen width at
    once, then cut out at every compared width, the unseen ones included."""
    return run_distributed(
        distributed, task, "slimmable", _train_slimmable, splits, model, pretrain, morph, baselines, seed, device, task
    )


def _train_slimmable(
    splits: dict, model: dict, pretrain: dict, morph: dict, baselines: dict, seed: int, device: str, task: str
) -> tuple[dict, dict]:
    arch, widths, params, dev = _setup(model, morph, baselines, device)
    generator = seed_everything(seed)
    base = build_model(arch["name"], **arch["kwargs"])
    if arch["encoder_weights"]:
        load_encoder_weights(base, arch["encoder_weights"])
    trained = list(_widths(arch, morph, params.slimmable_compressions).values())
    net = SlimmableNetwork(base, channel_groups(base, example_input(arch)), trained).to(dev)
    check_labels(splits, base, example_input(arch).to(dev))
    val, kind = split_data(splits, "val", dev), task_kind(splits)

    def validate(module: SlimmableNetwork) -> float:
        return sum(kind.score(lambda x, i=i, **mode: module(x, i, **mode), val) for i in range(len(trained))) / len(trained)

    recipe, inputs = pretrain_recipe(pretrain), {"splits": content_hash(splits)}
    with resume_file(recipe, task, "slimmable", seed, dev, {"model": arch, "widths": trained}, inputs) as resume:
        result = fit(net, slimmable_objective(net, kind), split_data(splits, "train", dev), validate, fit_config(recipe), generator,
                     "slimmable", resume)
    log.info("slimmable: mean validation score over trained widths %.4f", result.best_score)
    best = result.best.cpu()
    models = {
        f"{gamma:g}": model_checkpoint(
            best.extract(w), arch, widths=w, compression=gamma, seen_in_training=gamma in params.slimmable_compressions,
            trained_on=inputs,
        )
        for gamma, w in widths.items()
    }
    return {"slimmable": models}, _history(dev, "slimmable", {"shared": result.history}, best.stored_parameters())


def prune_pretrained(pretrained_model: dict, splits: dict, morph: dict, baselines: dict, seed: int) -> tuple[dict, dict]:
    """The pretrained network with its morphable channels pruned to every compared width, by each
    importance criterion, without fine-tuning."""
    params = BaselineParams.model_validate(baselines)
    arch = pretrained_model["arch"]
    widths = _widths(arch, morph, params.compressions)
    net = load_model(pretrained_model)
    groups = channel_groups(net, example_input(arch))
    # Calibration images come from the training split (normalised like every input), never the test set.
    train = split_data(splits, "train", "cpu")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: params.calibration_images]
    images, labels = train.take(pick)
    inputs = {"pretrained_model": content_hash(pretrained_model), "splits": content_hash(splits)}
    models, seconds = {}, {}
    for importance in params.pruning_importances:
        start = time.perf_counter()
        method = f"pruning_{importance}"
        models[method] = {}
        for gamma, w in widths.items():
            pruned = prune_channels(net, groups, w, importance, images, labels if importance in NEEDS_GRADIENTS else None, seed,
                                    task_kind(splits))
            # At 0% nothing is removed: that network is the pretrained one, trained at its width.
            models[method][f"{gamma:g}"] = model_checkpoint(
                pruned, arch, widths=w, compression=gamma, seen_in_training=gamma == 0.0, trained_on=inputs
            )
        seconds[method] = time.perf_counter() - start
    stored = {method: _parameters(pretrained_model["state_dict"]) for method in models}
    return models, {"device": device_label(torch.device("cpu")), "seconds": seconds, "stored_parameters": stored}


def train_distilled(
    pretrained_model: dict, splits: dict, pretrain: dict, morph: dict, baselines: dict, distributed: dict | None, seed: int,
    device: str, task: str,
) -> tuple[dict, dict]:
    """Each narrower width trained from scratch to match the pretrained network's outputs
    (knowledge distillation); the full width is the teacher itself."""
    return run_distributed(
        distributed, task, "distilled", _train_distilled, pretrained_model, splits, pretrain, morph, baselines, seed, device, task
    )


def _train_distilled(
    pretrained_model: dict, splits: dict, pretrain: dict, morph: dict, baselines: dict, seed: int, device: str, task: str
) -> tuple[dict, dict]:
    arch = pretrained_model["arch"]
    _, widths, params, dev = _setup(arch, morph, baselines, device)
    teacher = load_model(pretrained_model).to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)
    recipe = pretrain_recipe(pretrain)
    inputs = {"pretrained_model": content_hash(pretrained_model), "splits": content_hash(splits)}
    models, runs = {}, {}
    for gamma, w in widths.items():
        if gamma == 0.0:
            models["0"] = {**pretrained_model, "compression": 0.0, "seen_in_training": True, "trained_on": inputs}
            continue
        generator = seed_everything(seed)
        student = fresh_at_widths(arch, w).to(dev)
        objective = distillation_objective(student, teacher, params.distill_temperature, params.distill_alpha, task_kind(splits))
        settings = {"widths": w, "temperature": params.distill_temperature, "alpha": params.distill_alpha}
        with resume_file(recipe, task, f"distilled_{gamma:g}", seed, dev, settings, inputs) as resume:
            result = _fit_network(student, objective, splits, dev, recipe, generator, f"distilled {gamma:g}", resume)
        models[f"{gamma:g}"] = model_checkpoint(result.best, arch, widths=w, compression=gamma, seen_in_training=True, trained_on=inputs)
        runs[f"{gamma:g}"] = result.history
        log.info("distilled %g: validation score %.4f", gamma, result.best_score)
    return {"distilled": models}, _history(dev, "distilled", runs, sum(_parameters(m["state_dict"]) for m in models.values()))


def evaluate_baseline(models: dict, history: dict, splits: dict, model: dict, evaluate: dict, task: str) -> pd.DataFrame:
    """Test scores (the task kind's), deployable parameters and MACs of every baseline model, with its method's
    training seconds and stored parameters. Counts are taken with BatchNorm folded, relative to the
    full-width network folded the same way, as for NeuMeta."""
    params = EvaluateParams.model_validate(evaluate)
    arch = ModelParams.model_validate(model).model_dump()
    x0 = example_input(arch)
    base_params, base_macs = count_params_and_macs(fuse_batchnorm(build_model(arch["name"], **arch["kwargs"]).eval()), x0)
    test, kind = split_data(splits, "test", "cpu"), task_kind(splits, nll_samples=params.nll_samples, nll_images=params.nll_images)
    rows, digest = [], content_hash(splits)
    for method, by_width in models.items():
        seconds = history["seconds"][method]
        for key, checkpoint in by_width.items():
            # Test images of another split may be this network's training images.
            check_trained_on(checkpoint, f"{_label(method)} network at {100 * float(key):g}%", _rerun(task, method), splits=digest)
            net = load_model(checkpoint)
            row = result_row(
                task, method, float(checkpoint["compression"]), checkpoint["seen_in_training"], checkpoint["widths"],
                table_scores(kind, net, test, params.batch_size, splits), *count_params_and_macs(fuse_batchnorm(net), x0),
                base_params, base_macs, split_label(digest),
            )
            rows.append({**row, "train_seconds": seconds, "device": history["device"], "stored_parameters": history["stored_parameters"][method]})
    return pd.DataFrame(rows)


def compare_methods(
    neumeta_table: pd.DataFrame,
    pretrain_history: list[dict],
    inr_history: dict,
    inr_checkpoint: dict,
    fused_model: dict,
    *baseline_tables: pd.DataFrame,
    task: str,
) -> tuple[pd.DataFrame, go.Figure, Figure]:
    """The paper's Table 2 for this task: the score (accuracy, mIoU) per method and compression, training cost in
    device-hours and the parameters each method stores to serve every width, with a chart.

    Methods built on the pretrained network (NeuMeta, pruning, distillation) are charged its
    training too.
    """
    if "reconstruction_seconds" not in inr_history or "device" not in inr_history:
        raise ValueError(
            "the latest inr_history does not record its device and warm-start time (it predates cost reporting); "
            "rerun the INR stage: kedro run --pipelines=<task> --from-nodes=<task>.train_inr"
        )
    check_trained_on(inr_checkpoint, fused_model=fused_model)
    pretrain_seconds = sum(e["seconds"] for e in pretrain_history)
    inr_seconds = inr_history["reconstruction_seconds"] + sum(e["seconds"] for e in inr_history["epochs"])
    # Tensors the INR holds (generated, or trained directly and shared) are not stored twice.
    generated = {t["name"] for t in inr_checkpoint["spec"]["tensors"]} | set(inr_checkpoint["inr_config"].get("shared", {}))
    frozen = {k: v for k, v in fused_model["state_dict"].items() if k not in generated}
    ours = neumeta_table[neumeta_table.method == "neumeta"].assign(
        train_seconds=pretrain_seconds + inr_seconds,
        device=inr_history["device"],
        stored_parameters=inr_checkpoint["inr_parameters"] + _parameters(frozen),
    )
    _check_one_split([ours, *baseline_tables], task)
    rows = [ours]
    for table in baseline_tables:
        builds_on_pretrained = table.method.str.startswith("pruning_") | (table.method == "distilled")
        table = table.assign(train_seconds=table.train_seconds + builds_on_pretrained * pretrain_seconds)
        rows.append(table)
    long = pd.concat(rows, ignore_index=True)
    # The table keeps the widths every method was built at; the chart shows every point.
    common = sorted(set.intersection(*(set(t.compression) for _, t in long.groupby("method"))))
    shared = long[long.compression.isin(common)]
    metric = table_metric(long)
    wide = shared.pivot_table(index="method", columns="compression", values=metric, sort=False)
    wide.columns = [f"{METRIC_SHORT[metric]}@{100 * c:g}%" for c in wide.columns]
    per_method = long.groupby("method", sort=False).agg(
        train_seconds=("train_seconds", "first"), device=("device", "first"), stored_parameters=("stored_parameters", "first")
    )
    per_method.insert(0, "train_device_hours", per_method.pop("train_seconds") / 3600.0)
    untrained = shared[~shared.seen_in_training.astype(bool)].groupby("method").compression.apply(
        lambda c: " ".join(f"{100 * v:g}%" for v in c)
    )
    table = wide.join(per_method).join(untrained.rename("widths_not_trained")).fillna({"widths_not_trained": ""})
    table = table.reset_index()
    table.insert(0, "task", task)
    return table, _comparison_plotly(long, task, metric), _comparison_png(long, task, metric)


def analyse_similarity(
    sampled_models: dict, individual_models: dict, distilled_models: dict, splits: dict, baselines: dict, similarity: dict, task: str
) -> tuple[pd.DataFrame, go.Figure, Figure]:
    """Section 4.3 of the paper: linear CKA of one layer's features between each width and its
    family's full width, and the KL divergence between the outputs of every pair of widths, for
    NeuMeta, individually trained and distilled networks (the distilled family's full width is
    its teacher). For a generation task the output divergence is the squared distance between the
    reconstructions (``TaskKind.divergence``); the columns keep their names."""
    params, sim = BaselineParams.model_validate(baselines), SimilarityParams.model_validate(similarity)
    # Test images of another split may be the INR's training images.
    digest = content_hash(splits)
    check_trained_on(next(iter(sampled_models.values()), {}), "INR of the sampled networks", splits=digest)
    images = first_images(split_data(splits, "test", "cpu"), sim.images)
    keys = [f"{g:g}" for g in params.compressions]
    families = {"neumeta": sampled_models, "individual": individual_models["individual"], "distilled": distilled_models["distilled"]}
    for family in ("individual", "distilled"):
        for key, checkpoint in families[family].items():
            check_trained_on(checkpoint, f"{_label(family)} network at {100 * float(key):g}%", _rerun(task, family), splits=digest)
    rows, kl, kind = [], {}, task_kind(splits)
    for family, models in families.items():
        outputs = {k: features_and_logits(load_model(models[k]), sim.layer, images) for k in keys}
        full_features, full_logits = outputs["0"]
        kl[family] = [[kind.divergence(outputs[a][1], outputs[b][1]) for b in keys] for a in keys]
        for i, key in enumerate(keys):
            features, logits = outputs[key]
            rows.append({
                "task": task, "family": family, "compression": float(key), "layer": sim.layer, "images": len(images),
                "cka_to_full": linear_cka(features, full_features),
                "kl_full_to_this": kind.divergence(full_logits, logits),
                "mean_pairwise_kl": sum(kl[family][i][j] for j in range(len(keys)) if j != i) / max(1, len(keys) - 1),
            })
    table = pd.DataFrame(rows)
    return table, _similarity_plotly(table, kl, keys, task), _similarity_png(table, kl, keys, task)


def _check_one_split(tables: list[pd.DataFrame], task: str) -> None:
    """Refuse to compare methods scored on different data splits: after a run with another seed or
    data settings, the newest table of one method may come from that run and another's from an
    earlier one. Tables written before rows recorded their split are not checked."""
    by_split: dict[str, list[str]] = {}
    for table in tables:
        if "split" in table:
            for (split, method), _ in table.groupby(["split", "method"], sort=False):
                by_split.setdefault(split, []).append(_label(method))
    if len(by_split) > 1:
        described = "; ".join(f"{', '.join(methods)} on split {split}" for split, methods in by_split.items())
        raise UserError(
            f"the methods to compare were scored on different data splits ({described}): their tables come from "
            f"different runs (another seed or data settings). Rerun the stale methods on the current split "
            f"(kedro run --pipelines={task}_compare), or load one run's tables with --load-versions"
        )


def _setup(model: dict, morph: dict, baselines: dict, device: str):
    arch = ModelParams.model_validate(model).model_dump()
    params = BaselineParams.model_validate(baselines)
    return arch, _widths(arch, morph, params.compressions), params, resolve_device(device)


def _widths(arch: dict, morph: dict, compressions: list[float]) -> dict[float, dict[str, int]]:
    """NeuMeta's width configuration at each compression: the same morphable groups and rounding."""
    morph_p = MorphParams.model_validate(morph)
    net = build_model(arch["name"], **arch["kwargs"]).eval()
    spec = MorphSpec(net, example_input(arch), morph_p.generated, morph_p.morphable)
    return {gamma: spec.widths(gamma) for gamma in compressions}


def _fit_network(net, objective, splits, dev, recipe: FitParams, generator, desc, resume):
    train, val, kind = split_data(splits, "train", dev), split_data(splits, "val", dev), task_kind(splits)
    return fit(net, objective, train, lambda m: kind.score(m, val), fit_config(recipe), generator, desc, resume)


def _history(dev: torch.device, method: str, runs: dict[str, list[dict]], stored: int) -> dict:
    """Training seconds are the loop's own per-epoch timings (validation excluded), summed."""
    seconds = sum(e["seconds"] for run in runs.values() for e in run)
    return {"device": device_label(dev), "seconds": {method: seconds}, "stored_parameters": {method: stored}, "runs": runs}


def _parameters(state_dict: dict) -> int:
    """Stored parameters of a state dict: learned tensors, not BatchNorm running statistics."""
    return sum(v.numel() for k, v in state_dict.items() if v.is_floating_point() and "running_" not in k)


_NAMES = {"neumeta": "NeuMeta", "individual": "individually trained", "slimmable": "Slimmable", "distilled": "distilled (KD)"}


def _rerun(task: str, method: str) -> str:
    """How to rebuild ``method``'s networks (and its table) on the inputs loaded now."""
    baseline = "pruning" if method.startswith("pruning_") else method
    builder = "prune_pretrained" if baseline == "pruning" else f"train_{baseline}"
    return f"build them again: kedro run --pipelines={task}_compare --nodes={task}.{builder},{task}.evaluate_{baseline}"


def _label(method: str) -> str:
    return _NAMES.get(method, method.replace("pruning_", "pruning, ").replace("l1", "L1").replace("l2", "L2"))


def _trained_range(long: pd.DataFrame) -> tuple[float, float] | None:
    """NeuMeta's trained compressions (%), the span the charts shade: every point outside it is a
    width the INR never saw."""
    seen = long[(long.method == "neumeta") & long.seen_in_training.astype(bool)].compression
    return (100 * seen.min(), 100 * seen.max()) if len(seen) else None


def _comparison_plotly(long: pd.DataFrame, task: str, metric: str = "accuracy") -> go.Figure:
    fig = go.Figure()
    span = _trained_range(long)
    if span is not None:
        fig.add_vrect(x0=span[0], x1=span[1], fillcolor="lightgrey", opacity=0.3, line_width=0,
                      annotation_text="NeuMeta's trained widths")
    for method, rows in long.groupby("method", sort=False):
        rows = rows.sort_values("compression")
        fig.add_trace(go.Scatter(
            x=100 * rows.compression, y=metric_scale(metric) * rows[metric], mode="lines+markers", name=_label(method),
            line={"dash": "dot" if method.startswith("pruning_") else "solid"},
        ))
    fig.update_layout(title=f"{task}: test {METRIC_NAMES[metric]} of every method vs compression",
                      xaxis_title="compression of morphable channels (%)", yaxis_title=f"test {METRIC_NAMES[metric]}{metric_unit(metric)}")
    return fig


def _comparison_png(long: pd.DataFrame, task: str, metric: str = "accuracy") -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    span = _trained_range(long)
    if span is not None:
        ax.axvspan(*span, color="lightgrey", alpha=0.5, label="NeuMeta's trained widths")
    for method, rows in long.groupby("method", sort=False):
        rows = rows.sort_values("compression")
        ax.plot(100 * rows.compression, metric_scale(metric) * rows[metric], ":o" if method.startswith("pruning_") else "-o",
                label=_label(method))
    name = METRIC_NAMES[metric]
    ax.set(xlabel="compression of morphable channels (%)", ylabel=f"test {name}{metric_unit(metric)}", title=f"{task}: {name} vs compression")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _similarity_plotly(table: pd.DataFrame, kl: dict, keys: list[str], task: str) -> go.Figure:
    families = list(kl)
    fig = make_subplots(rows=1, cols=1 + len(families), subplot_titles=["CKA to the full width"] + [f"KL, {_label(f)}" for f in families])
    for family, rows in table.groupby("family", sort=False):
        fig.add_trace(go.Scatter(x=100 * rows.compression, y=rows.cka_to_full, mode="lines+markers", name=_label(family)), row=1, col=1)
    top = max(max(max(r) for r in m) for m in kl.values())
    ticks = [f"{100 * float(k):g}%" for k in keys]
    for i, family in enumerate(families):
        fig.add_trace(go.Heatmap(z=kl[family], x=ticks, y=ticks, zmin=0, zmax=top, coloraxis="coloraxis"), row=1, col=2 + i)
    fig.update_layout(title=f"{task}: feature and output similarity across widths", coloraxis={"colorscale": "Viridis"})
    return fig


def _similarity_png(table: pd.DataFrame, kl: dict, keys: list[str], task: str) -> Figure:
    families = list(kl)
    fig = Figure(figsize=(4 * (1 + len(families)), 3.8))
    axes = fig.subplots(1, 1 + len(families))
    for family, rows in table.groupby("family", sort=False):
        axes[0].plot(100 * rows.compression, rows.cka_to_full, "-o", label=_label(family))
    axes[0].set(xlabel="compression (%)", ylabel="linear CKA to the full width", title="feature similarity")
    axes[0].legend(fontsize=8)
    top = max(max(max(r) for r in m) for m in kl.values())
    ticks = [f"{100 * float(k):g}" for k in keys]
    for ax, family in zip(axes[1:], families):
        image = ax.imshow(kl[family], vmin=0, vmax=top, cmap="viridis")
        ax.set(xticks=range(len(keys)), yticks=range(len(keys)), xticklabels=ticks, yticklabels=ticks,
               title=f"output KL: {_label(family)}", xlabel="compression q (%)")
        for a in range(len(keys)):
            for b in range(len(keys)):
                ax.text(b, a, f"{kl[family][a][b]:.2f}", ha="center", va="center", fontsize=7, color="white")
    axes[1].set_ylabel("compression p (%); cell: KL(p || q)")
    fig.colorbar(image, ax=list(axes[1:]), shrink=0.8)
    fig.suptitle(f"{task}: similarity across widths")
    return fig
