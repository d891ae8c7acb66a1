"""The comparison's nodes called directly, on a tiny LeNet (no Kedro session): every baseline
network and every result row says which inputs it came from, and no report mixes runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from neumeta_pipeline.data import make_splits
from neumeta_pipeline.errors import UserError
from neumeta_pipeline.models import build_model
from neumeta_pipeline.models.checkpoint import model_checkpoint
from neumeta_pipeline.neumeta.resume import content_hash
from neumeta_pipeline.pipelines.compare import nodes
from neumeta_pipeline.pipelines.neumeta.nodes import split_label
from tests.conftest import _digit_images

TASK = "tiny"
ARCH = {"name": "lenet", "kwargs": {"width": 4}, "input_shape": [1, 28, 28]}
MORPH = {"compression_range": [0.0, 0.5]}
PRUNING = {"compressions": [0.0, 0.5], "pruning_importances": ["l1"], "calibration_images": 8}


def tiny_splits(seed: int) -> dict:
    labels = np.arange(100) % 10
    arrays = {"x_train": _digit_images(labels, np.random.default_rng(0))[:, None], "y_train": labels}
    return make_splits(arrays, 0.2, 0.2, seed=seed)  # another seed: the same images split otherwise


@pytest.fixture(scope="module")
def run():
    """A pretrained network, its split, and the pruning baseline built and scored on them."""
    torch.manual_seed(0)
    pretrained, splits = model_checkpoint(build_model("lenet", width=4), ARCH), tiny_splits(0)
    models, history = nodes.prune_pretrained(pretrained, splits, MORPH, PRUNING, 0)
    return pretrained, splits, models, history


def test_baseline_networks_record_what_they_were_built_from(run):
    pretrained, splits, models, history = run
    expected = {"pretrained_model": content_hash(pretrained), "splits": content_hash(splits)}
    assert [c["trained_on"] for c in models["pruning_l1"].values()] == [expected, expected]
    table = nodes.evaluate_baseline(models, history, splits, ARCH, {}, TASK)
    assert list(table.split) == [split_label(content_hash(splits))] * 2


def test_a_baseline_is_not_scored_on_another_split(run):
    pretrained, _, models, history = run
    # Another seed's split: its test images may be the ones this network was calibrated on.
    with pytest.raises(UserError, match=r"pruning, L1 network at 0% was trained on another splits .*"
                                        r"--nodes=tiny\.prune_pretrained,tiny\.evaluate_pruning"):
        nodes.evaluate_baseline(models, history, tiny_splits(1), ARCH, {}, TASK)


def test_the_similarity_study_refuses_baseline_networks_of_another_split(run):
    _, splits, models, _ = run
    individual = {"individual": models["pruning_l1"]}  # any recorded network stands in for the family
    other = tiny_splits(1)
    with pytest.raises(UserError, match=r"individually trained network at 0% was trained on another splits"):
        nodes.analyse_similarity({}, individual, {"distilled": {}}, other, PRUNING, {"layer": "fc1"}, TASK)


def test_the_comparison_refuses_tables_scored_on_different_splits(run):
    pretrained, splits, models, history = run
    ours = nodes.evaluate_baseline(models, history, splits, ARCH, {}, TASK).assign(method="neumeta")
    inr = {"spec": {"tensors": []}, "inr_config": {}, "inr_parameters": 1}
    inr_history = {"reconstruction_seconds": 0.0, "device": "cpu", "epochs": []}
    same = nodes.evaluate_baseline(models, history, splits, ARCH, {}, TASK)
    table, _, _ = nodes.compare_methods(ours, [], inr_history, inr, pretrained, same, task=TASK)
    assert list(table.method) == ["neumeta", "pruning_l1"]
    # The baseline's newest table from a run with another seed: its own networks, its own split.
    other = tiny_splits(1)
    stale = nodes.evaluate_baseline(*nodes.prune_pretrained(pretrained, other, MORPH, PRUNING, 1), other, ARCH, {}, TASK)
    ours_split, stale_split = (split_label(content_hash(s)) for s in (splits, other))
    with pytest.raises(UserError, match=rf"NeuMeta on split {ours_split}; pruning, L1 on split {stale_split}"):
        nodes.compare_methods(ours, [], inr_history, inr, pretrained, stale, task=TASK)
    # Tables written before rows recorded their split are compared as before.
    table, _, _ = nodes.compare_methods(ours.drop(columns="split"), [], inr_history, inr, pretrained, stale, task=TASK)
    assert isinstance(table, pd.DataFrame) and len(table) == 2
