"""Data-parallel training over several processes, started from inside a Kedro node.

A training node with ``distributed`` settings does not fork its code: it hands its own body to
PyTorch's elastic launcher (the machinery behind ``torchrun``), which starts ``nproc_per_node``
worker processes per machine, joins them in one process group and returns every worker's result.
The node returns rank 0's, so the catalog versions exactly one result. Inside the workers the one
training loop (``train.fit``) sees an initialised process group and shards each global batch over
the ranks, averages gradients with ``DistributedDataParallel``, and lets only rank 0 validate,
log, show progress and write its resume file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class WorkerFailedError(RuntimeError):
    """A worker process of a distributed run failed; the message carries its error."""


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launch(settings: dict, run_id: str, function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` in every worker process of a distributed run; return rank 0's result.

    ``settings``: ``nproc_per_node`` processes on each of ``nnodes`` machines; ``backend`` (``auto``:
    NCCL on GPUs, gloo on CPUs); for several machines ``node_rank`` (0 is the machine whose run
    writes the results) and ``rdzv_endpoint`` (``host:port`` of node 0, reachable from every
    node). On a machine other than node 0 the result is None: node 0 has it.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nnodes = settings["nnodes"]
    if nnodes == 1:
        # One machine: c10d rendezvous on a free local port, as ``torchrun --standalone`` does.
        rendezvous = {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0", "run_id": f"{run_id}-{uuid.uuid4().hex[:8]}"}
    else:
        # Several machines: static rendezvous, so the machine named node 0 holds global rank 0
        # (c10d rendezvous would give rank 0 to whichever machine joined first).
        rendezvous = {
            "rdzv_backend": "static", "rdzv_endpoint": settings["rdzv_endpoint"], "run_id": run_id,
            "rdzv_configs": {"rank": settings["node_rank"]},
        }
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=settings["nproc_per_node"],
        max_restarts=0,  # a failed worker fails the node; resume files carry a rerun on
        start_method="spawn", monitor_interval=0.1, **rendezvous,
    )
    log.info("%s: starting %d process(es) on each of %d machine(s) (%s backend)", run_id, config.nproc_per_node, nnodes,
             settings["backend"])
    with tempfile.TemporaryDirectory(prefix="neumeta-workers-") as errors:
        try:
            results = elastic_launch(config, _worker)(function, settings["backend"], logging.getLogger().level, errors, args)
        except ChildFailedError as exc:
            raise WorkerFailedError(f"{run_id}: {_failures(Path(errors), exc)}") from None
    return results.get(0)


def _failures(errors: Path, exc) -> str:
    """What went wrong, first cause first. Each worker writes its own error down when it fails
    (``_worker``); the launcher keeps only one failure, often a peer that merely lost the connection
    to the worker that broke."""
    written = sorted((json.loads(path.read_text()) for path in errors.glob("rank*.json")), key=lambda e: (e["time"], e["rank"]))
    if written:
        first, *rest = written
        return f"worker rank {first['rank']} failed: {first['error']}" + "".join(f"\n  then rank {e['rank']}: {e['error']}" for e in rest)
    # Died before its function ran (an import error, a signal): the launcher's record is all there is.
    rank, failure = exc.get_first_failure()
    return f"worker rank {rank} failed with exit code {failure.exitcode}; see its output above"


def _worker(function: Callable[..., Any], backend: str, level: int, errors: str, args: tuple) -> Any:
    """One worker: join the process group, run, leave; rank 0 returns the result."""
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)  # ``cuda`` and ``auto`` then mean this worker's own GPU
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    # The launcher starts workers with a fresh interpreter: only rank 0 speaks, at the run's level.
    rank = int(os.environ["RANK"])
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, format="%(levelname)s rank " + str(rank) + ": %(message)s")
    if not cuda and "OMP_NUM_THREADS" not in os.environ:
        # Each worker would take every core by default: share them out instead.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group(backend)
    try:
        result = function(*args)
        dist.barrier()  # nobody leaves (and tears down the group) while another rank still trains
        return result if dist.get_rank() == 0 else None
    except BaseException as exc:
        # Written before the group is torn down, which is what makes the peers fail in turn.
        note = {"rank": rank, "time": time.time(), "error": f"{type(exc).__name__}: {exc}"}
        (Path(errors) / f"rank{rank}.json").write_text(json.dumps(note))
        raise
    finally:
        dist.destroy_process_group()

