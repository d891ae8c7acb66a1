"""Data-parallel training launched from a node: two gloo processes on this CPU against one."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neumeta_pipeline.data import make_splits
from neumeta_pipeline.models import build_model
from neumeta_pipeline.models.checkpoint import model_checkpoint
from neumeta_pipeline.neumeta.distributed import WorkerFailedError, launch
from neumeta_pipeline.pipelines.neumeta import nodes
from tests.conftest import _digit_images
from tests.neumeta.distributed_workers import fail_on_rank_one, fit_with_resume, rank_and_world_size

REPO = Path(__file__).resolve().parents[2]

TASK = "tiny"
ARCH = {"name": "lenet", "kwargs": {"width": 4}, "input_shape": [1, 28, 28]}
# 128 training images in 4 global batches of 32, so each of two processes takes 16 of every batch.
PRETRAIN = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "progress": False}
# No coordinate noise: each rank draws its own, as it draws its own widths.
TRAIN_INR = {"epochs": 2, "batch_size": 32, "reconstruction_steps": 3, "coord_noise": 0.0, "progress": False,
             "validation_compressions": [0.0]}
INR = {"num_frequencies": 4, "hidden": 16, "depth": 1}
ONE, TWO = {"nproc_per_node": 1}, {"nproc_per_node": 2}


@pytest.fixture(scope="module")
def splits():
    labels = np.arange(200) % 10
    arrays = {"x_train": _digit_images(labels, np.random.default_rng(0))[:, None], "y_train": labels}
    return make_splits(arrays, 0.2, 0.2, seed=0)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # resume files live under data/06_models/<task>/resume
    return tmp_path


def _curve(history: list[dict]) -> np.ndarray:
    return np.array([[e["train_loss"], e["val_score"]] for e in history])


def test_pretrain_on_two_processes_follows_the_one_process_loss_curve(splits, workdir):
    # No BatchNorm in LeNet, equal shards: the averaged gradient is the one-process gradient, so
    # the curves differ only by the order of float additions.
    single, single_history = nodes.pretrain(splits, ARCH, PRETRAIN, None, 0, "cpu", TASK)
    double, double_history = nodes.pretrain(splits, ARCH, PRETRAIN, TWO, 0, "cpu", TASK)
    np.testing.assert_allclose(_curve(double_history), _curve(single_history), rtol=1e-4, atol=1e-5)
    for name, tensor in single["state_dict"].items():
        torch.testing.assert_close(double["state_dict"][name], tensor, rtol=1e-4, atol=1e-5)
    assert not list((workdir / "data" / "06_models" / TASK / "resume").glob("*.pt"))  # rank 0 finished its file


def test_train_inr_on_two_processes_follows_one_at_a_fixed_width(splits, workdir):
    # At one width (compression 0) and without noise no rank draws anything of its own, so 2
    # processes must match 1.
    fused = model_checkpoint(build_model("lenet", width=4), ARCH, fused=True)
    morph = {"compression_range": [0.0, 0.0]}
    runs = [nodes.train_inr(fused, splits, morph, INR, TRAIN_INR, settings, 0, "cpu", TASK) for settings in (ONE, TWO)]
    (one, one_history), (two, two_history) = runs
    np.testing.assert_allclose(_curve(two_history["epochs"]), _curve(one_history["epochs"]), rtol=1e-4, atol=1e-5)
    for name, tensor in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], tensor, rtol=1e-4, atol=1e-5)


def test_an_interrupted_distributed_run_resumes_to_the_uninterrupted_result(splits, tmp_path):
    settings = {"nproc_per_node": 2, "nnodes": 1, "node_rank": 0, "rdzv_endpoint": None, "backend": "gloo"}
    straight, straight_history = launch(settings, "straight", fit_with_resume, str(tmp_path / "a"), splits, None)
    with pytest.raises(WorkerFailedError, match="worker rank 0 failed: Interrupted: stopped on purpose"):
        launch(settings, "interrupted", fit_with_resume, str(tmp_path / "b"), splits, 7)  # mid second epoch of 4 steps
    assert list((tmp_path / "b").glob("fit-*.pt"))  # the state after epoch 1, every rank's streams in it
    resumed, resumed_history = launch(settings, "resumed", fit_with_resume, str(tmp_path / "b"), splits, None)
    assert [h["train_loss"] for h in resumed_history] == [h["train_loss"] for h in straight_history]
    for name, tensor in straight.items():
        assert torch.equal(resumed[name], tensor), name


def test_a_failing_worker_fails_the_launch_with_its_error():
    with pytest.raises(WorkerFailedError, match="worker rank 1 failed: ValueError: rank one cannot go on"):
        launch({"nproc_per_node": 2, "nnodes": 1, "node_rank": 0, "rdzv_endpoint": None, "backend": "gloo"}, "failing", fail_on_rank_one)


def test_two_machines_meet_at_node_0_which_gets_rank_0(tmp_path):
    # Two "machines" on this one: node 1 in another interpreter, node 0 here, one process each.
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    settings = {"nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": f"localhost:{port}", "backend": "gloo"}
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; from neumeta_pipeline.neumeta.distributed import launch; "
         "from tests.neumeta.distributed_workers import rank_and_world_size; "
         f"print(launch({{**{settings!r}, 'node_rank': 1}}, 'machines', rank_and_world_size))"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert launch({**settings, "node_rank": 0}, "machines", rank_and_world_size) == (0, 2)
        assert other.communicate(timeout=60)[0].strip() == "None"  # node 1 ran rank 1; the result is node 0's
    finally:
        other.kill()
