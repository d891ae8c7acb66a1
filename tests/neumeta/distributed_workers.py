"""Functions the distributed tests run in worker processes. A worker imports the module of the
function it runs, so they live apart from the test module, whose imports (Kedro, the nodes) would
add seconds to every worker's start."""

from __future__ import annotations

import contextlib
import os

import torch

from neumeta_pipeline.data import DeviceData
from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.distributed import rank_and_world
from neumeta_pipeline.neumeta.resume import ResumeFile
from neumeta_pipeline.neumeta.train import FitConfig, fit


class Interrupted(Exception):
    pass


def fit_with_resume(folder: str, splits: dict, interrupt_at: int | None) -> tuple[dict, list[dict]]:
    """A worker's run of the loop with a resume file on rank 0 and a random stream of each rank's
    own in the objective (as train_inr draws widths); rank 0 stops at step ``interrupt_at``."""
    rank, _ = rank_and_world()
    torch.manual_seed(0)
    net = build_model("lenet", width=4)
    own = torch.Generator().manual_seed(100 + rank)
    steps = {"n": 0}

    def objective(x, y):
        steps["n"] += 1
        if steps["n"] == interrupt_at and rank == 0:
            raise Interrupted("stopped on purpose")
        scale = 1.0 + torch.rand((), generator=own)  # differs per rank and step: a resumed run must restore it
        return scale * torch.nn.functional.cross_entropy(net(x), y), {}

    train, val = DeviceData(splits, "train", "cpu"), DeviceData(splits, "val", "cpu")
    config = FitConfig(epochs=3, batch_size=32, lr=3e-3, progress=False)
    resume = ResumeFile(folder, "fit", {"seed": 0}) if rank == 0 else None
    with resume if resume is not None else contextlib.nullcontext():
        result = fit(net, objective, train, lambda m: -float(m(val.x).logsumexp(1).mean()), config,
                     torch.Generator().manual_seed(0), resume=resume, extra_generators=(own,))
    return result.best.state_dict(), result.history


def fail_on_rank_one() -> str:
    if int(os.environ["RANK"]) == 1:
        raise ValueError("rank one cannot go on")
    torch.distributed.barrier()  # rank 0 waits for a peer that is gone: the launcher must end it
    return "unreachable"


def rank_and_world_size() -> tuple[int, int]:
    return rank_and_world()
