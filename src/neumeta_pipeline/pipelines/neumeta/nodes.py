"""Thin Kedro nodes: parse parameters, call the library, return catalog artifacts."""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure

from ...config import (
    DataParams,
    DistributedParams,
    EvaluateParams,
    ExportParams,
    FitParams,
    INRParams,
    ModelParams,
    MorphParams,
    PermuteParams,
    PretrainParams,
    SampleParams,
    TrainINRParams,
)
from ...data import SEGMENTATION_SOURCES, Augment, STREAMED_SOURCE, folder_splits, load_source, make_splits, pad_label_maps, split_data
from ...errors import UserError
from ...models import build_model, load_encoder_weights, load_pretrained_weights
from ...models.checkpoint import example_input, load_model, model_checkpoint
from ...neumeta import fuse, graph, permute
from ...neumeta.export import export_onnx as onnx_export
from ...neumeta.distributed import launch, rank_and_world
from ...neumeta.inr import NeuMetaINR
from ...neumeta.metrics import collapse_alarms, count_params_and_macs, weight_norm
from ...neumeta.morph import (
    MorphSpec,
    batchnorm_statistics,
    blocks,
    generated_modules,
    has_batchnorm,
    shared_parameters,
)
from ...neumeta.resume import ResumeFile, content_hash
from ...neumeta.sample import load_inr, renormalisation_problems, renormalise, sample_model
from ...neumeta.tasks import METRIC_NAMES, metric_scale, metric_unit, task_kind
from ...neumeta.train import (
    FitConfig,
    NeuMetaLoss,
    task_objective,
    device_label,
    fit,
    fit_reconstruction,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)


def prepare_data(data: dict, seed: int, kind: str = "classification") -> dict:
    """Read the task's images (downloading when allowed) and split train/validation/test.

    A generation task's images stay in [0, 1] (mean 0, std 1): the VAE's Bernoulli likelihood
    and MSE are measured on pixel intensities, not on normalised values."""
    params = DataParams.model_validate(data)
    if params.source == STREAMED_SOURCE:
        splits = folder_splits(
            params.root, params.val_fraction, seed, params.max_train, params.image_size, params.resize_size,
            params.mean, params.std, params.workers,
        )
    else:
        arrays = load_source(params.source, params.root, params.download, params.image_size, params.max_train, seed)
        splits = make_splits(arrays, params.val_fraction, params.test_fraction, seed, params.max_train)
    if params.source in SEGMENTATION_SOURCES:
        splits = {**pad_label_maps(splits, params.pad_to_multiple), "kind": "segmentation"}
    if kind == "generation":
        channels = len(splits["mean"])
        splits = {**splits, "kind": "generation", "mean": [0.0] * channels, "std": [1.0] * channels}
    splits["made_with"] = params.split_settings(seed)  # a later stage refuses a split made otherwise
    log.info(
        "data %s: %d train, %d validation, %d test images",
        params.source, len(splits["y_train"]), len(splits["y_val"]), len(splits["y_test"]),
    )
    return splits


def pretrain(
    splits: dict, model: dict, pretrain: dict, distributed: dict | None, seed: int, device: str, task: str
) -> tuple[dict, list[dict]]:
    """Train the full-width network that NeuMeta starts from; the best validation epoch is kept.

    With ``pretrain.weights`` the network starts from those weights instead and is only scored;
    with ``distributed`` settings the training runs data-parallel over that many processes.
    """
    params = PretrainParams.model_validate(pretrain)
    if params.weights is not None:
        return _pretrained_from_weights(splits, model, params, device)
    return run_distributed(distributed, task, "pretrain", _pretrain, splits, model, pretrain, seed, device, task)


def _pretrained_from_weights(splits: dict, model: dict, params: PretrainParams, device: str) -> tuple[dict, list[dict]]:
    arch = ModelParams.model_validate(model).model_dump()
    dev = resolve_device(device)
    net = build_model(arch["name"], **arch["kwargs"])
    load_pretrained_weights(net, arch["name"], params.weights)
    net = net.to(dev).eval()
    check_labels(splits, net, example_input(arch).to(dev))
    kind = task_kind(splits)
    score = kind.score(net, split_data(splits, "val", dev))
    log.info("pretrained %s from %s: validation %s %.4f (not trained here)", arch["name"], params.weights, kind.metric, score)
    return model_checkpoint(net, arch, val_accuracy=score), [{"epoch": 0, "val_score": score, "weights": params.weights}]


