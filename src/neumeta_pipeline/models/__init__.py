"""Model registry: every network the pipelines can train, built by name with keyword arguments."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from torch import nn

from .lenet import LeNet
from .resnet_cifar import CifarResNet
from .vae import ConvVAE


def _smp_unet(encoder_name: str = "resnet18", classes: int = 21, in_channels: int = 3, **kwargs) -> nn.Module:
    """smp's U-Net without downloaded encoder weights (pretrained weights come through
    ``load_pretrained_weights``); ``kwargs`` go to ``smp.Unet`` (e.g. ``encoder_depth``)."""
    # Imported lazily: segmentation-models-pytorch pulls in timm, which is slow to import.
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder_name, encoder_weights=None, classes=classes, in_channels=in_channels, **kwargs)


def _torchvision(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """A torchvision classifier (ImageNet-class tasks), randomly initialised: pretrained weights
    come through ``load_pretrained_weights`` so no download ever happens behind a build.
    ``kwargs`` go to torchvision's constructor (e.g. ``width_per_group``)."""
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "resnet20": partial(CifarResNet, depth=20),
    "resnet32": partial(CifarResNet, depth=32),
    "resnet44": partial(CifarResNet, depth=44),
    "resnet56": partial(CifarResNet, depth=56),
    "conv_vae": ConvVAE,
    "unet": _smp_unet,
    "resnet18": partial(_torchvision, "resnet18"),
    "resnet50": partial(_torchvision, "resnet50"),
}
TORCHVISION_MODELS = ("resnet18", "resnet50")


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names fail with the list of known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def load_pretrained_weights(model: nn.Module, name: str, weights: str) -> None:
    """Load ``weights`` into ``model`` (a registry model called ``name``): a local weights file
    (a state dict, loaded with ``weights_only=True``) or, for torchvision models, a torchvision
    weights name such as ``IMAGENET1K_V1`` (downloaded into the torch hub cache once)."""
    import torch

    from ..errors import UserError

    path = Path(weights)
    if path.suffix in (".pth", ".pt") or path.exists():
        if not path.is_file():
            raise UserError(f"pretrain.weights: the weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = str(path)
    else:
        if name not in TORCHVISION_MODELS:
            raise UserError(f"pretrain.weights {weights!r}: not a file, and weights names apply to torchvision models only "
                            f"({', '.join(TORCHVISION_MODELS)})")
        import torchvision

        choices = torchvision.models.get_model_weights(name)
        if weights not in choices.__members__:
            raise UserError(f"pretrain.weights {weights!r} is not a torchvision weights name of {name}: "
                            f"use one of {', '.join(choices.__members__)} or a weights file")
        entry = choices[weights]
        try:
            state = entry.get_state_dict(progress=False)
        except Exception as exc:  # offline, a proxy, a partial file
            raise UserError(f"pretrain.weights {weights}: the download from {entry.url} failed ({exc}); fetch that file "
                            f"elsewhere and set pretrain.weights to its local path") from None
        source = entry.url
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"pretrain.weights from {source} do not fit model {name} as configured (model.kwargs: "
                        f"num_classes?): {str(exc).splitlines()[0]} ...") from None


__all__ = ["MODELS", "TORCHVISION_MODELS", "build_model", "load_pretrained_weights", "LeNet", "CifarResNet", "ConvVAE"]
