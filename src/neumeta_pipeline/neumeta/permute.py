"""Intra-model smoothness: permute each channel group to minimise the total variation of its weights.

For a group, every channel is a city whose coordinates are all the tensor slices it owns (producer
rows, BatchNorm entries, consumer columns) concatenated in float64. The L1 distance between two
cities is then exactly the change in the group's summed TV when the two channels are neighbours,
so a shortest Hamiltonian *path* through the cities is the order of least TV. The path is solved
as a TSP with one dummy city at distance 0 from all others; the tour is rotated to start at the
dummy, which is then dropped. Groups are independent: permuting one group reorders the other axes
of a tensor consistently, which leaves every other group's L1 distances unchanged.

The cities can be taken from the network as trained or from its BatchNorm-folded view (the
``objective``); the orders found on the fused view are applied to the unfused network, which is
exact because folding scales and shifts each output channel on its own.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .fuse import fuse_batchnorm
from .graph import ChannelGroup, Member, channel_groups, channel_index

__all__ = [
    "SOLVERS",
    "OBJECTIVES",
    "total_variation",
    "fused_total_variation",
    "group_total_variation",
    "apply_permutation",
    "smooth",
    "solve_path",
]

# nearest_neighbour: greedy path only. two_opt: greedy path + vectorised 2-opt / Or-opt (numpy) to a
# local optimum. local_search, simulated_annealing: python-tsp's heuristics started from the greedy
# path. python-tsp's lin_kernighan is left out: it can loop forever (python-tsp issue #67; here it
# did not return for 32 random cities).
# auto: local_search for groups of up to AUTO_LOCAL_SEARCH channels, two_opt for larger ones.
SOLVERS = ("auto", "local_search", "two_opt", "simulated_annealing", "nearest_neighbour")
# python-tsp scores every neighbour in Python, so its time grows steeply with the group: on
# ResNet20's groups (up to 64 channels) it matches two_opt in time and TV, on ResNet18's 256- and
# 512-channel groups it took 198 s against two_opt's 13 s for the same TV (docs/results.md).
AUTO_LOCAL_SEARCH = 128
# Which tensors the TV objective sees: "raw" the network as trained (BatchNorm parameters and
# statistics are cities' coordinates too), "fused" the network with BatchNorm folded, i.e. the
# tensors the INR generates (the paper's order: fold, then permute).
OBJECTIVES = ("raw", "fused")

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# --------------------------------------------------------------------------------------------
# Members and features


def _effective_members(model: nn.Module, group: ChannelGroup) -> list[Member]:
    """The group's members as they exist in ``model``.

    Lets groups computed before BatchNorm fusion work after it: members of a BatchNorm that was
    folded away (module gone or an ``nn.Identity``) are dropped, and a bias that fusion gave to a
    producer follows that producer's output rows. Any other missing tensor is an error.
    """
    state = model.state_dict(keep_vars=True)
    modules = dict(model.named_modules())
    members = []
    for m in group.members:
        if m.tensor in state:
            members.append(m)
            continue
        owner = modules.get(m.tensor.rsplit(".", 1)[0])
        if owner is None or isinstance(owner, nn.Identity):
            continue
        raise KeyError(
            f"group {group.name!r}: tensor {m.tensor!r} is not in the model; were the groups computed on another model?"
        )
    present = {(m.tensor, m.dim) for m in members}
    for m in list(members):
        prefix, leaf = m.tensor.rsplit(".", 1) if "." in m.tensor else ("", m.tensor)
        module = modules.get(prefix)
        if leaf != "weight" or getattr(module, "bias", None) is None:
            continue
        out_dim = 1 if isinstance(module, _TRANSPOSED) else 0 if isinstance(module, _PRODUCERS) else None
        bias = f"{prefix}.bias" if prefix else "bias"
        if m.dim == out_dim and (bias, 0) not in present:
            members.append(Member(bias, 0, m.start, m.block))
            present.add((bias, 0))
    return members


def _features(state: Mapping[str, torch.Tensor], members: list[Member], size: int) -> torch.Tensor:
    """(size, F) float64: row c holds every slice channel c owns, across all members."""
    cols = []
    for m in members:
        t = state[m.tensor].detach().movedim(m.dim, 0)[m.start : m.start + size * m.block]
        cols.append(t.to(torch.float64).reshape(size, -1))
    if not cols:
        return torch.zeros(size, 0, dtype=torch.float64)
    return torch.cat(cols, dim=1)


def _tv(x: torch.Tensor) -> float:
    return float((x[1:] - x[:-1]).abs().sum()) if x.shape[0] > 1 else 0.0


def group_total_variation(state_dict: Mapping[str, torch.Tensor], group: ChannelGroup) -> float:
    """Summed L1 change between consecutive channels over every member of ``group`` (float64).

    Members missing from ``state_dict`` (e.g. BatchNorm entries after fusion) are skipped.
    """
    members = [m for m in group.members if m.tensor in state_dict]
    return _tv(_features(state_dict, members, group.size))


def total_variation(model: nn.Module, groups: list[ChannelGroup]) -> float:
    """Summed TV of ``model`` over its permutable groups."""
    state = model.state_dict(keep_vars=True)
    return sum(_tv(_features(state, _effective_members(model, g), g.size)) for g in groups if g.permutable)


def apply_permutation(model: nn.Module, group: ChannelGroup, perm: torch.Tensor) -> None:
    """Reorder ``group``'s channels in place: new channel ``i`` is old channel ``perm[i]``.

    Parameters and buffers (BatchNorm running statistics) are rewritten through ``.data`` so
    parameter identity (and optimiser state keyed on it) survives.
    """
    perm = torch.as_tensor(perm, dtype=torch.long).cpu()
    if perm.shape != (group.size,) or not torch.equal(perm.sort().values, torch.arange(group.size)):
        raise ValueError(f"perm must be a permutation of range({group.size}) for group {group.name!r}")
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for m in _effective_members(model, group):
            t = state[m.tensor]
            index = torch.arange(t.shape[m.dim])
            index[m.start : m.start + group.size * m.block] = channel_index(m, perm)
            t.data.copy_(t.data.index_select(m.dim, index.to(t.device)))


# --------------------------------------------------------------------------------------------
# Shortest Hamiltonian path


def _path_cost(d: np.ndarray, order: np.ndarray) -> float:
    return float(d[order[:-1], order[1:]].sum()) if len(order) > 1 else 0.0


def _greedy_path(d: np.ndarray, start: int) -> np.ndarray:
    n = len(d)
    order = np.empty(n, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    order[0], free[start] = start, False
    for k in range(1, n):
        row = np.where(free, d[order[k - 1]], np.inf)
        order[k] = int(row.argmin())
        free[order[k]] = False
    return order


def _initial_path(d: np.ndarray, rng: np.random.Generator, tries: int = 8) -> np.ndarray:
    """Best nearest-neighbour path over a few seeded start channels."""
    n = len(d)
    starts = rng.choice(n, size=min(tries, n), replace=False)
    paths = [_greedy_path(d, int(s)) for s in starts]
    return min(paths, key=lambda p: _path_cost(d, p))


def _two_opt_or_opt(d: np.ndarray, path: np.ndarray, deadline: float) -> np.ndarray:
    """Local search on the dummy-closed tour: vectorised 2-opt and Or-opt (segments of 1-3,
    either direction) until neither improves or the deadline passes."""
    n = len(path) + 1
    dd = np.zeros((n, n))
    dd[1:, 1:] = d
    tour = np.concatenate([[0], path + 1])
    tol = 1e-12 * max(float(d.max(initial=0.0)), 1e-300)
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for i in range(1, n - 1):
            a, b = tour[i - 1], tour[i]
            cs = tour[i + 1 :]
            nxt = np.append(tour[i + 2 :], tour[0])
            delta = dd[a, cs] + dd[b, nxt] - dd[a, b] - dd[cs, nxt]
            j = int(delta.argmin())
            if delta[j] < -tol:
                tour[i : i + j + 2] = tour[i : i + j + 2][::-1].copy()
                improved = True
        succ = np.arange(1, n + 1) % n
        for length in (1, 2, 3):
            if n - length < 3:
                break
            edges = dd[tour, tour[succ]]
            i = 1
            while i + length <= n:
                s0, s1 = tour[i], tour[i + length - 1]
                prev, nxt = tour[i - 1], tour[(i + length) % n]
                gain = dd[prev, s0] + dd[s1, nxt] - dd[prev, nxt]
                after = tour[succ]
                fwd = dd[tour, s0] + dd[s1, after] - edges
                rev = dd[tour, s1] + dd[s0, after] - edges
                fwd[i - 1 : i + length] = np.inf  # edges touching the segment itself
                rev[i - 1 : i + length] = np.inf
                k = int(np.minimum(fwd, rev).argmin())
                if min(fwd[k], rev[k]) - gain < -tol:
                    piece = tour[i : i + length] if fwd[k] <= rev[k] else tour[i : i + length][::-1]
                    if k < i:
                        tour = np.concatenate([tour[: k + 1], piece, tour[k + 1 : i], tour[i + length :]])
                    else:
                        tour = np.concatenate([tour[:i], tour[i + length : k + 1], piece, tour[k + 1 :]])
                    edges = dd[tour, tour[succ]]
                    improved = True
                i += 1
    return tour[1:] - 1


def solver_for(solver: str, cities: int) -> str:
    """The solver that orders ``cities`` cities: ``solver`` itself, or for ``auto`` python-tsp's
    local search up to ``AUTO_LOCAL_SEARCH`` cities and two_opt above."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {SOLVERS}")
    if solver != "auto":
        return solver
    return "local_search" if cities <= AUTO_LOCAL_SEARCH else "two_opt"


