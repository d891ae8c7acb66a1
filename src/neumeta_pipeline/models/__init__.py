"""Model registry: every network the pipelines can train, built by name with keyword arguments."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from .lenet import LeNet
from .resnet_cifar import CifarResNet
from .vae import ConvVAE


def _smp_unet(encoder_name: str = "resnet18", classes: int = 21, in_channels: int = 3) -> nn.Module:
    # Imported lazily: segmentation-models-pytorch pulls in timm, which is slow to import.
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder_name, encoder_weights=None, classes=classes, in_channels=in_channels)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "resnet20": partial(CifarResNet, depth=20),
    "resnet32": partial(CifarResNet, depth=32),
    "resnet44": partial(CifarResNet, depth=44),
    "resnet56": partial(CifarResNet, depth=56),
    "conv_vae": ConvVAE,
    "unet": _smp_unet,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names fail with the list of known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "build_model", "LeNet", "CifarResNet", "ConvVAE"]
