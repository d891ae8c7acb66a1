"""Task kinds: the loss, the distillation term, the scores and the kind a split was made for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neumeta_pipeline.data import DeviceData
from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.generation import negative_elbo
from neumeta_pipeline.neumeta.tasks import TaskKind, task_kind


def test_classification_loss_is_cross_entropy():
    logits, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert torch.equal(TaskKind("classification", 3).loss(logits, None, y), F.cross_entropy(logits, y))


def test_segmentation_loss_averages_over_labelled_pixels_only():
    kind = TaskKind("segmentation", num_classes=3, ignore_index=3)
    logits = torch.randn(2, 3, 2, 2)
    y = torch.tensor([[[0, 1], [3, 2]], [[3, 3], [1, 1]]])
    loss = kind.loss(logits, None, y)
    valid = y != 3
    by_hand = -F.log_softmax(logits, 1).permute(0, 2, 3, 1)[valid].gather(1, y[valid][:, None]).mean()
    torch.testing.assert_close(loss, by_hand)
    changed = logits.clone()
    changed.permute(0, 2, 3, 1)[~valid] = 100.0  # whatever the network says at void pixels
    torch.testing.assert_close(kind.loss(changed, None, y), loss)


def test_segmentation_kl_is_the_mean_over_pixels():
    kind = TaskKind("segmentation", num_classes=4, ignore_index=255)
    student = F.log_softmax(torch.randn(2, 4, 3, 5), dim=1)
    teacher = F.log_softmax(torch.randn(2, 4, 3, 5), dim=1)
    pixels = [(n, i, j) for n in range(2) for i in range(3) for j in range(5)]
    by_hand = sum((teacher[n, :, i, j].exp() * (teacher[n, :, i, j] - student[n, :, i, j])).sum() for n, i, j in pixels) / 30
    torch.testing.assert_close(kind.kl(student, teacher), by_hand)
    assert abs(float(kind.kl(teacher, teacher))) < 1e-6  # a student equal to its teacher


def test_a_split_says_its_kind():
    assert task_kind({"num_classes": 10}) == TaskKind("classification", 10)
    camvid = task_kind({"kind": "segmentation", "num_classes": 11, "ignore_index": 11})
    assert camvid.metric == "miou" and camvid.ignore_index == 11


def _vae_data(n=12, seed=0):
    x = (torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)
    splits = {"x_test": x, "y_test": torch.zeros(n, dtype=torch.long), "mean": [0.0], "std": [1.0]}
    return DeviceData(splits, "test", "cpu")


def _tiny_vae():
    torch.manual_seed(0)
    return build_model("conv_vae", in_channels=1, image_size=8, width=4, latent_dim=3).eval()


def test_generation_trains_on_the_negative_elbo_of_a_posterior_draw():
    kind, model = TaskKind("generation"), _tiny_vae()
    x = torch.rand(4, 1, 8, 8)
    torch.manual_seed(5)
    recon, mean, log_var = kind.output(model, x)
    torch.manual_seed(5)
    z = mean + torch.randn(mean.shape) * torch.exp(0.5 * log_var)  # the same draw, by hand
    torch.testing.assert_close(recon, model.decode(z))
    torch.testing.assert_close(kind.loss((recon, mean, log_var), x, None), negative_elbo(recon, x, mean, log_var))


def test_generation_scores_are_mse_through_the_mean_and_a_seeded_nll():
    kind, model, data = TaskKind("generation", nll_samples=3, nll_images=5), _tiny_vae(), _vae_data()
    scores = kind.scores(model, data, batch_size=4)
    with torch.no_grad():
        x = data.x
        by_hand = (model(x) - x).square().flatten(1).sum(1).mean()
    assert scores["mse"] == pytest.approx(float(by_hand), rel=1e-5)
    assert scores == kind.scores(model, data, batch_size=4)  # the NLL's draws come from a fixed seed
    assert kind.scores(model, data, batch_size=5)["mse"] == pytest.approx(scores["mse"], rel=1e-6)
    assert 0 < scores["nll"] < 64 * 14
    assert kind.metric == "mse"


def test_generation_validation_score_is_minus_the_negative_elbo_and_leaves_the_global_stream_alone():
    kind, model, data = TaskKind("generation"), _tiny_vae(), _vae_data()
    state = torch.get_rng_state()
    score = kind.score(model, data)
    assert torch.equal(torch.get_rng_state(), state)
    assert score == kind.score(model, data) < 0
    assert score == pytest.approx(-kind.scores(model, data)["nll"], rel=0.2)  # one draw per image against 32


def test_generation_distils_reconstructions_and_compares_outputs_by_squared_distance():
    kind = TaskKind("generation")
    teacher, student = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    by_hand = sum(float((student[i] - teacher[i]).square().sum()) for i in range(3)) / 3
    assert float(kind.distill((student, None, None), teacher, 1.0)) == pytest.approx(by_hand)
    assert kind.divergence(student, teacher) == pytest.approx(by_hand) and kind.divergence(teacher, teacher) == 0


def test_the_vae_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown ConvVAE mode 'sample'"):
        _tiny_vae()(torch.rand(1, 1, 8, 8), mode="sample")
