"""What every run does around its nodes: reject bad parameters before the first node starts, keep
each run to its own versions, refuse a data split made with other settings, and show the result
at the end."""

from __future__ import annotations

import logging
from pathlib import Path

from kedro.framework.hooks import hook_impl
from kedro.io.core import AbstractVersionedDataset, Version, VersionNotFoundError

from .config import ConfigError, DataParams, check_against_model, validate_task
from .data import check_available
from .errors import UserError, install_excepthook
from .neumeta.train import resolve_device
from .summary import PLOT_SUFFIX, SKIPPED, TABLE_SUFFIX, print_summary

log = logging.getLogger(__name__)


def _tasks(pipeline) -> list[str]:
    return sorted({n.namespace.split(".")[0] for n in pipeline.nodes if n.namespace})


class ValidateParametersHook:
    @hook_impl
    def after_context_created(self, context) -> None:
        install_excepthook()  # a user error prints as its message, not as a traceback

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        names = {n.name for n in pipeline.nodes}
        inputs = {i for n in pipeline.nodes for i in n.inputs}
        for task in _tasks(pipeline):
            key = f"params:{task}"
            if key not in catalog:
                raise ConfigError(f"no parameters for task {task!r}: add a top-level '{task}:' key in conf/base/parameters_{task}.yml")
            params = validate_task(task, catalog.load(key))
            check_against_model(task, params)
            if f"params:{task}.device" in inputs:
                try:
                    resolve_device(params.device)
                except UserError as exc:
                    raise ConfigError(f"invalid parameters for task {task!r}: {task}.device: {exc}") from None
            if f"{task}.prepare_data" in names:
                check_available(params.data.source, params.data.root, params.data.download)


class RunIsolationHook:
    """A run reads back exactly what it wrote, and inputs it did not write as they were when it
    started: a second run writing the same datasets at the same time can never leak into it."""

    def __init__(self) -> None:
        self._split_settings: dict[str, dict] = {}

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        self._split_settings = {
            task: DataParams.model_validate(catalog.load(f"params:{task}.data")).split_settings(catalog.load(f"params:{task}.seed"))
            for task in _tasks(pipeline)
        }
        produced = pipeline.all_outputs()
        for name in sorted(pipeline.datasets()):
            dataset = catalog.get(name)
            version = getattr(dataset, "_version", None)
            if not isinstance(dataset, AbstractVersionedDataset) or version is None or version.load is not None:
                continue  # not versioned, or pinned by --load-versions
            save = dataset.resolve_save_version()
            if name in produced:
                # Kedro would otherwise load the newest version on disk, which another run may have written.
                dataset._version = Version(save, save)
                continue
            try:
                latest = dataset.resolve_load_version()
            except VersionNotFoundError:
                continue  # Kedro reports the missing input when the node needs it
            dataset._version = Version(latest, save)
            log.info("reading %s version %s", name, latest)

    @hook_impl
    def before_node_run(self, node, inputs: dict) -> None:
        for name, value in inputs.items():
            task = name.rsplit(".", 1)[0]
            if not name.endswith(".splits") or task not in self._split_settings:
                continue
            wanted, made = self._split_settings[task], value.get("made_with")
            if made != wanted:
                changed = ", ".join(f"{k} {made.get(k)!r} -> {v!r}" for k, v in wanted.items() if made.get(k) != v) if made else "unknown settings"
                raise UserError(
                    f"the data split {name} that {node.name} would read was made with other data settings ({changed}); "
                    f"make a new one first: kedro run --pipelines={task} --from-nodes={task}.prepare_data"
                )


class SummaryHook:
    """After a run, the tables it wrote (accuracy per width, each baseline, the comparison) as
    terminal tables, and the files its charts went to."""

    @hook_impl
    def after_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        produced = sorted(pipeline.all_outputs())
        tables = {n: catalog.load(n) for n in produced if n.endswith(TABLE_SUFFIX) and not n.endswith(SKIPPED)}
        charts = {n: _saved_path(catalog.get(n)) for n in produced if n.endswith(PLOT_SUFFIX)}
        if tables or charts:
            print_summary(tables, charts)


def _saved_path(dataset) -> Path:
    """Where a dataset wrote this run's version (RunIsolationHook pinned it to the save version),
    relative to the project when it is inside it."""
    path = Path(str(dataset._get_load_path() if isinstance(dataset, AbstractVersionedDataset) else dataset._filepath))
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
