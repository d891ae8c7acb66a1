"""Validated parameters of one task (``conf/base/parameters_<task>.yml``).

Every section is a pydantic model that forbids unknown keys, so a typo or an out-of-range value
fails with a message naming the key before any data is read or any training starts.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .baselines.pruning import IMPORTANCES
from .data import DEVICE_AUGMENTATIONS, SEGMENTATION_SOURCES, SOURCES, STREAMED_SOURCE
from .errors import UserError
from .models import MODELS
from .neumeta.inr import BASES, LAYOUTS, MODULATIONS, NOISE_SCALINGS
from .neumeta.permute import OBJECTIVES
from .neumeta.permute import SOLVERS as SOLVERS_TSP
from .neumeta.tasks import KINDS
from .neumeta.train import RECONSTRUCTION_SCHEDULES, WIDTH_SAMPLING


class ConfigError(UserError):
    """A parameter is invalid; the message names the task, the key and the valid choices."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Sources whose images are brought to data.image_size: imagefolder crops to it, voc resizes and pads,
# celeba centre-crops the face and resizes.
_SIZED = (STREAMED_SOURCE, "voc", "celeba")


class DataParams(_Section):
    source: Literal[SOURCES]  # type: ignore[valid-type]
    root: str = "data/01_raw"
    download: bool = True
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="only for sources without a test split")
    max_train: int | None = Field(None, ge=1)
    # Streamed sources (imagefolder) only, decoded from disk by worker processes batch by batch;
    # image_size applies to voc and celeba too.
    image_size: int = Field(
        224, ge=8, description="imagefolder: side of the square crop the network sees; voc: side of the square every image "
        "is resized (longer side) and padded to; celeba: side its 148x148 centre crops are resized to"
    )
    resize_size: int = Field(256, ge=8, description="imagefolder: evaluation resizes the shorter side to this, then centre-crops")
    mean: list[float] | None = Field(None, min_length=3, max_length=3, description="imagefolder: per-channel mean (None: estimated)")
    std: list[float] | None = Field(None, min_length=3, max_length=3, description="imagefolder: per-channel std (None: estimated)")
    workers: int = Field(4, ge=0, description="imagefolder: decoding processes of the data loader")
    pad_to_multiple: int = Field(
        1, ge=1, description="segmentation: pad images and label maps (void) to sides divisible by this (U-Net: 32)"
    )

    @model_validator(mode="after")
    def _streamed_keys(self) -> DataParams:
        if self.source != STREAMED_SOURCE:
            keys = ("resize_size", "mean", "std", "workers") + (() if self.source in _SIZED else ("image_size",))
            set_keys = sorted(k for k in keys if k in self.model_fields_set)
            if set_keys:
                others = " and ".join(repr(source) for source in _SIZED if source != STREAMED_SOURCE)
                also = f" (image_size also to {others})" if "image_size" in set_keys else ""
                raise ValueError(f"data keys {set_keys} only apply to source {STREAMED_SOURCE!r}{also}, not {self.source!r}")
        if self.source == "voc" and self.image_size % self.pad_to_multiple:
            raise ValueError(
                f"data.image_size {self.image_size} must be divisible by data.pad_to_multiple {self.pad_to_multiple}: VOC's "
                f"images are padded to image_size squares, which the network takes as they are"
            )
        if self.source == "celeba" and self.download:
            raise ValueError(
                "data.download is true (its default when unset), but CelebA is never downloaded: torchvision fetches it "
                "from Google Drive, whose quota and confirmation pages make that fail more often than not. Put "
                "img_align_celeba/ and list_eval_partition.txt in <data.root>/celeba (README: Tasks) and set download: false"
            )
        if self.pad_to_multiple > 1 and self.source not in SEGMENTATION_SOURCES:
            raise ValueError(f"data.pad_to_multiple applies to segmentation sources {SEGMENTATION_SOURCES}, not {self.source!r}")
        if self.source == STREAMED_SOURCE and self.resize_size < self.image_size:
            raise ValueError(
                f"data.resize_size {self.resize_size} must be >= data.image_size {self.image_size} (it is centre-cropped to it)"
            )
        return self

    def split_settings(self, seed: int) -> dict:
        """Everything that decides which images land in which split (not ``download``, nor how
        many processes decode them)."""
        # Keys of other kinds of source are left out, so a split's record does not change when a
        # kind of source gains a setting.
        skip = {"download", "workers"}
        if self.source != STREAMED_SOURCE:
            skip |= {"resize_size", "mean", "std"}
        if self.source not in _SIZED:
            skip.add("image_size")
        if self.source not in SEGMENTATION_SOURCES:
            skip.add("pad_to_multiple")
        return {**self.model_dump(exclude=skip), "seed": seed}