def run_distributed(distributed: dict | None, task: str, stage: str, body, *args):
    """``body(*args)`` in this process, or data-parallel over the processes ``distributed`` asks for."""
    if distributed is None:
        return body(*args)
    settings = DistributedParams.model_validate(distributed).model_dump()
    result = launch(settings, f"{task}-{stage}", body, *args)
    if result is None:
        raise UserError(
            f"{task}.{stage}: this machine is node {settings['node_rank']} of {settings['nnodes']} of a distributed run and has "
            f"done its share; node 0 holds the result and writes it, so the run stops here on this machine"
        )
    return result


def _pretrain(splits: dict, model: dict, pretrain: dict, seed: int, device: str, task: str) -> tuple[dict, list[dict]]:
    arch = ModelParams.model_validate(model).model_dump()
    params = pretrain_recipe(pretrain)
    dev = resolve_device(device)
    generator = seed_everything(seed)
    net = build_model(arch["name"], **arch["kwargs"])
    if arch["encoder_weights"]:
        load_encoder_weights(net, arch["encoder_weights"])
    net = net.to(dev)
    check_labels(splits, net, example_input(arch).to(dev))
    train, val = split_data(splits, "train", dev), split_data(splits, "val", dev)
    kind = task_kind(splits)
    with resume_file(params, task, "pretrain", seed, dev, {"model": arch}, {"splits": content_hash(splits)}) as resume:
        result = fit(net, task_objective(net, kind), train, lambda m: kind.score(m, val), fit_config(params), generator,
                     "pretrain", resume)
    log.info("pretrained %s: best validation %s %.4f at epoch %d", arch["name"], kind.metric, result.best_score, result.best_epoch)
    return model_checkpoint(result.best, arch, val_accuracy=result.best_score), result.history


def extract_dependency_graph(pretrained_model: dict) -> dict:
    """Channel groups of the pretrained network: which tensor slices share one permutation/width."""
    net = load_model(pretrained_model)
    groups = graph.channel_groups(net, example_input(pretrained_model["arch"]))
    return {"arch": pretrained_model["arch"], "groups": [g.to_dict() for g in groups]}


def permute_weights(pretrained_model: dict, dependency_graph: dict, permute_params: dict) -> tuple[dict, dict]:
    """Reorder channels along a shortest Hamiltonian path per group; the function is unchanged.

    With ``objective: fused`` the orders are found on the BatchNorm-folded view (the tensors the
    INR generates) and applied to the unfused network, so this stage's output and the next
    stage's fusion stay as they are; ``tv_fused_*`` in the report is the TV of ``fused_model``.
    """
    params = PermuteParams.model_validate(permute_params)
    net = load_model(pretrained_model)
    groups = [graph.ChannelGroup.from_dict(g) for g in dependency_graph["groups"]]
    if not params.enabled:
        tv, tv_fused = permute.total_variation(net, groups), permute.fused_total_variation(net, groups)
        report = {"enabled": False, "objective": params.objective, "tv_before": tv, "tv_after": tv,
                  "tv_fused_before": tv_fused, "tv_fused_after": tv_fused}
        return model_checkpoint(net, pretrained_model["arch"]), report
    permuted, report = permute.smooth(
        net, example_input(pretrained_model["arch"]), seed=params.seed, solver=params.solver,
        time_limit=params.time_limit, groups=groups, objective=params.objective,
    )
    log.info(
        "permutation (%s objective): total variation %.4g -> %.4g, of the fused tensors %s -> %s",
        params.objective, report["tv_before"], report["tv_after"],
        _fmt(report["tv_fused_before"]), _fmt(report["tv_fused_after"]),
    )
    return model_checkpoint(permuted, pretrained_model["arch"]), {"enabled": True, **report}


def fuse_batchnorm(permuted_model: dict, morph: dict) -> dict:
    """Fold every BatchNorm into the layer before it, so only conv/linear tensors are generated
    (``morph.batchnorm: fold``); with ``keep`` the network goes on unchanged, BatchNorm included."""
    if MorphParams.model_validate(morph).batchnorm == "keep":
        log.info("batchnorm: keep, so BatchNorm is not folded: the INR generates the layers before it")
        return model_checkpoint(load_model(permuted_model), permuted_model["arch"], fused=False)
    fused = fuse.fuse_batchnorm(load_model(permuted_model))
    return model_checkpoint(fused, permuted_model["arch"], fused=True)


