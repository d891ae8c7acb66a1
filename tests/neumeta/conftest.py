"""Shared fixtures for the network-surgery tests (channel groups, permutation, BatchNorm fusion)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from neumeta_pipeline.models import build_model

# name -> (builder, example input shape). Inputs are kept small so the big torchvision models run
# in well under a second on two CPU cores.
SURGERY_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet": (lambda: build_model("lenet"), (2, 1, 28, 28)),
    "resnet20": (lambda: build_model("resnet20"), (2, 3, 32, 32)),
    "resnet56": (lambda: build_model("resnet56"), (2, 3, 32, 32)),
    "conv_vae": (lambda: build_model("conv_vae"), (2, 3, 32, 32)),
    "unet": (lambda: build_model("unet"), (1, 3, 64, 64)),
}
for _name in ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2"):

    def _tv_builder(name: str = _name) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    SURGERY_MODELS[_name] = (_tv_builder, (1, 3, 64, 64))

LIGHT_MODELS = ["lenet", "resnet20", "resnet56", "conv_vae"]
HEAVY_MODELS = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "unet"]


def randomize_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding BN actually changes weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                    m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.3)
    return model.eval()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was_training)
    return out


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Max absolute difference relative to the output's scale."""
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-30))


class SurgeryZoo:
    """Builds each model once per session (seeded, BN randomised, eval mode) with its input and
    reference output. Tests must not modify the returned model in place."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
        self._groups: dict[str, list] = {}

    def __call__(self, name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        if name not in self._cache:
            builder, shape = SURGERY_MODELS[name]
            torch.manual_seed(0)
            model = randomize_batchnorm(builder())
            x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
            self._cache[name] = (model, x, run(model, x))
        return self._cache[name]

    def groups(self, name: str) -> list:
        """Channel groups of the cached model (tests must not mutate them)."""
        if name not in self._groups:
            from neumeta_pipeline.neumeta.graph import channel_groups

            model, x, _ = self(name)
            self._groups[name] = channel_groups(model, x)
        return self._groups[name]


@pytest.fixture(scope="session")
def surgery_zoo() -> SurgeryZoo:
    return SurgeryZoo()


@pytest.fixture
def single_thread():
    """The surgery tests run many small ops; with two OpenMP threads on a two-core machine that is
    also running something else, spin-waiting made them about four times slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
