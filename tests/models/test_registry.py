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


def test_a_unet_encoder_starts_from_a_backbone_file_and_a_narrower_one_from_its_leading_channels(tmp_path):
    from neumeta_pipeline.baselines import fresh_at_widths
    from neumeta_pipeline.models import load_encoder_weights

    backbone = build_model("resnet18", num_classes=5)  # torchvision's layout, classifier included
    path = tmp_path / "resnet18.pth"
    torch.save(backbone.state_dict(), path)
    arch = {"name": "unet", "kwargs": {"encoder_name": "resnet18", "classes": 3, "encoder_depth": 4,
                                        "decoder_channels": [16, 8, 8, 8]},
            "input_shape": [3, 32, 32], "encoder_weights": str(path)}
    full = fresh_at_widths(arch, {})
    assert torch.equal(full.encoder.layer3[1].conv1.weight, backbone.layer3[1].conv1.weight)
    narrow = fresh_at_widths(arch, {"encoder.layer3.1.conv1": 100})
    assert torch.equal(narrow.encoder.layer3[1].conv1.weight, backbone.layer3[1].conv1.weight[:100])
    assert torch.equal(narrow.encoder.layer3[1].conv2.weight, backbone.layer3[1].conv2.weight[:, :100])
    torch.save({"conv1.weight": backbone.conv1.weight}, path)
    with pytest.raises(UserError, match="does not fit the encoder: missing"):
        load_encoder_weights(full, str(path))
    with pytest.raises(UserError, match="does not exist"):
        load_encoder_weights(full, str(tmp_path / "nope.pth"))
