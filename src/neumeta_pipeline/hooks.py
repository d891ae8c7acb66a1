"""Reject invalid parameters of every task in a run before its first node starts."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl

from .config import validate_task
from .models import build_model


class ValidateParametersHook:
    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        tasks = sorted({n.namespace.split(".")[0] for n in pipeline.nodes if n.namespace})
        for task in tasks:
            key = f"params:{task}"
            if key not in catalog:
                raise ValueError(f"no parameters for task {task!r}: add a top-level '{task}:' key in conf/base/parameters_{task}.yml")
            params = validate_task(task, catalog.load(key))
            try:
                net = build_model(params.model.name, **params.model.kwargs)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"invalid parameters for task {task!r}: {task}.model.kwargs: {exc}") from None
            layers = [name for name, _ in net.named_modules() if name]
            if params.similarity.layer not in layers:
                raise ValueError(
                    f"invalid parameters for task {task!r}: {task}.similarity.layer {params.similarity.layer!r} "
                    f"is not a layer of {params.model.name}; layers: {', '.join(layers)}"
                )