def solve_path(
    distances: np.ndarray, solver: str = "auto", seed: int = 0, time_limit: float | None = None
) -> np.ndarray:
    """Order of cities (0..n-1) approximately minimising the open path length under ``distances``.

    Deterministic for a given seed when ``time_limit`` is None; with a limit the result depends on
    how far the solver got. Global ``random``/``numpy.random`` state is restored afterwards.
    """
    d = np.asarray(distances, dtype=np.float64)
    n = len(d)
    solver = solver_for(solver, n)
    if n <= 2:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    path = _initial_path(d, rng)
    deadline = time.perf_counter() + (time_limit if time_limit is not None else np.inf)
    if solver == "nearest_neighbour":
        return path
    if solver == "two_opt":
        return _two_opt_or_opt(d, path, deadline)

    from python_tsp.heuristics import solve_tsp_local_search, solve_tsp_simulated_annealing

    dd = np.zeros((n + 1, n + 1))
    dd[1:, 1:] = d
    x0 = [0] + [int(c) + 1 for c in path]
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        # python-tsp draws neighbours from the global `random` and `numpy.random` generators.
        random.seed(seed)
        np.random.seed(seed)
        if solver == "local_search":
            heuristic = solve_tsp_local_search
        else:
            heuristic = solve_tsp_simulated_annealing
        tour, _ = heuristic(dd, x0=x0, perturbation_scheme="two_opt", max_processing_time=time_limit)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    tour = np.asarray(tour, dtype=np.int64)
    tour = np.roll(tour, -int(np.flatnonzero(tour == 0)[0]))
    return tour[1:] - 1


