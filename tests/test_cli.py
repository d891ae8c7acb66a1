"""The project as a user meets it: the kedro command line in a copy of the project.

A run and a rejected run go through the installed `kedro` script in a new process, as a user types
them; the other commands run Kedro's command line (``KedroCLI``, what that script builds) inside
the test process, which spares each the ~6 s start of a new Python that imports torch and MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from kedro.framework.cli.cli import KedroCLI
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from mlflow.tracking import MlflowClient

from neumeta_pipeline.config import check_against_model, validate_task
from neumeta_pipeline.pipeline_registry import TASKS
from neumeta_pipeline.pipelines.compare import BASELINES
from tests.pipelines.conftest import REPO, make_project, project  # noqa: F401  (fixture)

KEDRO = str(Path(sys.executable).with_name("kedro"))
NODES = ["prepare_data", "pretrain", "extract_dependency_graph", "permute_weights", "fuse_batchnorm",
         "train_inr", "sample_weights", "export_onnx", "evaluate"]
COMPARE_NODES = ["train_individual", "train_slimmable", "prune_pretrained", "train_distilled", "evaluate_individual",
                 "evaluate_slimmable", "evaluate_pruning", "evaluate_distilled", "compare_methods", "analyse_similarity"]


def kedro(project: Path, *args: str, expect: int = 0) -> str:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    env.pop("NEUMETA_TRACEBACK", None)
    done = subprocess.run([KEDRO, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, done.stdout + done.stderr
    return done.stdout + done.stderr


def kedro_here(project: Path, *args: str, expect: int = 0) -> tuple[str, BaseException | None]:
    """A kedro command through Kedro's command line, in this process (cwd: the project)."""
    result = CliRunner().invoke(KedroCLI(project), list(args))
    assert result.exit_code == expect, result.output + repr(result.exception)
    return result.output, result.exception


