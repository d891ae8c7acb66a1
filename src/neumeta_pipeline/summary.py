"""The result of a run where the user looks: a compact table in the terminal, and the same
figures as tracked metrics.

A run's figures live in versioned CSV files five folders deep; after every pipeline that evaluates,
``SummaryHook`` (``hooks.py``) prints each table the run wrote and the paths of its charts, and
``TrackingHook`` logs ``table_metrics`` of each table to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from .neumeta.tasks import METRIC_NAMES, METRIC_SHORT, PERCENT_METRICS, table_metric


def is_result_table(name: str) -> bool:
    """A catalog entry holding a run's results (accuracy per width, a baseline's, the comparison);
    the similarity table is a study with other columns, not a result per width."""
    return name.endswith("_table") and not name.endswith(".similarity_table")


def is_chart(name: str) -> bool:
    return name.endswith("_plot_png")


def _score(value: float, metric: str) -> str:
    """A score as tables show it: fractions as percentages, the others (a VAE's MSE) as they are."""
    return f"{100 * value:.2f}%" if metric in PERCENT_METRICS else f"{value:.2f}"


def _count(value: float) -> str:
    return f"{int(value):,}"


def method_table(frame: pd.DataFrame, title: str) -> Table:
    """One row per (method, compression): widths, parameters, MACs, the score (accuracy, or mIoU
    for segmentation), seen or unseen."""
    metric = table_metric(frame)
    table = Table(title=title, title_justify="left")
    for column, justify in (("method", "left"), ("compression", "right"), ("widths", "left"), ("parameters", "right"),
                            ("MACs", "right"), (METRIC_NAMES[metric], "right"), ("trained", "left")):
        table.add_column(column, justify=justify)
    for row in frame.itertuples(index=False):
        seen = getattr(row, "seen_in_training", True)
        widths = str(row.widths)
        if len(widths) > 48:  # whole-ResNet widths list every block; the first and the count say enough
            parts = widths.split(",")
            widths = f"{parts[0]}, ... ({len(parts)} widths)"
        table.add_row(row.method, f"{100 * row.compression:g}%", widths, _count(row.params), _count(row.macs),
                      _score(getattr(row, metric), metric), "seen" if seen else "[bold]unseen[/bold]")
    return table


def comparison_table(frame: pd.DataFrame, title: str) -> Table:
    """The comparison as it is stored: a row per method, accuracy per compression, training cost in
    device-hours, stored parameters and the widths the method never trained."""
    metric = table_metric_of_comparison(frame)
    accuracy = [c for c in frame.columns if c.startswith(f"{METRIC_SHORT[metric]}@")]
    table = Table(title=title, title_justify="left")
    table.add_column("method")
    for column in accuracy:
        table.add_column(column.removeprefix("acc@"), justify="right")
    for column in ("device-hours", "stored parameters", "not trained"):
        table.add_column(column, justify="right" if column != "not trained" else "left")
    for row in frame.to_dict("records"):
        table.add_row(row["method"], *("" if pd.isna(row[c]) else _score(row[c], metric) for c in accuracy),
                      f"{row['train_device_hours']:.4f}", _count(row["stored_parameters"]), str(row["widths_not_trained"]))
    return table


def table_metric_of_comparison(frame: pd.DataFrame) -> str:
    """The metric a comparison table's ``<short>@<compression>`` columns hold."""
    return next(m for m, short in METRIC_SHORT.items() if any(c.startswith(f"{short}@") for c in frame.columns))


def table_metrics(name: str, frame: pd.DataFrame) -> dict[str, float]:
    """Flat metrics of one table, one per figure, named so that MLflow's charts line runs up:
    ``accuracy/<method>/<compression in %>`` (``miou/...`` for segmentation) for a per-width table, and for the comparison
    ``train_device_hours/<method>`` and ``stored_parameters/<method>``."""
    if name.endswith(".comparison_table"):
        metrics = {}
        for row in frame.to_dict("records"):
            metrics[f"train_device_hours/{row['method']}"] = float(row["train_device_hours"])
            metrics[f"stored_parameters/{row['method']}"] = float(row["stored_parameters"])
        return metrics
    metric = table_metric(frame)
    return {f"{metric}/{row.method}/{100 * row.compression:g}": float(getattr(row, metric)) for row in frame.itertuples(index=False)}


def render(name: str, frame: pd.DataFrame) -> Table:
    """The table for one catalog entry: the comparison a row per method, the rest a row per width."""
    if name.endswith(".comparison_table"):
        return comparison_table(frame, name)
    return method_table(frame, name)


def print_summary(tables: Mapping[str, pd.DataFrame], charts: Mapping[str, Path], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: rich would squeeze the table into 80 columns
            console = Console(width=200)
    for name, frame in tables.items():
        console.print(render(name, frame))
    for name, path in charts.items():
        console.print(f"{name}: {path}", soft_wrap=True, highlight=False)
