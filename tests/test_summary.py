"""The terminal summary of a run's tables."""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from neumeta_pipeline.summary import print_summary, table_metrics


def _printed(tables, charts=None) -> str:
    console = Console(record=True, width=200)
    print_summary(tables, charts or {}, console)
    return console.export_text()


def test_an_accuracy_table_lists_every_width_with_its_cost_and_whether_it_was_trained():
    frame = pd.DataFrame({
        "method": ["pretrained", "neumeta", "neumeta"], "compression": [0.0, 0.25, 0.75],
        "seen_in_training": [True, True, False], "widths": ["full", "conv1=12", "conv1=4"],
        "accuracy": [0.977, 0.9612, 0.7512], "params": [46730, 26506, 3146], "macs": [1000000, 500000, 120000],
    })
    text = _printed({"t.accuracy_table": frame}, {"t.accuracy_plot_png": "data/08_reporting/t/accuracy_plot.png/v/accuracy_plot.png"})
    rows = {line.split("│")[2].strip(): line for line in text.splitlines() if line.count("│") > 6}
    assert "96.12%" in rows["25%"] and "26,506" in rows["25%"] and "seen" in rows["25%"]
    assert "75.12%" in rows["75%"] and "3,146" in rows["75%"] and "unseen" in rows["75%"]
    assert "t.accuracy_plot_png: data/08_reporting/t/accuracy_plot.png/v/accuracy_plot.png" in text


def test_a_whole_network_width_list_is_shortened():
    widths = ",".join(f"layer{i}.conv1={i}" for i in range(9))
    frame = pd.DataFrame({"method": ["neumeta"], "compression": [0.5], "seen_in_training": [True], "widths": [widths],
                          "accuracy": [0.5], "params": [1], "macs": [1]})
    assert "layer0.conv1=0, ... (9 widths)" in _printed({"t.accuracy_table": frame})


def test_a_comparison_shows_each_method_as_a_row_with_its_training_cost():
    frame = pd.DataFrame({
        "task": ["t", "t"], "method": ["neumeta", "individual"], "acc@0%": [0.99, 0.995], "acc@75%": [0.97, float("nan")],
        "train_device_hours": [0.454, 0.116], "device": ["cpu", "cpu"], "stored_parameters": [553927, 347560],
        "widths_not_trained": ["75%", ""],
    })
    text = _printed({"t.comparison_table": frame})
    (neumeta,) = [line for line in text.splitlines() if "neumeta" in line]
    assert "99.00%" in neumeta and "97.00%" in neumeta and "0.4540" in neumeta and "553,927" in neumeta and "75%" in neumeta
    (individual,) = [line for line in text.splitlines() if "individual" in line]
    assert "99.50%" in individual and "nan" not in individual


def test_tracked_metrics_name_each_method_and_width_and_the_comparison_costs():
    widths = pd.DataFrame({"method": ["pretrained", "neumeta", "neumeta"], "compression": [0.0, 0.125, 0.75],
                           "accuracy": [0.98, 0.97, 0.9]})
    assert table_metrics("t.accuracy_table", widths) == {
        "accuracy/pretrained/0": 0.98, "accuracy/neumeta/12.5": 0.97, "accuracy/neumeta/75": 0.9}
    comparison = pd.DataFrame({"method": ["neumeta"], "acc@0%": [0.99], "train_device_hours": [0.454], "stored_parameters": [553927]})
    assert table_metrics("t.comparison_table", comparison) == {"train_device_hours/neumeta": 0.454, "stored_parameters/neumeta": 553927.0}