def train_inr(
    fused_model: dict, splits: dict, morph: dict, inr: dict, train_inr: dict, distributed: dict | None, seed: int, device: str,
    task: str,
) -> tuple[dict, dict]:
    """Fit the hypernetwork: task loss at sampled widths, reconstruction at full width, L2.

    With ``block_epochs`` > 0 the generated blocks join one at a time, from input to output, each
    stage training every block added so far for ``block_epochs`` epochs, the last (all blocks) for
    ``epochs``; a joining block's MLPs start from its predecessor's (``block_init``). With
    ``distributed`` settings every process trains on its share of each batch at a width of its own,
    so one step averages the gradients of several widths.
    """
    return run_distributed(distributed, task, "train_inr", _train_inr, fused_model, splits, morph, inr, train_inr, seed, device, task)


def _train_inr(
    fused_model: dict, splits: dict, morph: dict, inr: dict, train_inr: dict, seed: int, device: str, task: str
) -> tuple[dict, dict]:
    morph_p, inr_p = MorphParams.model_validate(morph), INRParams.model_validate(inr)
    train_p = TrainINRParams.model_validate(train_inr)
    dev = resolve_device(device)
    generator = seed_everything(seed)
    target = load_model(fused_model).to(dev)
    for p in target.parameters():
        p.requires_grad_(False)
    spec = MorphSpec(target, example_input(fused_model["arch"]).to(dev), morph_p.generated, morph_p.morphable, narrowing=morph_p.narrowing)
    options = {
        **inr_p.model_dump(),
        "shared": shared_parameters(target, spec, inr_p.shared),
        "branch_scale": generated_modules(spec, inr_p.branch_scale, "branch_scale"),
    }
    hyper = NeuMetaINR(spec, **options, reference=target.state_dict()).to(dev)
    # A network that keeps BatchNorm (batchnorm: keep) trains with batch statistics, and is scored
    # with statistics estimated at each width (the pretrained ones do not fit generated weights). A
    # folded network's BatchNorm that had no layer to fold into keeps its pretrained statistics.
    keeps_batchnorm = not fused_model["fused"] and has_batchnorm(target)
    rank, world = rank_and_world()
    # One process draws data order and widths from one stream (as always). Processes of a
    # distributed run share the data order, so each draws its widths from a stream of its own.
    widths_generator = generator if not torch.distributed.is_initialized() else torch.Generator().manual_seed(seed + 7919 * (rank + 1))
    loss = NeuMetaLoss(
        hyper, target, spec, tuple(morph_p.compression_range), train_p.coord_noise,
        train_p.lambda_recon, train_p.lambda_reg, widths_generator, train_p.tensor_fraction,
        train_p.width_sampling, train_p.widths_per_step, train_p.lambda_kd, train_p.kd_temperature,
        batch_stats=keeps_batchnorm, kind=task_kind(splits), recon_share=train_p.recon_share, sandwich=train_p.sandwich,
    )
    train, val = split_data(splits, "train", dev), split_data(splits, "val", dev)
    calibration = first_images(train, morph_p.calibration_images) if keeps_batchnorm else None
    if train_p.teacher_cache:
        # The teacher is frozen and the images are not augmented (checked with the parameters), so
        # its outputs are computed once here instead of once per step.
        train = train.with_outputs(loss.teacher_outputs(train.x, train_p.batch_size))

    def validate(module: NeuMetaINR) -> float:
        # Mean validation score (accuracy, mIoU) over a few seen widths (of the blocks trained so far). K = 1
        # without noise is fast; the deployed K and noise select the epoch whose sampled networks
        # are best. The noise has its own fixed stream, so validating never shifts the training's
        # random draws.
        scores, noise = [], torch.Generator().manual_seed(seed)
        for gamma in train_p.validation_compressions:
            widths = loss.restrict(spec.widths(gamma))
            _, weights = loss.weights(module, widths, train_p.validation_noise, train_p.validation_samples, noise)
            if calibration is not None:
                tensors = {**spec.frozen_tensors(target, widths), **weights}
                weights = {**weights, **batchnorm_statistics(target, tensors, calibration)}
            scores.append(loss.kind.score(lambda x, **mode: spec.run(target, widths, weights, x, **mode), val))
        return sum(scores) / len(scores)

    # Stages: the blocks trained in each, and for how many epochs. One stage is the joint training.
    groups = blocks(spec) if train_p.block_epochs > 0 else [spec.generated_modules]
    stages = [(groups[: k + 1], train_p.block_epochs) for k in range(len(groups) - 1)] + [(groups, train_p.epochs)]
    names = ["train_inr"] if len(stages) == 1 else [f"train_inr-stage{k + 1}of{len(stages)}" for k in range(len(stages))]
    settings = {"morph": morph_p.model_dump(), "inr": inr_p.model_dump()}
    inputs = {"fused_model": content_hash(fused_model), "splits": content_hash(splits)}
    history, stage_log = [], []
    with contextlib.ExitStack() as files:
        # Every stage's resume file is held until the last stage ends, so an interruption in a late
        # stage replays the finished stages from their files instead of training them again.
        resumes = [files.enter_context(resume_file(train_p, task, name, seed, dev, settings, inputs)) for name in names]
        first = resumes[0]
        if first is not None and first.load() is not None:
            # The saved state already holds the warm-started INR; its record comes back with it.
            warm, warm_seconds = first.extra["warm_start"], first.extra["warm_seconds"]
        else:
            start = time.perf_counter()
            warm = fit_reconstruction(
                hyper, loss.reference, train_p.reconstruction_steps, train_p.reconstruction_lr, train_p.coord_noise, generator,
                train_p.reconstruction_schedule,
            )
            warm_seconds = time.perf_counter() - start
            if warm:
                log.info("INR reconstruction warm start: error %.4f -> %.4f in %d steps", warm[0], warm[-1], len(warm))
            if first is not None:
                first.extra = {"warm_start": warm, "warm_seconds": warm_seconds}
        for k, ((trained, epochs), name, resume) in enumerate(zip(stages, names, resumes)):
            modules = [m for block in trained for m in block]
            if len(stages) > 1:
                copied = []
                if k > 0 and train_p.block_init == "predecessor":
                    copied = hyper.copy_block(trained[-2], trained[-1])
                log.info("INR stage %d of %d: blocks %s; %s starts %s", k + 1, len(stages), _blocks_text(trained),
                         _blocks_text(trained[-1:]), f"as a copy of {_blocks_text(trained[-2:-1])}" if copied else "from its own weights")
            loss.active = None if k == len(stages) - 1 else {t.name for t in spec.tensors if t.module in modules}
            config = fit_config(train_p)
            config.epochs = epochs
            extra = (widths_generator,) if widths_generator is not generator else ()
            partial_steps = train_p.tensor_fraction < 1.0 or loss.active is not None
            result = fit(hyper, loss, train, validate, config, generator, name, resume, finish=False, extra_generators=extra,
                         partial_steps=partial_steps)
            # The next stage continues from this stage's selected (EMA) state.
            hyper.load_state_dict(result.best.state_dict())
            history += [{**h, "stage": k + 1} for h in result.history] if len(stages) > 1 else result.history
            stage_log.append({"stage": k + 1, "blocks": trained, "epochs": epochs, "best_epoch": result.best_epoch, "best_score": result.best_score,
                              "resumed_from_epoch": result.resumed_from})
        for resume in resumes:
            if resume is not None:
                resume.finish()
    log.info("INR: best mean validation %s %.4f at epoch %d", loss.kind.metric, result.best_score, result.best_epoch)
    checkpoint = {
        "spec": spec.to_dict(),
        "inr_config": hyper.config,
        "state_dict": {k: v.detach().cpu() for k, v in result.best.state_dict().items()},
        "val_score": result.best_score,
        "best_epoch": result.best_epoch,
        "generated_parameters": sum(math.prod(t.full_shape) for t in spec.tensors),
        "inr_parameters": sum(p.numel() for p in hyper.parameters()),
        # Training images that estimate a sampled width's BatchNorm statistics (none: folded).
        "calibration_images": morph_p.calibration_images if keeps_batchnorm else None,
        "trained_on": inputs,  # content hashes: which fused model and split this INR was fitted to
    }
    history = {
        "device": device_label(dev),
        "reconstruction_seconds": warm_seconds,
        "reconstruction_warm_start": warm[:: max(1, len(warm) // 100)],
        "resumed_from_epoch": sum(stage["resumed_from_epoch"] for stage in stage_log),  # over all stages
        **({"stages": stage_log} if len(stages) > 1 else {}),
        "epochs": history,
    }
    return checkpoint, history


def _blocks_text(blocks: list[list[str]]) -> str:
    return ", ".join("+".join(block) for block in blocks)


def sample_weights(inr_checkpoint: dict, fused_model: dict, splits: dict, sample: dict) -> dict:
    """A standalone network per requested compression, from K-sample averaged INR weights (and,
    where BatchNorm was kept, statistics estimated on the training images the INR was scored with).
    With ``renormalise_images``, each narrow network's generated channels are then rescaled to the
    activation statistics of the full-width network sampled the same way, on that many training
    images."""
    params = SampleParams.model_validate(sample)
    check_trained_on(inr_checkpoint, fused_model=fused_model, splits=splits)
    hyper = load_inr(inr_checkpoint)
    target = load_model(fused_model)
    if params.renormalise_images:
        problems = renormalisation_problems(target, hyper.spec)
        if problems:
            raise UserError(f"sample.renormalise_images is {params.renormalise_images}, but " + "; ".join(problems)
                            + ". Set sample.renormalise_images: 0 for this task.")
    count = inr_checkpoint.get("calibration_images")
    train = split_data(splits, "train", "cpu")
    calibration = first_images(train, count) if count else None

    def sampled(widths):
        return sample_model(hyper, target, widths, params.samples, params.noise, params.seed, calibration)

    full = hyper.spec.full_widths
    # The full-width network is the renormalisation's reference, sampled once and never changed.
    reference = sampled(full) if params.renormalise_images else None
    images = first_images(train, params.renormalise_images) if reference is not None else None
    models = {}
    for gamma in params.compressions:
        widths = hyper.spec.widths(gamma)
        if reference is not None and widths == full:
            net = reference
        else:
            net = sampled(widths)
            if reference is not None:
                renormalise(net, reference, hyper.spec, widths, images)
        models[f"{gamma:g}"] = model_checkpoint(
            net, fused_model["arch"], fused=fused_model.get("fused", True), widths=widths, compression=gamma, samples=params.samples,
            renormalise_images=params.renormalise_images,
            **({"trained_on": inr_checkpoint["trained_on"]} if inr_checkpoint.get("trained_on") else {}),
        )
    return models


def check_trained_on(
    checkpoint: dict, what: str = "INR checkpoint", rerun: str = "train the INR again (--from-nodes=<task>.train_inr)",
    **loaded: dict | str,
) -> None:
    """Refuse to use a trained model (an INR, the networks sampled from it, a baseline's network)
    with inputs other than those it was trained on: ``loaded`` names each input this stage read
    (``fused_model=...``, ``splits=...``: the object or its ``content_hash``, which a stage that
    checks many models computes once). Kedro loads the
    newest version of each input, so after another run of the task (another seed, say) a stage
    rerun on its own would pair this model with that run's network or split: same shapes,
    silently wrong figures, or test images the model was trained on. Checkpoints from before
    ``trained_on`` are not checked."""
    recorded = checkpoint.get("trained_on")
    if not recorded:
        return
    digests = {name: obj if isinstance(obj, str) else content_hash(obj) for name, obj in loaded.items() if name in recorded}
    stale = [name for name, digest in digests.items() if digest != recorded[name]]
    if stale:
        inputs = ",".join(f"<task>.{name}:<version>" for name in stale)
        raise UserError(
            f"the {what} was trained on another {' and '.join(stale)} than those loaded (a later run of the "
            f"task wrote newer versions). Load the versions of the run that trained it, e.g. --load-versions "
            f"'{inputs}' with that run's timestamp, or {rerun}"
        )


def evaluate(
    sampled_models: dict,
    pretrained_model: dict,
    fused_model: dict,
    splits: dict,
    morph: dict,
    evaluate_params: dict,
    task: str,
) -> tuple[dict, pd.DataFrame, go.Figure, Figure, Figure]:
    """Test scores (the task kind's: accuracy, or mIoU with per-class IoU, pixel accuracy and mean
    F1), parameters and MACs of every sampled width next to the pretrained network, and a picture
    of the first test images with their labels and every width's predictions.

    Reductions are relative to the fused full-width network, the deployable form of the
    pretrained one, so folding BatchNorm is not counted as compression.
    """
    params, morph_p = EvaluateParams.model_validate(evaluate_params), MorphParams.model_validate(morph)
    # One sample_weights call made every network, so the first one's record speaks for all.
    digest = content_hash(splits)
    check_trained_on(next(iter(sampled_models.values()), {}), "INR of the sampled networks", fused_model=fused_model, splits=digest)
    test = split_data(splits, "test", "cpu")
    kind = task_kind(splits, nll_samples=params.nll_samples, nll_images=params.nll_images)
    x0 = example_input(pretrained_model["arch"])
    base = load_model(pretrained_model)
    fused = load_model(fused_model)
    base_params, base_macs = count_params_and_macs(fused, x0)
    rows = [result_row(task, "pretrained", 0.0, True, {}, table_scores(kind, base, test, params.batch_size, splits),
                       *count_params_and_macs(base, x0), base_params, base_macs, split_label(digest))]
    images, labels = test.take(torch.arange(min(EXAMPLES if kind.name != "generation" else GENERATION_EXAMPLES, len(test))))
    latents = _prior_draws(base, images) if kind.name == "generation" else None
    predictions = {"pretrained": _example_outputs(kind, base, images, latents)}
    norms = {}
    for key, checkpoint in sampled_models.items():
        net = load_model(checkpoint)
        gamma = float(checkpoint["compression"])
        n_params, n_macs = count_params_and_macs(net, x0)
        norms[gamma] = weight_norm(net)
        predictions[f"{100 * gamma:g}%"] = _example_outputs(kind, net, images, latents)
        rows.append(
            result_row(task, "neumeta", gamma, morph_p.trains(gamma), checkpoint["widths"],
                       table_scores(kind, net, test, params.batch_size, splits), n_params, n_macs, base_params, base_macs, split_label(digest))
        )
    table = pd.DataFrame(rows)
    ours = table[table.method == "neumeta"]
    chance = None
    if kind.name == "classification":
        with torch.no_grad():
            chance = 1.0 / base.eval()(x0).shape[1]
    alarms = collapse_alarms(dict(zip(ours.compression, ours[kind.metric])), norms, weight_norm(base), chance, rows[0][kind.metric],
                             _generated_ratio(sampled_models, fused, fused_model, morph_p), METRIC_NAMES[kind.metric])
    for alarm in alarms:
        log.warning("COLLAPSE ALARM (%s): %s", task, alarm)
    metrics = {
        "task": task,
        "metric": kind.metric,
        f"pretrained_{kind.metric}": rows[0][kind.metric],
        "results": table[table.method == "neumeta"].to_dict(orient="records"),
        "collapse_alarms": alarms,
    }
    examples = (_generation_png(task, images, predictions) if kind.name == "generation"
                else _examples_png(task, images, labels, predictions, splits))
    seen = morph_p.compression_range
    charts = _plotly_chart(table, task, seen, kind.metric), _png_chart(table, task, seen, kind.metric)
    return metrics, table, *charts, examples


def export_onnx(sampled_models: dict, export: dict) -> tuple[bytes, dict]:
    """One sampled width as an ONNX file, checked against PyTorch with onnxruntime."""
    params = ExportParams.model_validate(export)
    checkpoint = sampled_models[f"{params.compression:g}"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        report = onnx_export(load_model(checkpoint), example_input(checkpoint["arch"], batch=2), path, params.rtol, params.atol)
        if report["external_data"]:
            raise RuntimeError("the network's weights exceed the single-file ONNX limit; export it with neumeta.export directly")
        data = path.read_bytes()
    report = {**report, "compression": params.compression, "widths": checkpoint["widths"]}
    report.pop("path")
    return data, report


def pretrain_recipe(pretrain: dict) -> FitParams:
    """The training recipe of the ``pretrain`` section (which the baselines train with too),
    without ``weights``: the loop's settings, and what names its resume files."""
    PretrainParams.model_validate(pretrain)
    return FitParams.model_validate({k: v for k, v in pretrain.items() if k != "weights"})


def fit_config(params: FitParams) -> FitConfig:
    """The loop's settings from a validated parameter section."""
    settings = {k: v for k, v in params.model_dump().items() if k in FitConfig.__dataclass_fields__}
    if params.augment == "scale_crop_flip":
        settings["augment"] = Augment(params.augment, tuple(params.crop_size), tuple(params.scale_range))
    return FitConfig(**settings)


def resume_file(
    params: FitParams, task: str, stage: str, seed: int, device: torch.device, settings: dict, inputs: dict
) -> contextlib.AbstractContextManager[ResumeFile | None]:
    """The stage's resume file when ``resume`` is on (else nothing), in
    ``data/06_models/<task>/resume/``, named by everything that determines the stage's result: the
    seed, the device, the loop's settings and ``settings`` (the other parameter sections the stage
    reads) and ``inputs`` (content hashes of the stage's inputs). A working file: it is removed when
    the stage finishes."""
    rank, world = rank_and_world()
    if not params.resume or rank > 0:  # in a distributed run rank 0 keeps the file (fit broadcasts it)
        return contextlib.nullcontext()
    config = {
        "seed": seed,
        "device": device_label(device),
        **({"processes": world} if torch.distributed.is_initialized() else {}),
        "loop": params.model_dump(exclude={"progress", "resume"}),  # switches that do not change the result
        **settings,
        "inputs": inputs,
    }
    return ResumeFile(Path("data/06_models") / task / "resume", stage, config)


def _fmt(value: float | None) -> str:
    # The fused TV is None for a network torch.fx cannot trace (the raw objective still runs).
    return "n/a" if value is None else f"{value:.4g}"


def first_images(data, count: int) -> torch.Tensor:
    """The first ``count`` images of a split (all when it has fewer), as the network sees them."""
    return data.take(torch.arange(min(count, len(data))))[0]


def check_labels(splits: dict, net: torch.nn.Module, x: torch.Tensor) -> None:
    """The network's outputs fit the split: a class per label (void aside), or for generation the
    input's own shape (labels are unused)."""
    with torch.no_grad():
        out = net.eval()(x)
    if splits.get("kind") == "generation":
        if out.shape != x.shape:
            raise ValueError(f"a generation task's network must reconstruct its input: it maps {tuple(x.shape)} to {tuple(out.shape)}")
        return
    classes = out.shape[1]
    labels = torch.cat([splits["y_train"].flatten(), splits["y_test"].flatten()])
    if splits.get("ignore_index") is not None:
        labels = labels[labels != splits["ignore_index"]]  # void pixels have no output channel
    top = int(labels.max())
    if top >= classes:
        raise ValueError(f"labels go up to {top} but the model has {classes} outputs: set model.kwargs.num_classes")


def _generated_ratio(sampled_models: dict, fused: torch.nn.Module, fused_model: dict, morph_p: MorphParams) -> float | None:
    """The median over generated weight tensors of the full-width sampled network's norm over the
    pretrained one's (None without a full-width sample). Per tensor, and weights only: a generated
    bias that keeps a folded BatchNorm's shift can hold most of the norm while the weights are gone."""
    if "0" not in sampled_models:
        return None
    spec = MorphSpec(fused, example_input(fused_model["arch"]), morph_p.generated, morph_p.morphable)
    sampled, reference = sampled_models["0"]["state_dict"], fused_model["state_dict"]
    ratios = [float(sampled[t.name].norm() / reference[t.name].norm().clamp_min(1e-12)) for t in spec.tensors if reference[t.name].dim() > 1]
    return float(torch.tensor(ratios).median()) if ratios else None


def table_scores(kind, forward, data, batch_size: int, splits: dict) -> dict:
    """A result row's score columns: the kind's metrics, a segmentation's per-class IoU as one
    column per class (``iou_<class>``)."""
    scores = kind.scores(forward, data, batch_size)
    per_class = scores.pop("iou", None)
    if per_class is not None:
        names = splits.get("class_names") or [str(c) for c in range(len(per_class))]
        scores.update({f"iou_{name}": value for name, value in zip(names, per_class)})
    return scores


def split_label(digest: str) -> str:
    """The short form of a data split's content hash that every result row carries."""
    return digest[:12]


def result_row(task, method, gamma, seen, widths, scores: dict, n_params, n_macs, base_params, base_macs, split: str) -> dict:
    return {
        "task": task,
        "method": method,
        # Which data split's test images scored the row, so tables of different runs are never compared.
        "split": split,
        "compression": gamma,
        "seen_in_training": bool(seen),
        "widths": ",".join(f"{k}={v}" for k, v in widths.items()) or "full",
        **scores,
        "params": n_params,
        "macs": n_macs,
        "params_reduction": 1.0 - n_params / base_params,
        "macs_reduction": 1.0 - n_macs / base_macs,
    }


def _plotly_chart(table: pd.DataFrame, task: str, seen: tuple[float, float], metric: str = "accuracy") -> go.Figure:
    ours = table[table.method == "neumeta"].sort_values("compression")
    name, scale, unit = METRIC_NAMES[metric], metric_scale(metric), metric_unit(metric)
    shown = "%{y:.2f}%%" if scale == 100 else "%{y:.4g}"
    fig = go.Figure()
    fig.add_vrect(x0=100 * seen[0], x1=100 * seen[1], fillcolor="lightgrey", opacity=0.3, line_width=0,
                  annotation_text="trained widths")
    fig.add_trace(go.Scatter(x=100 * ours.compression, y=scale * ours[metric], mode="lines+markers", name="NeuMeta",
                             text=ours.widths, hovertemplate=f"%{{x}}%%: {shown} (%{{text}})"))
    fig.add_hline(y=scale * table[metric].iloc[0], line_dash="dash", annotation_text="pretrained (full width)")
    fig.update_layout(title=f"{task}: test {name} vs compression", xaxis_title="compression of morphable channels (%)",
                      yaxis_title=f"test {name}{unit}")
    return fig


EXAMPLES = 4  # test images in the examples picture
GENERATION_EXAMPLES = 8  # a VAE's: reconstructed test images, and as many prior samples


@torch.no_grad()
def _prior_draws(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Latents from the prior N(0, I), one per example image, from a fixed seed: every width
    decodes the same ones."""
    latent = net.eval()(images[:1], mode="encode")[0].shape[1]
    return torch.randn(len(images), latent, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _example_outputs(kind, net: torch.nn.Module, images: torch.Tensor, latents: torch.Tensor | None):
    """What the examples picture shows of one network: its predicted labels (or label maps), or a
    VAE's reconstructions of ``images`` and decodings of the prior ``latents``."""
    net = net.eval()
    if kind.name == "generation":
        return net(images), net(latents, mode="decode")
    return net(images).argmax(dim=1)


def _generation_png(task: str, images: torch.Tensor, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Figure:
    """One row per network (pretrained, then each width): reconstructions of the first test images
    (the top row shows the images), then decodings of the same prior draws for every row."""
    n = len(images)
    rows = [("test images", images, None), *((key, recon, samples) for key, (recon, samples) in outputs.items())]
    fig = Figure(figsize=(0.9 * 2 * n + 0.6, 0.95 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 2 * n, squeeze=False)
    for r, (key, recon, samples) in enumerate(rows):
        shown = [*recon, *(samples if samples is not None else [None] * n)]
        for c, (ax, picture) in enumerate(zip(axes[r], shown)):
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if picture is not None:
                picture = picture.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.set_ylabel(key, fontsize=7, rotation=0, ha="right", va="center")
            if r == 0 and c in (0, n):
                ax.set_title("reconstructions" if c == 0 else "prior samples", fontsize=8, loc="left")
    fig.suptitle(f"{task}: reconstructions of the first test images and samples from the prior, per width", fontsize=9)
    return fig


def _examples_png(
    task: str, images: torch.Tensor, labels: torch.Tensor, predictions: dict[str, torch.Tensor], splits: dict
) -> Figure:
    """The first test images with their labels and each network's predictions: for classifiers one
    image per column, titled with the label and every width's answer; for segmentation one image
    per row, then its label map and every width's (void in black)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    mean = torch.tensor(splits["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(splits["std"]).view(1, -1, 1, 1)
    shown = (images.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    names = splits.get("class_names") or [str(c) for c in range(splits["num_classes"])]
    grey = {"cmap": "gray"} if shown.shape[-1] == 1 else {}
    if labels.dim() == 1:
        fig = Figure(figsize=(2.6 * len(shown), 3.2 + 0.16 * len(predictions)), layout="constrained")
        for i, ax in enumerate(fig.subplots(1, len(shown), squeeze=False)[0]):
            ax.imshow(shown[i].squeeze(-1) if grey else shown[i], **grey)
            answers = "\n".join(f"{key}: {names[int(p[i])]}" for key, p in predictions.items())
            ax.set_title(f"label {names[int(labels[i])]}\n{answers}", fontsize=7)
            ax.axis("off")
    else:
        void = splits.get("ignore_index")
        # Colour 0 is void (black), class c is colour c + 1 (tab20's colours, repeating past 20).
        colours = ListedColormap([(0.0, 0.0, 0.0), *(colormaps["tab20"](c % 20) for c in range(len(names)))])

        def paint(label_map: torch.Tensor) -> torch.Tensor:
            shifted = label_map.cpu() + 1
            return shifted.masked_fill(label_map.cpu() == void, 0) if void is not None else shifted

        columns = ["image", "label", *predictions]
        fig = Figure(figsize=(2.2 * len(columns), 1.8 * len(shown)), layout="constrained")
        axes = fig.subplots(len(shown), len(columns), squeeze=False)
        for i in range(len(shown)):
            maps = [paint(labels[i]), *(paint(p[i]) for p in predictions.values())]
            axes[i][0].imshow(shown[i])
            for ax, label_map in zip(axes[i][1:], maps):
                ax.imshow(label_map.numpy(), cmap=colours, vmin=0, vmax=len(names), interpolation="nearest")
            for ax, title in zip(axes[i], columns):
                ax.axis("off")
                if i == 0:
                    ax.set_title(title, fontsize=8)
    fig.suptitle(f"{task}: first test images", fontsize=9)  # constrained layout keeps it clear of the titles
    return fig


def _png_chart(table: pd.DataFrame, task: str, seen: tuple[float, float], metric: str = "accuracy") -> Figure:
    # A bare Figure, not pyplot: no global backend switch, no window, nothing left open.
    ours = table[table.method == "neumeta"].sort_values("compression")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.axvspan(100 * seen[0], 100 * seen[1], color="lightgrey", alpha=0.5, label="trained widths")
    name, scale = METRIC_NAMES[metric], metric_scale(metric)
    ax.plot(100 * ours.compression, scale * ours[metric], "o-", label="NeuMeta")
    ax.axhline(scale * table[metric].iloc[0], ls="--", color="black", label="pretrained (full width)")
    ax.set(xlabel="compression of morphable channels (%)", ylabel=f"test {name}{metric_unit(metric)}", title=f"{task}: {name} vs compression")
    ax.legend()
    fig.tight_layout()
    return fig