class ModelParams(_Section):
    name: str
    kwargs: dict = {}
    input_shape: list[int] = Field(min_length=1)
    encoder_weights: str | None = Field(
        None, description="unet: a local file of the encoder backbone's weights (e.g. torchvision's resnet18 .pth) that "
        "every trained network starts from (narrower ones take the leading channels); None: random initialisation"
    )

    @model_validator(mode="after")
    def _encoder(self) -> ModelParams:
        if self.encoder_weights is not None and self.name != "unet":
            raise ValueError(f"model.encoder_weights applies to unet (an encoder and a decoder), not {self.name!r}")
        return self

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
        return name

    @field_validator("kwargs")
    @classmethod
    def _positive_widths(cls, kwargs: dict) -> dict:
        for key, value in kwargs.items():
            if "width" in key and isinstance(value, int) and value < 1:
                raise ValueError(f"model width {key}={value} must be >= 1")
        return kwargs


class FitParams(_Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    augment: Literal["none", "crop_flip", "scale_crop_flip", "resized_crop_flip"] = Field(
        "none",
        description="crop_flip: padded crops + flips; scale_crop_flip: random scale, crop_size window, flip (both for "
        "device-resident data); resized_crop_flip: imagefolder's",
    )
    crop_size: list[int] | None = Field(
        None, min_length=2, max_length=2, description="scale_crop_flip: (height, width) of the training windows"
    )
    scale_range: list[float] = Field(
        [0.5, 2.0], min_length=2, max_length=2, description="scale_crop_flip: images are rescaled by a factor drawn from this range"
    )
    progress: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    resume: bool = True  # continue an interrupted run from its last finished epoch


    @model_validator(mode="after")
    def _scale_crop(self) -> FitParams:
        if self.augment == "scale_crop_flip":
            if self.crop_size is None or min(self.crop_size) < 1:
                raise ValueError("augment 'scale_crop_flip' needs crop_size: [height, width] of the training windows, e.g. [128, 128]")
            low, high = self.scale_range
            if not 0 < low <= high:
                raise ValueError(f"scale_range {self.scale_range} must be [low, high] with 0 < low <= high")
        elif "crop_size" in self.model_fields_set or "scale_range" in self.model_fields_set:
            raise ValueError(f"crop_size and scale_range apply to augment 'scale_crop_flip', not {self.augment!r}")
        return self


class PretrainParams(FitParams):
    weights: str | None = Field(
        None,
        description="start from these weights instead of training: a local torchvision weights file (.pth, loaded with "
        "weights_only) or a torchvision weights name such as IMAGENET1K_V1 (downloaded into the torch hub cache)",
    )


class DistributedParams(_Section):
    """Data-parallel training over processes started by PyTorch's elastic launcher (torchrun's)."""

    nproc_per_node: int = Field(1, ge=1, description="worker processes per machine (one per GPU)")
    nnodes: int = Field(1, ge=1, description="machines")
    node_rank: int = Field(0, ge=0, description="this machine's index; node 0 writes the results")
    rdzv_endpoint: str | None = Field(None, description="host:port of node 0 (several machines)")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on GPUs, gloo on CPUs")

    @model_validator(mode="after")
    def _rendezvous(self) -> DistributedParams:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("distributed.nnodes > 1 needs distributed.rdzv_endpoint: 'host:port' of node 0, reachable from every node")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"distributed.node_rank {self.node_rank} must be below distributed.nnodes {self.nnodes}")
        return self


