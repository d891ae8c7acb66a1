"""Building registry models and loading pretrained weights into them."""

from __future__ import annotations

import pytest
import torch

from neumeta_pipeline.errors import UserError
from neumeta_pipeline.models import build_model, load_pretrained_weights


def test_a_weights_file_loads_with_every_tensor(tmp_path):
    source = build_model("resnet18", num_classes=3)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    target = build_model("resnet18", num_classes=3)
    load_pretrained_weights(target, "resnet18", str(tmp_path / "r18.pth"))
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor)


def test_weights_that_do_not_fit_the_configured_model_name_the_cause(tmp_path):
    torch.save(build_model("resnet18", num_classes=1000).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match="do not fit model resnet18 as configured .*num_classes"):
        load_pretrained_weights(build_model("resnet18", num_classes=3), "resnet18", str(tmp_path / "r18.pth"))
    with pytest.raises(UserError, match="the weights file .*missing.pth does not exist"):
        load_pretrained_weights(build_model("resnet18"), "resnet18", str(tmp_path / "missing.pth"))


def test_weights_names_are_torchvision_s_and_a_failed_download_says_what_to_do(monkeypatch):
    from torchvision.models import ResNet18_Weights

    with pytest.raises(UserError, match="not a torchvision weights name of resnet18: use one of IMAGENET1K_V1"):
        load_pretrained_weights(build_model("resnet18"), "resnet18", "IMAGENET9K")
    with pytest.raises(UserError, match="weights names apply to torchvision models only"):
        load_pretrained_weights(build_model("resnet20"), "resnet20", "IMAGENET1K_V1")

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(UserError, match="download from https://.*resnet18-f37072fd.pth failed .*set pretrain.weights to its local path"):
        load_pretrained_weights(build_model("resnet18"), "resnet18", "IMAGENET1K_V1")
