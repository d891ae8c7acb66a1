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


def load_encoder_weights(model: nn.Module, path: str) -> None:
    """Start ``model.encoder`` (smp's U-Net) from a local file of the backbone's weights, e.g.
    torchvision's ``resnet18-f37072fd.pth`` (loaded with ``weights_only=True``; the classifier
    ``fc.*`` it holds is not part of an encoder and is left out). A narrowed encoder takes each
    tensor's leading channels, the order in which every width of this project is cut."""
    import torch

    from ..errors import UserError

    file = Path(path)
    if not file.is_file():
        raise UserError(f"model.encoder_weights: the weights file {file} does not exist")
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise UserError(f"model.encoder_weights applies to networks with an encoder (unet), not {type(model).__name__}")
    state = {k: v for k, v in torch.load(file, map_location="cpu", weights_only=True).items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"model.encoder_weights {file} does not fit the encoder: missing {missing[:3]}"
                        f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    for key, target in own.items():
        source = state[key]
        if source.dim() != target.dim() or any(t > s for t, s in zip(target.shape, source.shape)):
            raise UserError(f"model.encoder_weights {file}: {key} is {tuple(source.shape)}, the encoder needs {tuple(target.shape)}")
        own[key] = source[tuple(slice(0, n) for n in target.shape)].to(target.dtype) if source.dim() else source
    encoder.load_state_dict(own)


__all__ = ["MODELS", "load_encoder_weights", "TORCHVISION_MODELS", "build_model", "load_pretrained_weights", "LeNet", "CifarResNet", "ConvVAE"]