class PermuteParams(_Section):
    enabled: bool = True
    solver: Literal[SOLVERS_TSP] = "auto"  # type: ignore[valid-type]
    time_limit: float | None = Field(None, gt=0.0, description="seconds per group; None is deterministic")
    seed: int = 0
    objective: Literal[OBJECTIVES] = Field(  # type: ignore[valid-type]
        "fused", description="TV of the BatchNorm-folded tensors the INR generates (the paper), or raw: BN included"
    )


def _check_compression(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"compression must be in [0, 1) (a fraction of channels removed), got {value}")
    return value


class MorphParams(_Section):
    generated: str | list[str] = "all"
    morphable: str | list[str] = "all"
    compression_range: tuple[float, float] = (0.0, 0.5)
    batchnorm: Literal["fold", "keep"] = Field(
        "fold",
        description="fold BatchNorm into the layers the INR generates (the paper), or keep it: it normalises with batch "
        "statistics in training, and each sampled width gets statistics estimated on training images",
    )
    calibration_images: int = Field(
        512, ge=1, description="training images that estimate each width's BatchNorm statistics (batchnorm: keep)"
    )
    narrowing: Literal["first", "cells"] = Field(
        "first",
        description="how tensors the INR does not generate (frozen, or trained directly with inr.shared) are cut to a "
        "narrower width: their first channels (the paper), or each narrow channel the mean of the cell of full channels "
        "its generated weights stand for (a sum along a weight's input channels)",
    )

    @field_validator("compression_range")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = (_check_compression(v) for v in value)
        if low > high:
            raise ValueError(f"compression_range must be [low, high] with low <= high, got {list(value)}")
        return value

    def trains(self, compression: float) -> bool:
        """Whether the INR is trained at this compression (the reports' ``seen_in_training``)."""
        low, high = self.compression_range
        return low <= compression <= high


class INRParams(_Section):
    num_frequencies: int = Field(12, ge=1, le=24)
    hidden: int = Field(256, ge=1)
    depth: int = Field(5, ge=0)
    layout: Literal[LAYOUTS] = Field(  # type: ignore[valid-type]
        "per_tensor",
        description="one MLP per generated tensor; per_kind: one per (weight kernel size | bias); per_shape: one per full tensor shape",
    )
    modulation: Literal[MODULATIONS] = Field(  # type: ignore[valid-type]
        "none",
        description="film: each generated tensor gets a learned scale and shift of every hidden layer of its MLP, "
        "(depth + 1) * 2 * hidden values, so tensors sharing an MLP (per_shape, per_kind) need not be told apart by the layer coordinate alone",
    )
    centred: bool = Field(False, description="channel coordinates at cell centres, (c + 0.5) / C, instead of c / C")
    noise_scaling: Literal[NOISE_SCALINGS] = Field(  # type: ignore[valid-type]
        "width", description="coordinate noise of one channel cell of the current width, or fixed: of the full width"
    )
    size_inputs: bool = Field(
        True, description="the INR sees each layer's current channel counts; false: the full counts at every width (weights depend on position alone)"
    )
    shared: str | list[str] = Field(
        [], description="modules not generated whose parameters are trained directly, shared by every width ('all': every one)"
    )
    branch_scale: str | list[str] = Field(
        [], description="generated modules whose output gets one learnable scale (the last conv of a residual branch: SkipInit)"
    )
    branch_scale_init: float = Field(1.0, description="1 keeps the pretrained function; 0 starts each branch switched off (SkipInit)")
    base: Literal[BASES] = Field(  # type: ignore[valid-type]
        "none",
        description="none: the MLPs' values are the weights (the paper); frozen: they correct a stored copy of the pretrained "
        "generated tensors, narrowed by morph.narrowing; trained: that copy is also trained, shared by every width",
    )


