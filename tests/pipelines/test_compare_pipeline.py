"""The baseline pipelines and the comparison reports, end to end on tiny data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from neumeta_pipeline.models.checkpoint import load_model
from neumeta_pipeline.pipelines.compare import BASELINES
from tests.pipelines.conftest import make_project, run, versions, work_in
from tests.pipelines.test_neumeta_pipeline import VERSIONED

METHODS = {
    "individual": ["individual"],
    "slimmable": ["slimmable"],
    "pruning": ["pruning_l1", "pruning_l2", "pruning_random", "pruning_taylor", "pruning_hessian"],
    "distilled": ["distilled"],
}


@pytest.mark.parametrize("baseline", BASELINES)
def test_each_baseline_pipeline_runs_alone_and_builds_every_width(project, baseline):
    task = "cifar10"  # ResNet20: BatchNorm and a residual stream, the harder case for every baseline
    run(project, f"{task}_{baseline}")
    data = project / "data"
    models = torch.load(versions(data / f"06_models/{task}/{baseline}_models.pt")[0], weights_only=True)
    assert list(models) == METHODS[baseline]
    for method, by_width in models.items():
        assert list(by_width) == ["0", "0.25", "0.5", "0.75"]
        for key, checkpoint in by_width.items():
            net = load_model(checkpoint)
            assert net.layer3[2].conv1.out_channels == round(64 * (1 - float(key)))
            assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    table = pd.read_csv(versions(data / f"08_reporting/{task}/{baseline}_table.csv")[0])
    assert list(table.method.unique()) == METHODS[baseline]
    assert table.accuracy.between(0, 1).all() and (table.train_seconds >= 0).all()
    for _, rows in table.groupby("method"):
        assert rows.params.is_monotonic_decreasing and rows.params.iloc[0] > rows.params.iloc[-1]
    history = json.loads(versions(data / f"08_reporting/{task}/{baseline}_history.json")[0].read_text())
    assert set(history["stored_parameters"]) == set(METHODS[baseline])
    if baseline == "slimmable":
        assert table.set_index("compression").seen_in_training.to_dict() == {0.0: True, 0.25: True, 0.5: True, 0.75: False}


def test_compare_pipeline_reports_every_method_and_the_similarity(project):
    task = "mnist_offline"
    run(project, f"{task}_compare")
    data = project / "data" / "08_reporting" / task
    table = pd.read_csv(versions(data / "comparison_table.csv")[0])
    assert list(table.method) == ["neumeta", "individual", "slimmable", *METHODS["pruning"], "distilled"]
    assert [c for c in table.columns if c.startswith("acc@")] == ["acc@0%", "acc@25%", "acc@50%", "acc@75%"]
    assert (table.train_device_hours > 0).all() and (table.stored_parameters > 0).all()
    ours = table.set_index("method").loc["neumeta"]
    inr = torch.load(versions(project / f"data/06_models/{task}/inr_checkpoint.pt")[0], weights_only=True)
    assert ours.stored_parameters == inr["inr_parameters"]  # LeNet is generated whole: nothing else is stored
    assert ours.widths_not_trained == "75%"
    individual = table.set_index("method").loc["individual"]
    pruning = table.set_index("method").loc["pruning_l1"]
    # Pruning never trains a narrow width; its 0% is the pretrained network itself.
    assert pruning.widths_not_trained == "25% 50% 75%"
    assert individual.stored_parameters > pruning.stored_parameters  # four networks against one
    for name in ("comparison_plot.json", "comparison_plot.png", "similarity_plot.json", "similarity_plot.png"):
        assert len(versions(data / name)) == 1
    similarity = pd.read_csv(versions(data / "similarity_table.csv")[0])
    assert sorted(similarity.family.unique()) == ["distilled", "individual", "neumeta"]
    full = similarity[similarity.compression == 0.0]
    assert (abs(full.cka_to_full - 1.0) < 1e-9).all() and (full.kl_full_to_this.abs() < 1e-9).all()
    narrow = similarity[similarity.compression > 0.0]
    assert narrow.cka_to_full.between(0, 1 + 1e-9).all() and (narrow.kl_full_to_this >= 0).all()


def test_a_similarity_layer_the_model_lacks_stops_the_run_first(project):
    path = project / "conf" / "base" / "parameters_mnist_offline.yml"
    path.write_text(path.read_text().replace("layer: fc1", "layer: fc7"))
    with pytest.raises(ValueError, match="similarity.layer: 'fc7' is not a layer of lenet"):
        run(project, "mnist_offline_compare")
    assert not (project / "data" / "06_models").exists()


def test_segmentation_runs_the_whole_comparison_scored_by_miou(tmp_path, monkeypatch):
    # CamVid's U-Net through the NeuMeta chain and every baseline (two pruning criteria: one by
    # weights, one by gradients of the per-pixel loss with void pixels ignored).
    task = "camvid"
    project = work_in(make_project(tmp_path, {task: {"baselines": {"pruning_importances": ["l1", "taylor"]}}}), monkeypatch)
    run(project, f"{task}_compare")
    data = project / "data"
    for template in VERSIONED:
        assert len(versions(data / template.format(t=task))) == 1, template
    metrics = json.loads(versions(data / f"08_reporting/{task}/metrics.json")[0].read_text())
    assert metrics["metric"] == "miou" and [r["compression"] for r in metrics["results"]] == [0.0, 0.25, 0.5, 0.75]
    ours = pd.read_csv(versions(data / f"08_reporting/{task}/accuracy_table.csv")[0])
    assert {"miou", "pixel_accuracy", "mean_f1", "iou_sky", "iou_bicyclist"} <= set(ours.columns) and "accuracy" not in ours
    assert ours.miou.between(0, 1).all() and ours.pixel_accuracy.between(0, 1).all()
    table = pd.read_csv(versions(data / f"08_reporting/{task}/comparison_table.csv")[0])
    assert list(table.method) == ["neumeta", "individual", "slimmable", "pruning_l1", "pruning_taylor", "distilled"]
    assert [c for c in table.columns if "@" in c] == ["miou@0%", "miou@25%", "miou@50%", "miou@75%"]
    pruned = torch.load(versions(data / f"06_models/{task}/pruning_models.pt")[0], weights_only=True)
    net = load_model(pruned["pruning_taylor"]["0.5"])
    assert net.encoder.layer3[1].conv1.out_channels == 128 and net(torch.randn(1, 3, 32, 32)).shape == (1, 11, 32, 32)
    similarity = pd.read_csv(versions(data / f"08_reporting/{task}/similarity_table.csv")[0])
    assert (similarity.kl_full_to_this >= -1e-9).all()


def test_generation_runs_the_whole_comparison_scored_by_reconstruction_mse(tmp_path, monkeypatch):
    # The MNIST VAE through the NeuMeta chain and every baseline: the negative ELBO trains every
    # network, Taylor pruning takes its gradients, distillation pulls reconstructions together.
    task = "mnist_vae"
    tiny = {"model": {"kwargs": {"width": 8, "latent_dim": 4}}, "evaluate": {"nll_samples": 4, "nll_images": 30},
            "baselines": {"pruning_importances": ["l1", "taylor"]}, "similarity": {"images": 50}}
    project = work_in(make_project(tmp_path, {task: tiny}), monkeypatch)
    run(project, f"{task}_compare")
    data = project / "data"
    for template in VERSIONED:
        assert len(versions(data / template.format(t=task))) == 1, template
    metrics = json.loads(versions(data / f"08_reporting/{task}/metrics.json")[0].read_text())
    assert metrics["metric"] == "mse" and [r["compression"] for r in metrics["results"]] == [0.0, 0.25, 0.5, 0.75]
    ours = pd.read_csv(versions(data / f"08_reporting/{task}/accuracy_table.csv")[0])
    assert {"mse", "nll"} <= set(ours.columns) and "accuracy" not in ours
    # 784 pixels in [0, 1]: a summed squared error in (0, 784]; an NLL of at most 784 * 13.8 nats.
    assert ours.mse.between(0, 784).all() and (ours.mse > 0).all() and ours.nll.between(0, 784 * 14).all()
    table = pd.read_csv(versions(data / f"08_reporting/{task}/comparison_table.csv")[0])
    assert list(table.method) == ["neumeta", "individual", "slimmable", "pruning_l1", "pruning_taylor", "distilled"]
    assert [c for c in table.columns if "@" in c] == ["mse@0%", "mse@25%", "mse@50%", "mse@75%"]
    pruned = torch.load(versions(data / f"06_models/{task}/pruning_models.pt")[0], weights_only=True)
    net = load_model(pruned["pruning_taylor"]["0.5"])
    assert net.encoder[3].out_channels == 8 and net(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    similarity = pd.read_csv(versions(data / f"08_reporting/{task}/similarity_table.csv")[0])
    full = similarity[similarity.compression == 0.0]
    assert (similarity.kl_full_to_this >= 0).all() and (full.kl_full_to_this == 0).all()
    assert len(versions(data / f"08_reporting/{task}/examples_plot.png")) == 1
