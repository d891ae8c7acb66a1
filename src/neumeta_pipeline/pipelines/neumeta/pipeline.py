"""The NeuMeta chain as one template pipeline, instanced per task with a Kedro namespace.

Namespacing turns dataset ``pretrained_model`` into ``<task>.pretrained_model`` and parameter
``params:pretrain`` into ``params:<task>.pretrain``, so every task has its own parameters file
section and its own versioned artifacts, and ``--from-nodes=<task>.train_inr`` reruns one stage.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from . import nodes


def _bind_task(func, task: str):
    # Nodes that label results or keep resume files per task get the namespace bound, rather than
    # a parameter that repeats it and could disagree.
    return update_wrapper(partial(func, task=task), func)


def _template(task: str) -> Pipeline:
    return Pipeline(
        [
            node(nodes.prepare_data, ["params:data", "params:seed", "params:kind"], "splits", name="prepare_data"),
            node(
                _bind_task(nodes.pretrain, task),
                ["splits", "params:model", "params:pretrain", "params:distributed", "params:seed", "params:device"],
                ["pretrained_model", "pretrain_history"],
                name="pretrain",
            ),
            node(nodes.extract_dependency_graph, "pretrained_model", "dependency_graph", name="extract_dependency_graph"),
            node(
                nodes.permute_weights,
                ["pretrained_model", "dependency_graph", "params:permute"],
                ["permuted_model", "permutation_report"],
                name="permute_weights",
            ),
            node(nodes.fuse_batchnorm, ["permuted_model", "params:morph"], "fused_model", name="fuse_batchnorm"),
            node(
                _bind_task(nodes.train_inr, task),
                ["fused_model", "splits", "params:morph", "params:inr", "params:train_inr", "params:distributed", "params:seed",
                 "params:device"],
                ["inr_checkpoint", "inr_history"],
                name="train_inr",
            ),
            node(
                nodes.sample_weights, ["inr_checkpoint", "fused_model", "splits", "params:sample"], "sampled_models", name="sample_weights"
            ),
            node(nodes.export_onnx, ["sampled_models", "params:export"], ["onnx_model", "onnx_report"], name="export_onnx"),
            node(
                _bind_task(nodes.evaluate, task),
                ["sampled_models", "pretrained_model", "fused_model", "splits", "params:morph", "params:evaluate"],
                ["metrics", "accuracy_table", "accuracy_plot", "accuracy_plot_png", "examples_plot_png"],
                name="evaluate",
            ),
        ]
    )


def create_pipeline(task: str) -> Pipeline:
    return Pipeline(_template(task), namespace=task)