class TrainINRParams(FitParams):
    reconstruction_steps: int = Field(0, ge=0, description="reconstruction-only warm start before the main loop")
    reconstruction_lr: float = Field(1e-3, gt=0.0)
    reconstruction_schedule: Literal[RECONSTRUCTION_SCHEDULES] = Field(  # type: ignore[valid-type]
        "constant", description="the warm start's learning rate: constant, or cosine (decayed to zero over the steps)"
    )
    coord_noise: float = Field(1.0, ge=0.0)
    lambda_recon: float = Field(1.0, ge=0.0)
    recon_share: float = Field(
        1.0, gt=0.0, le=1.0, description="share of steps (drawn per step) that add the full-width reconstruction term: a cheaper step"
    )
    lambda_reg: float = Field(1e-4, ge=0.0)
    tensor_fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of generated tensors trained per step")
    width_sampling: Literal[WIDTH_SAMPLING] = Field(  # type: ignore[valid-type]
        "continuous", description="continuous: a uniform compression, rounded (the paper); uniform: each width configuration equally often"
    )
    widths_per_step: int = Field(1, ge=1, description="width configurations per step (the first the full width when > 1)")
    sandwich: bool = Field(
        False, description="the narrowest width of the range in every step, second after the full width (needs widths_per_step >= 3)"
    )
    lambda_kd: float = Field(0.0, ge=0.0, description="distillation from the full-width network's outputs at narrower widths")
    kd_temperature: float = Field(1.0, gt=0.0)
    teacher_cache: bool = Field(
        False, description="compute the distillation teacher's outputs on the training images once, not in every step"
    )
    validation_compressions: list[float] = Field([0.0, 0.25, 0.5], min_length=1)
    validation_samples: int = Field(1, ge=1, description="K for model selection (sample.samples to select as deployed)")
    validation_noise: float = Field(0.0, ge=0.0, description="coordinate noise for model selection (sample.noise likewise)")
    block_epochs: int = Field(
        0, ge=0, description="block-wise training: epochs per block added, input to output, before `epochs` on all (0: all at once)"
    )
    block_init: Literal["predecessor", "keep"] = Field(
        "predecessor", description="a block's MLPs start as copies of the previous block's (per_tensor layout), or keep their own"
    )

    @field_validator("validation_compressions")
    @classmethod
    def _compressions(cls, value: list[float]) -> list[float]:
        return [_check_compression(v) for v in value]

    @model_validator(mode="after")
    def _sandwich_keeps_a_sampled_width(self) -> TrainINRParams:
        # Full and narrowest alone would never train the widths between them.
        if self.sandwich and self.widths_per_step < 3:
            raise ValueError(
                f"train_inr.sandwich trains the full and the narrowest width in every step and needs one sampled width "
                f"beside them: set train_inr.widths_per_step to 3 or more (it is {self.widths_per_step})"
            )
        return self


class SampleParams(_Section):
    compressions: list[float] = Field(min_length=1)
    samples: int = Field(50, ge=1, description="K, noisy copies averaged per coordinate")
    noise: float = Field(1.0, ge=0.0)
    seed: int = 0
    renormalise_images: int = Field(
        0,
        ge=0,
        description="training images on which each narrow network's generated channels are rescaled to the "
        "full-width network's activation statistics (0: off, the paper's sampling)",
    )

    @field_validator("compressions")
    @classmethod
    def _compressions(cls, value: list[float]) -> list[float]:
        return [_check_compression(v) for v in value]


class ExportParams(_Section):
    compression: float = Field(0.5, description="which sampled width to export; one of sample.compressions")
    rtol: float = Field(1e-4, ge=0.0)
    atol: float = Field(1e-5, ge=0.0)


