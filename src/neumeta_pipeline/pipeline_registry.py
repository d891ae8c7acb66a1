"""Every task is the NeuMeta template pipeline under its own namespace."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from .pipelines.neumeta import create_pipeline

DEFAULT_TASK = "mnist_offline"
TASKS = ("mnist_offline", "mnist", "cifar10", "cifar100")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {task: create_pipeline(task) for task in TASKS}
    pipelines["__default__"] = pipelines[DEFAULT_TASK]
    return pipelines
