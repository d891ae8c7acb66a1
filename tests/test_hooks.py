"""Run isolation: a run reads back its own versions even while another run writes newer ones.
Tracking: an install without MLflow says that it does not track, and runs."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import torch
from kedro.framework.hooks import hook_impl
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io.core import Version

from neumeta_pipeline.datasets import TorchCheckpointDataset
from neumeta_pipeline.hooks import TrackingHook
from neumeta_pipeline.neumeta.resume import content_hash
from tests.pipelines.conftest import project  # noqa: F401  (fixture)

TASK = "mnist_offline"
LATER = "2999-01-01T00.00.00.000Z"  # newer than any version this run writes


class ConcurrentWriter:
    """Plays a second run: right after this run fuses its model, a newer fused model and split appear."""

    @hook_impl
    def after_node_run(self, node, outputs: dict) -> None:
        if node.name != f"{TASK}.fuse_batchnorm":
            return
        fused = outputs[f"{TASK}.fused_model"]
        other = {**fused, "state_dict": {k: torch.zeros_like(v) for k, v in fused["state_dict"].items()}}
        TorchCheckpointDataset(filepath=f"data/06_models/{TASK}/fused_model.pt", version=Version(None, LATER)).save(other)


def test_a_run_reads_its_own_versions_while_another_run_writes_newer_ones(project):  # noqa: F811
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        session._hook_manager.register(ConcurrentWriter())
        session.run(pipeline_names=[TASK])
    folder = project / "data/06_models" / TASK
    (own,) = [p for p in folder.glob("fused_model.pt/*/fused_model.pt") if LATER not in str(p)]
    (inr,) = folder.glob("inr_checkpoint.pt/*/inr_checkpoint.pt")
    trained_on = torch.load(inr, weights_only=True)["trained_on"]["fused_model"]
    assert trained_on == content_hash(torch.load(own, weights_only=True))
    assert trained_on != content_hash(torch.load(folder / "fused_model.pt" / LATER / "fused_model.pt", weights_only=True))


def test_without_mlflow_tracking_says_it_is_off_and_the_hooks_do_nothing(monkeypatch, caplog):
    # A machine given only the core packages (a GPU machine without MLflow): kedro-mlflow put no
    # configuration on the context, and `import mlflow` fails.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    hook = TrackingHook()
    with caplog.at_level(logging.WARNING, logger="neumeta_pipeline.hooks"):
        hook.after_context_created(SimpleNamespace(params={"tracking": True}))
    assert "kedro-mlflow is not installed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neumeta_pipeline.hooks"):
        hook.after_context_created(SimpleNamespace(params={"tracking": False}))
    assert caplog.text == ""  # switched off on purpose: nothing to say
    hook.before_pipeline_run({}, None, None)
    hook.after_node_run(None, {f"{TASK}.accuracy_table": None})