class EvaluateParams(_Section):
    batch_size: int = Field(1000, ge=1)
    nll_samples: int = Field(32, ge=1, description="generation: importance samples per image of the test NLL")
    nll_images: int | None = Field(1000, ge=1, description="generation: test images the NLL is estimated on (None: all)")


class BaselineParams(_Section):
    """The methods NeuMeta is compared against; each is trained with the ``pretrain`` recipe."""

    compressions: list[float] = Field([0.0, 0.25, 0.5, 0.75], min_length=1, description="widths every baseline is built at")
    slimmable_compressions: list[float] = Field([0.0, 0.25, 0.5], min_length=1, description="widths the Slimmable network trains")
    pruning_importances: list[Literal[IMPORTANCES]] = list(IMPORTANCES)  # type: ignore[valid-type]
    calibration_images: int = Field(128, ge=1, description="training images for Taylor/Hessian gradients")
    distill_temperature: float = Field(4.0, gt=0.0)
    distill_alpha: float = Field(0.9, ge=0.0, le=1.0, description="weight of the soft (teacher) term")

    @field_validator("compressions", "slimmable_compressions")
    @classmethod
    def _compressions(cls, value: list[float]) -> list[float]:
        value = [_check_compression(v) for v in value]
        if len(set(value)) != len(value):
            raise ValueError(f"compressions must not repeat, got {value}")
        return value

    @model_validator(mode="after")
    def _slimmable_covers(self) -> BaselineParams:
        # An untrained width borrows the BatchNorm of a wider trained one, so one must exist.
        if min(self.slimmable_compressions) > min(self.compressions):
            raise ValueError(
                f"slimmable_compressions {self.slimmable_compressions} must include a width at least as wide as "
                f"every one in compressions {self.compressions} (add {min(self.compressions)})"
            )
        return self


class SimilarityParams(_Section):
    """Linear CKA of one layer's features and the KL divergence of outputs across widths."""

    layer: str = Field(description="module whose output is compared, e.g. layer3.2 (ResNet) or fc1 (LeNet)")
    images: int = Field(1000, ge=2, description="test images the features are computed on")


