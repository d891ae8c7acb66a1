"""What every run does around its nodes: reject bad parameters before the first node starts, keep
each run to its own versions, refuse a data split made with other settings, track the run, and
show the result at the end."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from kedro.framework.hooks import hook_impl
from kedro.io.core import AbstractVersionedDataset, Version, VersionNotFoundError

from .config import ConfigError, DataParams, check_against_model, validate_task
from .data import check_available
from .errors import UserError, install_excepthook
from .neumeta.train import resolve_device
from .summary import is_chart, is_result_table, print_summary, table_metrics

log = logging.getLogger(__name__)


def _tasks(pipeline) -> list[str]:
    return sorted({n.namespace.split(".")[0] for n in pipeline.nodes if n.namespace})


class ValidateParametersHook:
    @hook_impl
    def after_context_created(self, context) -> None:
        install_excepthook()  # a user error prints as its message, not as a traceback

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        try:
            self._check(pipeline, catalog)
        except Exception:
            _fail_tracked_run()
            raise

    @staticmethod
    def _check(pipeline, catalog) -> None:
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
        tables = {n: catalog.load(n) for n in produced if is_result_table(n)}
        charts = {n: _saved_path(catalog.get(n)) for n in produced if is_chart(n)}
        if tables or charts:
            print_summary(tables, charts)


def _saved_path(dataset) -> Path:
    """Where a dataset wrote this run's version (RunIsolationHook pinned it to the save version),
    relative to the project when it is inside it."""
    path = Path(str(dataset._get_load_path() if isinstance(dataset, AbstractVersionedDataset) else dataset._filepath))
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


class TrackingHook:
    """Experiment tracking (kedro-mlflow): kedro-mlflow opens an MLflow run per `kedro run` and logs
    every parameter a node reads; this adds the run's tags (tasks, pipeline, git commit), one metric
    per method and compression, and the charts. `tracking: false` (a parameter) switches it off."""

    @hook_impl
    def after_context_created(self, context) -> None:
        # kedro-mlflow's own hook has run (plugins are called first) and put its configuration on
        # the context; it only knows to skip named pipelines, so "off" names them all.
        tracking = context.params.get("tracking", True) is not False
        if not hasattr(context, "mlflow"):
            # kedro-mlflow is a dependency of the project, so this is an install that lacks it (a
            # GPU machine given only the core packages, say): say so rather than track nothing quietly.
            if tracking:
                log.warning("tracking is on but kedro-mlflow is not installed, so this run is not tracked: "
                            "install the project (`uv sync`) or set the parameter tracking: false")
        elif not tracking:
            from kedro.framework.project import pipelines

            context.mlflow.tracking.disable_tracking.pipelines = sorted(pipelines)

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        if _active_run() is None:
            return
        import mlflow

        mlflow.set_tags({
            "tasks": ",".join(_tasks(pipeline)),
            "pipeline": ",".join(run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]),
            "git_commit": _git_commit(run_params.get("project_path")),
        })

    @hook_impl
    def after_node_run(self, node, outputs: dict) -> None:
        if _active_run() is None:
            return
        import mlflow

        for name, value in outputs.items():
            if is_result_table(name):
                mlflow.log_metrics(table_metrics(name, value))
            elif is_chart(name):
                mlflow.log_figure(value, f"{name}.png")


def _fail_tracked_run() -> None:
    """kedro-mlflow opens its run before this project's checks and closes it in Kedro's
    on_pipeline_error, which an error raised before the first node bypasses: without this the run
    of a rejected configuration would end as FINISHED when the process exits."""
    if _active_run() is not None:
        import mlflow

        mlflow.end_run("FAILED")


def _active_run():
    """The MLflow run kedro-mlflow opened for this `kedro run`, if any. Without MLflow installed
    there is none (``after_context_created`` has said that tracking is off)."""
    try:
        import mlflow
    except ModuleNotFoundError:
        return None
    return mlflow.active_run()


def _git_commit(project_path) -> str:
    """The checkout's commit, with "+changes" when files differ from it; "unknown" outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_path, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_path, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")
