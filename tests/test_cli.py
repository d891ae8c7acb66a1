"""The project as a user meets it: the kedro command line in a copy of the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from neumeta_pipeline.pipeline_registry import TASKS
from neumeta_pipeline.pipelines.compare import BASELINES
from tests.pipelines.conftest import make_project

KEDRO = str(Path(sys.executable).with_name("kedro"))
NODES = ["prepare_data", "pretrain", "extract_dependency_graph", "permute_weights", "fuse_batchnorm",
         "train_inr", "sample_weights", "export_onnx", "evaluate"]
COMPARE_NODES = ["train_individual", "train_slimmable", "prune_pretrained", "train_distilled", "evaluate_individual",
                 "evaluate_slimmable", "evaluate_pruning", "evaluate_distilled", "compare_methods", "analyse_similarity"]


def kedro(project: Path, *args: str) -> str:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([KEDRO, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_registry_lists_every_task_with_its_baselines(tmp_path):
    out = kedro(make_project(tmp_path), "registry", "list")
    for task in (*TASKS, "__default__"):
        assert f"- {task}" in out
    for task in TASKS:
        for suffix in (*BASELINES, "compare"):
            assert f"- {task}_{suffix}" in out


def test_viz_build_lists_every_node_of_every_task(tmp_path):
    project = make_project(tmp_path)
    kedro(project, "viz", "build")
    api = project / "build" / "api"
    # api/main is kedro-viz's landing graph: the default pipeline (the offline MNIST task), with
    # every registered pipeline listed; each task's own graph is api/pipelines/<task>.
    main = json.loads((api / "main").read_text())
    assert {p["id"] for p in main["pipelines"]} >= {*TASKS, "__default__"}
    assert {n["full_name"] for n in main["nodes"] if n["type"] == "task"} == {f"mnist_offline.{n}" for n in NODES}
    for task in TASKS:
        graph = json.loads((api / "pipelines" / task).read_text())
        assert {n["full_name"] for n in graph["nodes"] if n["type"] == "task"} == {f"{task}.{n}" for n in NODES}
        # The comparison's lineage: every baseline and both reports beside the NeuMeta chain.
        compare = json.loads((api / "pipelines" / f"{task}_compare").read_text())
        names = {n["full_name"] for n in compare["nodes"] if n["type"] == "task"}
        assert names == {f"{task}.{n}" for n in (*NODES, *COMPARE_NODES)}


def test_run_with_the_deprecated_pipeline_flag(tmp_path):
    project = make_project(tmp_path)
    kedro(project, "run", "--pipeline=mnist_offline")
    assert list((project / "data" / "08_reporting" / "mnist_offline" / "metrics.json").glob("*/metrics.json"))