class TaskParams(_Section):
    kind: Literal[KINDS] = Field(  # type: ignore[valid-type]
        "classification",
        description="classification (a label per image), segmentation (a label per pixel) or generation (a VAE "
        "reconstructs its input)",
    )
    seed: int = 0
    device: str = "auto"
    data: DataParams
    model: ModelParams
    pretrain: PretrainParams
    distributed: DistributedParams | None = None
    permute: PermuteParams = PermuteParams()
    morph: MorphParams = MorphParams()
    inr: INRParams = INRParams()
    train_inr: TrainINRParams
    sample: SampleParams
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    baselines: BaselineParams = BaselineParams()
    similarity: SimilarityParams

    @model_validator(mode="after")
    def _baselines_are_sampled(self) -> TaskParams:
        # The comparison lines every method up at NeuMeta's widths, and CKA needs the full width.
        missing = [c for c in self.baselines.compressions if c not in self.sample.compressions]
        if missing:
            raise ValueError(f"baselines.compressions {missing} are not in sample.compressions {self.sample.compressions}")
        if 0.0 not in self.baselines.compressions:
            raise ValueError("baselines.compressions must include 0.0 (the full width every comparison starts from)")
        return self

    @model_validator(mode="after")
    def _kind_fits_source(self) -> TaskParams:
        per_pixel = self.data.source in SEGMENTATION_SOURCES
        if per_pixel != (self.kind == "segmentation"):
            raise ValueError(
                f"kind {self.kind!r} does not fit data.source {self.data.source!r}, whose labels are "
                f"{'per pixel: use kind: segmentation' if per_pixel else 'per image: use kind: classification or generation'}"
            )
        if self.data.source == "celeba" and self.kind != "generation":
            # Its labels are zeros: the 40 attributes and the identities are not read.
            raise ValueError(f"data.source 'celeba' has no labels here: use kind: generation, not {self.kind!r}")
        if self.kind == "generation":
            if self.data.source == STREAMED_SOURCE:
                raise ValueError(f"kind 'generation' needs device-resident images, not data.source {STREAMED_SOURCE!r}")
            if self.model.name != "conv_vae":
                raise ValueError(f"kind 'generation' trains a VAE: set model.name: conv_vae, not {self.model.name!r}")
            # A VAE's distillation compares reconstructions; temperatures soften class probabilities.
            for key, value in (("train_inr.kd_temperature", self.train_inr.kd_temperature),
                               ("baselines.distill_temperature", self.baselines.distill_temperature)):
                if value != 1.0:
                    raise ValueError(f"{key} {value} applies to class probabilities; a generation task needs 1.0")
        elif self.model.name == "conv_vae":
            raise ValueError(f"model conv_vae reconstructs its input: set kind: generation, not {self.kind!r}")
        return self

    @model_validator(mode="after")
    def _augment_fits_source(self) -> TaskParams:
        # Device-resident images are augmented on the device; streamed ones while decoding.
        allowed = ("none", "resized_crop_flip") if self.data.source == STREAMED_SOURCE else DEVICE_AUGMENTATIONS
        for key, section in (("pretrain", self.pretrain), ("train_inr", self.train_inr)):
            if section.augment not in allowed:
                raise ValueError(
                    f"{key}.augment {section.augment!r} does not apply to data.source {self.data.source!r}; use one of {allowed}"
                )
            multiple = self.data.pad_to_multiple
            if section.crop_size is not None and any(side % multiple for side in section.crop_size):
                raise ValueError(
                    f"{key}.crop_size {section.crop_size} must be divisible by data.pad_to_multiple {multiple}, as the "
                    f"network's inputs are"
                )
        return self

    @model_validator(mode="after")
    def _input_fits_images(self) -> TaskParams:
        # VOC's images and CelebA's faces all become RGB image_size squares; an input_shape of
        # another size would trace the graph, count MACs and export ONNX for inputs the network
        # never gets.
        side = self.data.image_size
        what = {"voc": "VOC images are padded to", "celeba": "CelebA's faces are"}.get(self.data.source)
        if what is not None and self.model.input_shape != [3, side, side]:
            raise ValueError(
                f"model.input_shape {self.model.input_shape} does not fit data.image_size {side} ({what} RGB "
                f"{side}x{side} squares): set input_shape: [3, {side}, {side}]"
            )
        return self

    @model_validator(mode="after")
    def _export_is_sampled(self) -> TaskParams:
        if self.export.compression not in self.sample.compressions:
            raise ValueError(
                f"export.compression {self.export.compression} is not one of sample.compressions {self.sample.compressions}"
            )
        return self

    @model_validator(mode="after")
    def _teacher_cache(self) -> TaskParams:
        # Outputs are cached per stored image, so every step must see the images as stored.
        train = self.train_inr
        if not train.teacher_cache:
            return self
        problem = None
        if train.lambda_kd == 0:
            problem = "there is no teacher with train_inr.lambda_kd 0"
        elif self.kind != "classification":
            problem = f"it caches class scores per image, not the outputs of a {self.kind!r} task"
        elif self.data.source == STREAMED_SOURCE:
            problem = f"data.source {STREAMED_SOURCE!r} streams its images from disk; only device-resident images are cached"
        elif train.augment != "none":
            problem = f"train_inr.augment {train.augment!r} changes the images every step; it needs augment: none"
        if problem:
            raise ValueError(f"train_inr.teacher_cache: {problem}; or set teacher_cache: false")
        return self

    @model_validator(mode="after")
    def _validation_is_trained(self) -> TaskParams:
        # The epoch is chosen on these widths; a width outside the trained range would tune the
        # INR to a width that every report calls never trained.
        outside = [c for c in self.train_inr.validation_compressions if not self.morph.trains(c)]
        if outside:
            raise ValueError(
                f"train_inr.validation_compressions {outside} lie outside morph.compression_range "
                f"{list(self.morph.compression_range)}: the "
                f"epoch would be chosen on widths reported as never trained; validate within the trained range"
            )
        return self

    @model_validator(mode="after")
    def _base_needs_no_warm_start(self) -> TaskParams:
        # With a base the INR starts as the pretrained network, so a warm start would spend its
        # steps on a loss that is already zero.
        if self.inr.base != "none" and self.train_inr.reconstruction_steps > 0:
            raise ValueError(
                f"inr.base {self.inr.base!r} starts the INR at the pretrained weights, so train_inr.reconstruction_steps "
                f"{self.train_inr.reconstruction_steps} would fit nothing: set reconstruction_steps: 0"
            )
        return self

    @model_validator(mode="after")
    def _block_init(self) -> TaskParams:
        if self.train_inr.block_epochs > 0 and self.train_inr.block_init == "predecessor" and self.inr.layout != "per_tensor":
            raise ValueError(
                f"train_inr.block_init 'predecessor' copies per-tensor MLPs, but inr.layout is {self.inr.layout!r} "
                f"(its MLPs are shared between blocks already): set train_inr.block_init: keep or inr.layout: per_tensor"
            )
        return self

    @model_validator(mode="after")
    def _device(self) -> TaskParams:
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        return self