# --------------------------------------------------------------------------------------------


def smooth(
    model: nn.Module,
    example_input: torch.Tensor,
    seed: int = 0,
    solver: str = "auto",
    time_limit: float | None = None,
    groups: list[ChannelGroup] | None = None,
    objective: str = "raw",
) -> tuple[nn.Module, dict]:
    """A deep copy of ``model`` with every permutable group reordered along a short TV path.

    ``objective`` says which tensors the TV is measured on: ``"raw"`` the model as given (BatchNorm
    parameters and statistics included), ``"fused"`` the model with BatchNorm folded, i.e. exactly
    the conv/linear tensors the INR generates. Either way the returned model is ``model``
    reordered, not fused: a channel order commutes with folding, so fusing it afterwards gives the
    fused view permuted by the same orders.

    ``time_limit`` bounds each group's improvement phase in seconds (None: run to a local optimum,
    deterministic). A new order is kept only if it lowers the objective's TV. Returns the model and
    a JSON-serialisable report (per group and summed over permutable groups): ``tv_before`` /
    ``tv_after`` on the raw tensors and ``tv_fused_before`` / ``tv_fused_after`` on the fused ones
    (None when the model cannot be traced for fusion; the fused objective then raises), and the
    solver that ordered each group (``auto`` picks one by the group's size).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {SOLVERS}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    tic = time.perf_counter()
    model = copy.deepcopy(model)
    if groups is None:
        groups = channel_groups(model, example_input)
    fused = _fused_view(model, required=objective == "fused")
    state = model.state_dict(keep_vars=True)
    fused_state = fused.state_dict(keep_vars=True) if fused is not None else None
    entries = []
    for g in groups:
        t0 = time.perf_counter()
        members = _effective_members(model, g)
        fused_members = _effective_members(fused, g) if fused is not None else []
        x = _features(state, members, g.size)
        xf = _features(fused_state, fused_members, g.size) if fused is not None else None
        tv_before = _tv(x)
        tv_fused_before = _tv(xf) if xf is not None else None
        entry = {"group": g.name, "channels": g.size, "tv_before": tv_before, "tv_after": tv_before,
                 "tv_fused_before": tv_fused_before, "tv_fused_after": tv_fused_before,
                 "seconds": 0.0, "permuted": False, "solver": None, "reason": g.reason}
        if g.permutable and g.size <= 2:
            entry["reason"] = "two channels or fewer: every order has the same TV"
        elif g.permutable:
            cities = xf if objective == "fused" else x
            d = torch.cdist(cities[None], cities[None], p=1)[0].numpy()
            entry["solver"] = solver_for(solver, g.size)
            order = solve_path(d, solver=entry["solver"], seed=seed, time_limit=time_limit)
            if _path_cost(d, order) < _path_cost(d, np.arange(g.size)):
                perm = torch.from_numpy(order)
                apply_permutation(model, g, perm)
                entry["permuted"] = True
                entry["tv_after"] = _tv(_features(state, members, g.size))
                if fused is not None:
                    apply_permutation(fused, g, perm)
                    entry["tv_fused_after"] = _tv(_features(fused_state, fused_members, g.size))
            else:
                entry["reason"] = "no order found with lower TV than the current one"
        entry["seconds"] = time.perf_counter() - t0
        entries.append(entry)
    permutable = [e for e, g in zip(entries, groups) if g.permutable]
    report = {
        "groups": entries,
        "objective": objective,
        "tv_before": sum(e["tv_before"] for e in permutable),
        "tv_after": sum(e["tv_after"] for e in permutable),
        "tv_fused_before": sum(e["tv_fused_before"] for e in permutable) if fused is not None else None,
        "tv_fused_after": sum(e["tv_fused_after"] for e in permutable) if fused is not None else None,
        "seconds": time.perf_counter() - tic,
        "solver": solver,
        "seed": seed,
    }
    return model, report


def fused_total_variation(model: nn.Module, groups: list[ChannelGroup]) -> float:
    """Summed TV of ``model`` with BatchNorm folded: the TV of the tensors the INR generates."""
    return total_variation(fuse_batchnorm(model), groups)


def _fused_view(model: nn.Module, required: bool) -> nn.Module | None:
    # The raw objective works on any traceable network, as before; only its fused-TV report
    # needs torch.fx, so an untraceable model still permutes and reports None there.
    try:
        return fuse_batchnorm(model)
    except RuntimeError:
        if required:
            raise
        return None
