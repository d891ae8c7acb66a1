"""BatchNorm folding: exact in eval mode, structurally deterministic, careful about shared outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from neumeta_pipeline.neumeta.fuse import fusable_pairs, fuse_batchnorm
from tests.neumeta.conftest import HEAVY_MODELS, LIGHT_MODELS, SURGERY_MODELS, randomize_batchnorm, relative_error, run

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5


@pytest.mark.parametrize("name", LIGHT_MODELS + HEAVY_MODELS)
def test_fusion_preserves_the_function(surgery_zoo, name):
    model, x, ref = surgery_zoo(name)
    fused = fuse_batchnorm(model)
    assert relative_error(ref, run(fused, x)) <= TOL
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) or name == "lenet"


@pytest.mark.parametrize("name", ["resnet20", "conv_vae", "unet"])
def test_fused_keys_depend_on_the_architecture_only(surgery_zoo, name):
    """A fused checkpoint loads strictly into the fusion of a freshly built model."""
    model, x, ref = surgery_zoo(name)
    fused = fuse_batchnorm(model)
    fresh = fuse_batchnorm(SURGERY_MODELS[name][0]())
    a, b = fused.state_dict(), fresh.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    fresh.load_state_dict(a, strict=True)
    assert relative_error(ref, run(fresh, x)) <= TOL


def test_batchnorm_becomes_identity_and_bias_is_added(surgery_zoo):
    model, _, _ = surgery_zoo("resnet20")
    assert model.conv1.bias is None
    fused = fuse_batchnorm(model)
    assert isinstance(fused.bn1, nn.Identity) and isinstance(fused.layer1[0].bn2, nn.Identity)
    assert isinstance(fused.layer2[0].shortcut[1], nn.Identity)
    assert fused.conv1.bias is not None and fused.conv1.bias.shape == (16,)
    assert "bn1.running_mean" not in fused.state_dict()
    assert model.conv1.bias is None and isinstance(model.bn1, nn.BatchNorm2d)  # input untouched


class SharedOutput(nn.Module):
    """conv's output feeds the BN and a second branch: folding would change the second branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y + self.bn2(self.conv2(x))


def test_batchnorm_after_a_shared_output_is_not_folded():
    model = randomize_batchnorm(SharedOutput())
    assert fusable_pairs(model) == [("conv2", "bn2")]
    x = torch.randn(2, 3, 8, 8)
    fused = fuse_batchnorm(model)
    assert isinstance(fused.bn, nn.BatchNorm2d) and isinstance(fused.bn2, nn.Identity)
    assert relative_error(run(model, x), run(fused, x)) <= TOL


class Zoo(nn.Module):
    """Every supported producer type, including grouped and transposed convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, padding=1)
        self.b1 = nn.BatchNorm1d(6)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1, groups=2, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.t2 = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1)
        self.bt2 = nn.BatchNorm2d(6)
        self.tg = nn.ConvTranspose2d(6, 4, 3, padding=1, groups=2, bias=False)
        self.btg = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.bfc = nn.BatchNorm1d(5)
        self.bn_no_stats = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        y = self.b1(self.c1(x))  # (N, 6, 16)
        y = y.reshape(y.shape[0], 6, 4, 4)
        y = torch.relu(self.b2(self.c2(y)))
        y = self.btg(self.tg(torch.relu(self.bt2(self.t2(y)))))
        y = self.bn_no_stats(y)
        return self.bfc(self.fc(y.mean(dim=(2, 3))))


def test_every_producer_type_folds_exactly():
    torch.manual_seed(0)
    model = randomize_batchnorm(Zoo())
    x = torch.randn(4, 3, 16)
    fused = fuse_batchnorm(model)
    assert {p for p, _ in fusable_pairs(model)} == {"c1", "c2", "t2", "tg", "fc"}
    assert isinstance(fused.bn_no_stats, nn.BatchNorm2d)  # batch statistics: nothing to fold
    assert relative_error(run(model, x), run(fused, x)) <= TOL
    double = copy.deepcopy(model).double()
    assert relative_error(run(double, x.double()), run(fuse_batchnorm(double), x.double())) <= 1e-12


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:
            return self.bn(self.conv(x))
        return x


def test_untraceable_model_raises_a_clear_error():
    with pytest.raises(RuntimeError, match="torch.fx"):
        fuse_batchnorm(DataDependent())