def mlflow_runs(project: Path) -> list:
    """Every run in the project's tracking store (conf/base/mlflow.yml)."""
    if not (project / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_registry_lists_every_task_with_its_baselines(project):  # noqa: F811
    out, _ = kedro_here(project, "registry", "list")
    for task in (*TASKS, "__default__"):
        assert f"- {task}" in out
    for task in TASKS:
        for suffix in (*BASELINES, "compare"):
            assert f"- {task}_{suffix}" in out


def test_viz_build_lists_every_node_of_every_task(project):  # noqa: F811
    kedro_here(project, "viz", "build")
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


def test_run_with_the_deprecated_pipeline_flag_then_prune_old_versions(project):  # noqa: F811
    out = kedro(project, "run", "--pipeline=mnist_offline")
    assert "Add type hints" not in out  # MLflow's start-up warning is filtered (cli_hooks.py)
    # The result where the user looks: the accuracy table and the chart's file, from SummaryHook.
    assert "mnist_offline.accuracy_table" in out and "unseen" in out
    (chart,) = (project / "data/08_reporting/mnist_offline/accuracy_plot.png").glob("*/accuracy_plot.png")
    assert f"mnist_offline.accuracy_plot_png: {chart.relative_to(project)}" in out
    # Tracked in the project's own store: the parameters the nodes read, a metric per width, the
    # tags and the chart.
    (run,) = mlflow_runs(project)
    assert run.info.status == "FINISHED"
    assert run.data.params["mnist_offline.train_inr.epochs"] == "1" and run.data.params["mnist_offline.seed"] == "0"
    table = pd.read_csv(next((project / "data/08_reporting/mnist_offline/accuracy_table.csv").glob("*/*.csv")))
    for row in table.itertuples():
        assert run.data.metrics[f"accuracy/{row.method}/{100 * row.compression:g}"] == row.accuracy
    assert {k: run.data.tags[k] for k in ("tasks", "pipeline")} == {"tasks": "mnist_offline", "pipeline": "mnist_offline"}
    assert run.data.tags["git_commit"] == "unknown"  # the copy is not a git checkout
    assert run.data.tags["run_id"] == chart.parent.name  # the MLflow run names the catalog versions it wrote
    artifacts = [a.path for a in MlflowClient(f"sqlite:///{project}/mlflow.db").list_artifacts(run.info.run_id)]
    assert artifacts == ["mnist_offline.accuracy_plot_png.png", "mnist_offline.examples_plot_png.png"]
    data = project / "data"
    versions = sorted(data.glob("*/mnist_offline/*/*/"))
    assert len(versions) == 17 and data / "08_reporting/mnist_offline/metrics.json" in [v.parent for v in versions]
    for version in versions:  # as if an earlier run had written each dataset too
        shutil.copytree(version, version.with_name("2020-01-01T00.00.00.000Z"))
    dry, _ = kedro_here(project, "prune", "--keep", "1", "--task", "mnist_offline")
    assert "data/06_models/mnist_offline/inr_checkpoint.pt: would remove 1 of 2 versions" in dry
    assert "run again with --apply" in dry and len(list(data.glob("*/mnist_offline/*/*/"))) == 34
    kedro_here(project, "prune", "--keep", "1", "--apply")
    assert sorted(data.glob("*/mnist_offline/*/*/")) == versions


def test_a_run_configuration_file_carries_lists_into_the_parameters(project):  # noqa: F811
    # The committed example, merged key by key: its lists replace the base values, the rest stays.
    runtime = yaml.safe_load((project / "conf/runs/wide_range.yml").read_text())["run"]["params"]
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=runtime) as session:
        params = session.load_context().params["mnist_offline"]
    base = yaml.safe_load((project / "conf/base/parameters_mnist_offline.yml").read_text())["mnist_offline"]
    assert params["morph"] == {**base["morph"], "compression_range": [0.0, 0.75]}
    assert params["train_inr"] == {**base["train_inr"], "validation_compressions": [0.0, 0.375, 0.75]}
    validate_task("mnist_offline", params)
    # Through the command line (the user's path): a list arrives as a list, and is validated.
    bad = project / "bad.yml"
    params = {"tracking": False, "mnist_offline": {"morph": {"compression_range": [0.75, 0.0]}}}
    bad.write_text(yaml.safe_dump({"run": {"pipelines": "mnist_offline", "params": params}}))
    _, error = kedro_here(project, "run", "--config", str(bad), expect=1)
    assert "compression_range must be [low, high] with low <= high, got [0.75, 0.0]" in str(error)
    assert mlflow_runs(project) == []  # tracking: false records no run


@pytest.mark.parametrize("config", sorted(path.name for path in (REPO / "conf" / "runs").glob("*.yml")))
def test_every_committed_run_configuration_passes_the_checks_a_run_makes_first(project, config):  # noqa: F811
    # A run configuration is only read when a user runs it; check each one against its tasks here.
    run = yaml.safe_load((project / "conf" / "runs" / config).read_text())["run"]
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params=run["params"]) as session:
        params = session.load_context().params
    tasks = [task for task in run["params"] if task in TASKS]
    # Every pipeline it runs belongs to a task whose parameters it sets.
    assert all(any(p == t or p.startswith(f"{t}_") for t in tasks) for p in run["pipelines"].split(","))
    for task in tasks:
        check_against_model(task, validate_task(task, params[task]))


def test_a_user_error_prints_its_reason_without_a_traceback(tmp_path):
    project = make_project(tmp_path)
    out = kedro(project, "run", "--params", "mnist_offline.morph.generated=conv9", expect=1)
    assert "Error: invalid parameters for task 'mnist_offline'" in out
    assert "mnist_offline.morph.generated: 'conv9' matches none of the conv/linear modules" in out
    # Kedro's and kedro-mlflow's start-up log lines, then the reason; no traceback.
    assert "Traceback" not in out and len(out.splitlines()) < 60
    (run,) = mlflow_runs(project)  # tracked (the default), and marked as failed
    assert run.info.status == "FAILED"
