"""Every task pipeline, end to end, on tiny data in the real on-disk formats."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from neumeta_pipeline.errors import UserError
from neumeta_pipeline.models.checkpoint import load_model
from neumeta_pipeline.neumeta.inr import inr_parameter_count
from neumeta_pipeline.neumeta.morph import MorphSpec
from neumeta_pipeline.neumeta.sample import load_inr
from neumeta_pipeline.pipeline_registry import TASKS
from tests.pipelines.conftest import make_project, run, versions, work_in

VERSIONED = [
    "05_model_input/{t}/data_split.pt", "06_models/{t}/pretrained_model.pt", "08_reporting/{t}/pretrain_history.json",
    "02_intermediate/{t}/dependency_graph.json", "06_models/{t}/permuted_model.pt",
    "08_reporting/{t}/permutation_report.json", "06_models/{t}/fused_model.pt",
    "06_models/{t}/inr_checkpoint.pt", "08_reporting/{t}/inr_history.json",
    "07_model_output/{t}/sampled_models.pt", "08_reporting/{t}/metrics.json",
    "08_reporting/{t}/accuracy_table.csv", "08_reporting/{t}/accuracy_plot.json",
    "08_reporting/{t}/accuracy_plot.png", "08_reporting/{t}/examples_plot.png", "07_model_output/{t}/model.onnx",
    "08_reporting/{t}/onnx_report.json",
]


# camvid and mnist_vae: in their whole comparisons (test_compare_pipeline); celeba_vae below, as a
# VAE's reconstruction MSE is not in [0, 1].
@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("camvid", "mnist_vae", "celeba_vae")])
def test_task_runs_end_to_end_and_versions_every_artifact(request, task):
    # The default task's run is the one its rerun tests and the notebook test share.
    project = request.getfixturevalue("default_run" if task == "mnist_offline" else "project")
    if task != "mnist_offline":
        run(project, task)
    data = project / "data"
    for template in VERSIONED:
        assert len(versions(data / template.format(t=task))) == 1, template
    metrics = json.loads(versions(data / f"08_reporting/{task}/metrics.json")[0].read_text())
    compressions = [r["compression"] for r in metrics["results"]]
    assert compressions == [0.0, 0.25, 0.5, 0.75]
    assert [r["seen_in_training"] for r in metrics["results"]] == [True, True, True, False]
    table = pd.read_csv(versions(data / f"08_reporting/{task}/accuracy_table.csv")[0])
    metric = metrics["metric"]  # the task kind's: accuracy, or mIoU for segmentation
    assert set(table.columns) >= {"task", "compression", "widths", metric, "params", "macs"}
    assert table[metric].between(0, 1).all()
    assert (table.task == task).all() and table.method.iloc[0] == "pretrained"
    neumeta = table[table.method == "neumeta"]
    assert neumeta.params.is_monotonic_decreasing and neumeta.params_reduction.iloc[0] == 0.0
    assert neumeta.params_reduction.iloc[-1] > 0 and neumeta.macs_reduction.iloc[-1] > 0
    report = json.loads(versions(data / f"08_reporting/{task}/permutation_report.json")[0].read_text())
    assert report["objective"] == "fused" and report["tv_fused_after"] <= report["tv_fused_before"]
    # A sampled model is a standalone network: it loads and runs without the INR.
    sampled = torch.load(versions(data / f"07_model_output/{task}/sampled_models.pt")[0], weights_only=True)
    net = load_model(sampled["0.75"])
    shape = sampled["0.75"]["arch"]["input_shape"]
    assert net(torch.randn(2, *shape)).shape[0] == 2


def test_celeba_vae_runs_end_to_end_scored_by_mse(project):
    # CelebA's tiny faces (one of them full-size, so the 148x148 crop runs) through the NeuMeta chain.
    task = "celeba_vae"
    run(project, task)
    data = project / "data"
    for template in VERSIONED:
        assert len(versions(data / template.format(t=task))) == 1, template
    split = torch.load(versions(data / f"05_model_input/{task}/data_split.pt")[0], weights_only=True)
    assert split["x_train"].shape == (8, 3, 16, 16) and len(split["x_val"]) == len(split["x_test"]) == 2
    metrics = json.loads(versions(data / f"08_reporting/{task}/metrics.json")[0].read_text())
    assert metrics["metric"] == "mse" and [r["compression"] for r in metrics["results"]] == [0.0, 0.25, 0.5, 0.75]
    table = pd.read_csv(versions(data / f"08_reporting/{task}/accuracy_table.csv")[0])
    assert {"mse", "nll"} <= set(table.columns) and "accuracy" not in table
    for column in ("mse", "nll"):
        assert ((table[column] > 0) & table[column].map(math.isfinite)).all(), column
        assert all(r[column] > 0 and math.isfinite(r[column]) for r in metrics["results"]), column


def test_evaluate_reruns_alone_on_the_latest_versions(default_run):
    task, project = "mnist_offline", default_run
    data = project / "data"
    run(project, task, from_nodes=[f"{task}.evaluate"])
    assert len(versions(data / f"08_reporting/{task}/metrics.json")) == 2
    assert len(versions(data / f"06_models/{task}/inr_checkpoint.pt")) == 1
    assert len(versions(data / f"06_models/{task}/pretrained_model.pt")) == 1


def test_rerun_from_train_inr_uses_the_changed_parameters_and_refuses_a_stale_split(default_run):
    task, project = "mnist_offline", default_run
    path = project / "conf" / "base" / f"parameters_{task}.yml"
    original = path.read_text()
    # A split made with other data settings is never read: the rerun stops before training.
    path.write_text(original.replace("val_fraction: 0.1", "val_fraction: 0.2"))
    with pytest.raises(UserError, match=f"val_fraction 0.1 -> 0.2.*--from-nodes={task}.prepare_data"):
        run(project, task, from_nodes=[f"{task}.train_inr"])
    data = project / "data"
    assert len(versions(data / f"06_models/{task}/inr_checkpoint.pt")) == 1
    path.write_text(original.replace("hidden: 16", "hidden: 24"))
    run(project, task, from_nodes=[f"{task}.train_inr"])
    inrs = versions(data / f"06_models/{task}/inr_checkpoint.pt")
    assert len(inrs) == 2 and len(versions(data / f"06_models/{task}/pretrained_model.pt")) == 1
    latest = torch.load(inrs[-1], weights_only=True)
    assert latest["inr_config"]["hidden"] == 24


def test_mnist_offline_per_kind_layout_round_trips_through_the_checkpoint(tmp_path, monkeypatch):
    task = "mnist_offline"
    work_in(make_project(tmp_path, {task: {"inr": {"layout": "per_kind"}}}), monkeypatch)
    run(tmp_path, task, to_nodes=[f"{task}.sample_weights"])
    checkpoint = torch.load(versions(tmp_path / f"data/06_models/{task}/inr_checkpoint.pt")[0], weights_only=True)
    assert checkpoint["inr_config"]["layout"] == "per_kind"
    spec = MorphSpec.from_dict(checkpoint["spec"])
    assert checkpoint["inr_parameters"] == inr_parameter_count(checkpoint["inr_config"], spec)
    assert len(load_inr(checkpoint).mlps) == 4  # LeNet: 5x5 kernels, fc1's blocks, fc2, biases
    assert len(versions(tmp_path / f"data/07_model_output/{task}/sampled_models.pt")) == 1


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("samples: 2", "samples: 0", "sample.samples"),
        ("generated: all", "generated: conv9", "morph.generated: 'conv9' matches none of the conv/linear modules: conv1, conv2"),
        ("morphable: all", "morphable: [layer9]", "morph.morphable: 'layer9' matches none of the channel groups"),
        ("device: auto", "device: cuda:99", "mnist_offline.device: device 'cuda:99' was requested but this machine has"),
        ("input_shape:\n    - 1", "input_shape:\n    - 3", "model.input_shape"),
        ("shared: []", "shared: [fc9]", "inr.shared: 'fc9' matches none of the modules with parameters the INR does not generate"),
        ("branch_scale: []", "branch_scale: [conv9]", "inr.branch_scale: 'conv9' matches none of the generated modules: conv1"),
    ],
    ids=["range", "generated", "morphable", "device", "input_shape", "shared", "branch_scale"],
)
def test_invalid_parameters_stop_the_run_before_any_node_writes(project, old, new, message):
    task = "mnist_offline"
    path = project / "conf" / "base" / f"parameters_{task}.yml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(UserError, match=message):
        run(project, task)
    assert not [p for p in (project / "data").rglob("*") if p.is_file() and "01_raw" not in p.parts]


def test_missing_data_names_the_folder(project):
    path = project / "data" / "01_raw" / "MNIST"
    for f in (path / "raw").iterdir():
        f.unlink()
    with pytest.raises(Exception, match="MNIST/raw"):
        run(project, "mnist")


def test_a_distributed_stage_writes_one_version_from_rank_0(default_run):
    # train_inr again over two gloo processes: the node returns rank 0's result, so the catalog
    # gets exactly one new version of each output, and the resume folder is left empty.
    data = default_run / "data"
    run(default_run, "mnist_offline", params={"mnist_offline": {"distributed": {"nproc_per_node": 2}}},
        from_nodes=["mnist_offline.train_inr"], to_nodes=["mnist_offline.train_inr"])
    for output in ("06_models/mnist_offline/inr_checkpoint.pt", "08_reporting/mnist_offline/inr_history.json"):
        assert len(versions(data / output)) == 2, output  # the default run's and this one's
    assert not [p for p in (data / "06_models" / "mnist_offline" / "resume").glob("*") if p.suffix != ".lock"]
    history = json.loads(versions(data / "08_reporting/mnist_offline/inr_history.json")[-1].read_text())
    assert history["epochs"] and all(e["val_score"] > 0 for e in history["epochs"])  # rank 0 validated every epoch