def validate_task(task: str, params: dict) -> TaskParams:
    """Parse one task's parameters; the error names the task and every offending key."""
    from pydantic import ValidationError

    try:
        return TaskParams.model_validate(params)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {task}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid parameters for task {task!r} (conf/base/parameters_{task}.yml):\n{problems}") from None


def check_against_model(task: str, params: TaskParams) -> None:
    """The checks that need the network but no training: its keyword arguments, the input shape,
    the ``morph`` patterns (on the fused network the INR generates), the similarity layer, and whether
    ``sample.renormalise_images`` can correct the sampled networks."""
    from .models import build_model
    from .models.checkpoint import example_input
    from .neumeta.fuse import fuse_batchnorm
    from .neumeta.morph import MorphSpec, generated_modules, shared_parameters
    from .neumeta.sample import renormalisation_problems

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"invalid parameters for task {task!r} (conf/base/parameters_{task}.yml): {task}.{key}: {problem}")

    try:
        net = build_model(params.model.name, **params.model.kwargs).eval()
    except (TypeError, ValueError) as exc:
        raise fail("model.kwargs", str(exc)) from None
    arch = params.model.model_dump()
    try:
        with torch.no_grad():
            net(example_input(arch))
    except Exception as exc:  # a shape mismatch surfaces as whatever the first layer raises
        raise fail("model.input_shape", f"{arch['input_shape']} does not fit {params.model.name}: {exc}") from None
    fused = fuse_batchnorm(net)
    try:
        spec = MorphSpec(fused, example_input(arch), params.morph.generated, params.morph.morphable, narrowing=params.morph.narrowing)
    except ValueError as exc:  # the library's message starts with the key: "generated: ..." or "morphable: ..."
        key, _, problem = str(exc).partition(": ")
        raise fail(f"morph.{key}", problem) from None
    try:
        shared_parameters(fused, spec, params.inr.shared)
        generated_modules(spec, params.inr.branch_scale, "branch_scale")
    except ValueError as exc:  # "shared: ..." or "branch_scale: ..."
        key, _, problem = str(exc).partition(": ")
        raise fail(f"inr.{key}", problem) from None
    if params.sample.renormalise_images:
        problems = renormalisation_problems(net if params.morph.batchnorm == "keep" else fused, spec)
        if problems:
            raise fail("sample.renormalise_images", "; ".join(problems) + ": set it to 0 for this task")
    layers = [name for name, _ in net.named_modules() if name]
    if params.similarity.layer not in layers:
        raise fail("similarity.layer", f"{params.similarity.layer!r} is not a layer of {params.model.name}; layers: {', '.join(layers)}")
