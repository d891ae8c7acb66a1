"""Every task is the NeuMeta template pipeline under its own namespace, with its baselines beside it.

For a task ``t``: ``t`` is the NeuMeta chain; ``t_individual``, ``t_slimmable``, ``t_pruning`` and
``t_distilled`` each build one baseline (with the data preparation, and the pretraining it needs);
``t_compare`` is everything, ending in the comparison and similarity reports.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from .pipelines import compare, neumeta

DEFAULT_TASK = "mnist_offline"
TASKS = (
    "mnist_offline", "mnist", "cifar10", "cifar100", "cifar10_subset", "cifar10_subset_full", "cifar100_r56_full", "imagenet_r18",
    "imagenet_r50", "camvid", "voc", "mnist_vae", "celeba_vae",
)
# Which NeuMeta stages each baseline starts from: pruning and distillation need the pretrained net.
_NEEDS = {"individual": "prepare_data", "slimmable": "prepare_data", "pruning": "pretrain", "distilled": "pretrain"}


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {}
    for task in TASKS:
        chain, others = neumeta.create_pipeline(task), compare.create_pipeline(task)
        pipelines[task] = chain
        for baseline in compare.BASELINES:
            pipelines[f"{task}_{baseline}"] = chain.to_nodes(f"{task}.{_NEEDS[baseline]}") + others.only_nodes_with_tags(baseline)
        pipelines[f"{task}_compare"] = chain + others
    pipelines["__default__"] = pipelines[DEFAULT_TASK]
    return pipelines
