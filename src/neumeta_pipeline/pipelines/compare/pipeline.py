"""The baselines and the comparison reports, in the task's namespace next to the NeuMeta chain.

Each baseline is tagged with its name, so the registry can offer it as a pipeline of its own
(``<task>_individual``, ...) and ``kedro run --tags`` can pick it; the reports read the NeuMeta
artifacts and every baseline's, so ``<task>_compare`` is the whole study.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from ..neumeta.pipeline import _bind_task
from . import nodes

BASELINES = ("individual", "slimmable", "pruning", "distilled")
REPORTS = "report"


def _template(task: str) -> Pipeline:
    train_args = ["splits", "params:model", "params:pretrain", "params:morph", "params:baselines", "params:distributed", "params:seed",
                  "params:device"]
    evaluate_args = ["splits", "params:model", "params:evaluate"]
    baseline_nodes = [
        node(_bind_task(nodes.train_individual, task), train_args, ["individual_models", "individual_history"],
             name="train_individual", tags="individual"),
        node(_bind_task(nodes.train_slimmable, task), train_args, ["slimmable_models", "slimmable_history"],
             name="train_slimmable", tags="slimmable"),
        node(nodes.prune_pretrained, ["pretrained_model", "splits", "params:morph", "params:baselines", "params:seed"],
             ["pruning_models", "pruning_history"], name="prune_pretrained", tags="pruning"),
        node(_bind_task(nodes.train_distilled, task),
             ["pretrained_model", "splits", "params:pretrain", "params:morph", "params:baselines", "params:distributed", "params:seed",
              "params:device"],
             ["distilled_models", "distilled_history"], name="train_distilled", tags="distilled"),
    ]
    evaluate_nodes = [
        node(_bind_task(nodes.evaluate_baseline, task), [f"{b}_models", f"{b}_history", *evaluate_args], f"{b}_table",
             name=f"evaluate_{b}", tags=b)
        for b in BASELINES
    ]
    report_nodes = [
        node(
            _bind_task(nodes.compare_methods, task),
            ["accuracy_table", "pretrain_history", "inr_history", "inr_checkpoint", "fused_model", *(f"{b}_table" for b in BASELINES)],
            ["comparison_table", "comparison_plot", "comparison_plot_png"],
            name="compare_methods", tags=REPORTS,
        ),
        node(
            _bind_task(nodes.analyse_similarity, task),
            ["sampled_models", "individual_models", "distilled_models", "splits", "params:baselines", "params:similarity"],
            ["similarity_table", "similarity_plot", "similarity_plot_png"],
            name="analyse_similarity", tags=REPORTS,
        ),
    ]
    return Pipeline(baseline_nodes + evaluate_nodes + report_nodes)


def create_pipeline(task: str) -> Pipeline:
    return Pipeline(_template(task), namespace=task)
