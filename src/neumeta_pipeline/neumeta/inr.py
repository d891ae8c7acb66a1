"""The hypernetwork: Fourier features of a coordinate, residual MLPs that map them to weight values.

Three layouts say which tensors share an MLP. ``per_tensor`` (the paper's "block-based" INR): one
MLP per generated tensor. ``per_kind``: one MLP for all weights with the same number of values per
(out, in) coordinate (kernel elements times the input block) and one for all biases, so the layer
coordinate is what tells tensors apart and the INR's size no longer grows with the network's depth.
``per_shape``: one MLP per full tensor shape, between the two: in a ResNet each stage's
equally-shaped convolutions share one MLP and a stage's first, channel-changing convolution has
its own, so a stage need not share its MLP with stages of another channel count, and the INR still
does not grow with the number of blocks per stage. Whatever the layout, a tensor is routed to its
MLP by its clean index in the spec, never by a (noisy) coordinate.

``modulation: film`` gives every generated tensor a learned scale and shift of each hidden layer of
its MLP (FiLM), so tensors that share an MLP need not be told apart by the layer coordinate alone:
``(depth + 1) * 2 * hidden`` stored values per tensor, a small share of an MLP.

``base: frozen`` or ``trained`` makes the MLPs' values a correction: each generated tensor is a
stored full-width copy of the reference (pretrained) tensor, narrowed to the width the way the
spec narrows the tensors it does not generate (``morph.narrowing``), plus the INR's values there.
The MLPs start at zero, so every width starts as the narrowed reference network and the full width
as the reference itself; ``trained`` also trains the copy, shared by every width. Either stores
the generated tensors beside the MLPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .coords import add_noise, normalise, raw_coordinates
from .morph import MorphSpec, TensorSpec

LAYOUTS = ("per_tensor", "per_kind", "per_shape")
MODULATIONS = ("none", "film")
NOISE_SCALINGS = ("width", "fixed")
BASES = ("none", "frozen", "trained")

# Coordinates per MLP call when tensors share an MLP: small tensors (biases, the classifier, narrow
# convs) are evaluated together, which cuts the number of calls (ResNet56 per_kind: 116 tensors,
# about 27 calls), while a big tensor still goes alone. One call over every coordinate of a kind
# was slower on a 2-core CPU (ResNet56, hidden 128: activations of ~50k rows leave the cache).
CALL_ROWS = 4096


class FourierFeatures(nn.Module):
    """``[sin(2^k pi v), cos(2^k pi v)]`` for k < F. F stays modest: beyond ~2^20 float32 phases
    are noise, so high frequencies add nothing but cost."""

    def __init__(self, num_frequencies: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32))

    @property
    def out_features(self) -> int:
        return 2 * 6 * len(self.freqs)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        phase = (v[..., None] * self.freqs).flatten(-2)
        return torch.cat([phase.sin(), phase.cos()], dim=-1)


class ResidualMLP(nn.Module):
    def __init__(self, in_features: int, hidden: int, depth: int, out_features: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_features)

    def forward(
        self, x: torch.Tensor, film: torch.Tensor | None = None, sizes: list[int] | None = None
    ) -> torch.Tensor:
        """``film``: ``(segments, depth + 1, 2, hidden)``, a scale (as 1 + value) and a shift of
        the hidden state after the input layer and after each block; zeros leave it unchanged.
        One segment applies to every row; with several, ``sizes`` gives each segment's rows (the
        rows of one tensor in a call that holds several)."""
        # Pre-activation residual blocks: a block adds a signed update. Adding ReLU outputs instead
        # makes every hidden unit positive and growing with depth, so all coordinates share one
        # dominant feature direction and gradient steps mostly shift every weight together.
        h = _modulate(self.inp(x), film, 0, sizes)
        for k, block in enumerate(self.blocks, start=1):
            h = _modulate(h + block(torch.relu(h)), film, k, sizes)
        return self.out(torch.relu(h))


def _modulate(h: torch.Tensor, film: torch.Tensor | None, k: int, sizes: list[int] | None) -> torch.Tensor:
    """FiLM of hidden layer ``k``, applied segment by segment: a per-row copy of the scales would
    cost ``(depth + 1) * 2 * hidden`` floats per coordinate, and its backward pass a scatter-add."""
    if film is None:
        return h
    if sizes is None or len(sizes) == 1:
        return torch.addcmul(film[:, k, 1], h, 1.0 + film[:, k, 0])
    parts = h.split(sizes)
    return torch.cat([torch.addcmul(f[k, 1], part, 1.0 + f[k, 0]) for f, part in zip(film, parts)])


def mlp_keys(spec: MorphSpec, layout: str) -> list[tuple]:
    """One key per generated tensor, in spec order; tensors with equal keys share one MLP."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown INR layout {layout!r}; choose from {LAYOUTS}")
    if layout == "per_tensor":
        return [(t.name,) for t in spec.tensors]
    # The output width is part of the key: an MLP has one output size.
    if layout == "per_shape":
        return [(t.kind, t.kernel, t.full_shape, t.transposed) for t in spec.tensors]
    return [(t.kind, t.kernel) for t in spec.tensors]


def mlp_parameters(in_features: int, hidden: int, depth: int, out_features: int) -> int:
    """Weights and biases of one ``ResidualMLP``."""
    return (in_features + 1) * hidden + depth * (hidden + 1) * hidden + (hidden + 1) * out_features


def inr_parameter_count(config: dict, spec: MorphSpec) -> int:
    """Stored parameters of ``NeuMetaINR(spec, **config)`` by formula, without building it.

    Buffers (Fourier frequencies, the per-tensor output shift and scale) are not parameters and
    are not counted: F + 2 floats per generated tensor.
    """
    in_features = 2 * 6 * int(config["num_frequencies"])
    hidden, depth = int(config["hidden"]), int(config["depth"])
    keys = mlp_keys(spec, config.get("layout", "per_tensor"))
    outputs = {key: t.kernel for key, t in zip(keys, spec.tensors)}
    mlps = sum(mlp_parameters(in_features, hidden, depth, out) for out in outputs.values())
    shared = sum(math.prod(shape) for shape in (config.get("shared") or {}).values())
    film = len(spec.tensors) * (depth + 1) * 2 * hidden if config.get("modulation", "none") == "film" else 0
    base = sum(math.prod(t.full_shape) for t in spec.tensors) if config.get("base", "none") != "none" else 0
    return mlps + film + shared + base + len(config.get("branch_scale") or ())


class NeuMetaINR(nn.Module):
    """Maps the coordinates of every generated tensor to its values, through the MLPs of ``layout``."""

    def __init__(
        self,
        spec: MorphSpec,
        num_frequencies: int = 12,
        hidden: int = 256,
        depth: int = 5,
        reference: dict[str, torch.Tensor] | None = None,
        layout: str = "per_tensor",
        centred: bool = False,
        noise_scaling: str = "width",
        size_inputs: bool = True,
        shared: dict[str, list[int]] | None = None,
        branch_scale: list[str] | tuple[str, ...] = (),
        branch_scale_init: float = 1.0,
        modulation: str = "none",
        base: str = "none",
    ) -> None:
        super().__init__()
        self.spec = spec
        if noise_scaling not in NOISE_SCALINGS:
            raise ValueError(f"unknown noise_scaling {noise_scaling!r}; choose from {NOISE_SCALINGS}")
        if modulation not in MODULATIONS:
            raise ValueError(f"unknown modulation {modulation!r}; choose from {MODULATIONS}")
        if base not in BASES:
            raise ValueError(f"unknown base {base!r}; choose from {BASES}")
        shared = {name: [int(n) for n in shape] for name, shape in (shared or {}).items()}
        unknown = sorted(set(branch_scale) - set(spec.generated_modules))
        if unknown:
            raise ValueError(f"branch_scale: {unknown} are not generated modules ({', '.join(spec.generated_modules)})")
        self.config = {
            "num_frequencies": num_frequencies, "hidden": hidden, "depth": depth, "layout": layout,
            "centred": centred, "noise_scaling": noise_scaling, "size_inputs": size_inputs,
            "shared": shared, "branch_scale": list(branch_scale), "branch_scale_init": branch_scale_init,
            "modulation": modulation, "base": base,
        }
        self.features = FourierFeatures(num_frequencies)
        keys = mlp_keys(spec, layout)
        first = list(dict.fromkeys(keys))
        # route[i]: the MLP of tensor i, from the spec alone (the clean tensor id).
        self.route = [first.index(k) for k in keys]
        self.members = [[i for i, r in enumerate(self.route) if r == m] for m in range(len(first))]
        # For per_tensor, MLP i belongs to tensor i, so state-dict keys are those of older checkpoints.
        self.mlps = nn.ModuleList(
            ResidualMLP(self.features.out_features, hidden, depth, spec.tensors[tensors[0]].kernel)
            for tensors in self.members
        )
        # Per-tensor FiLM of its MLP's hidden layers, zero (the identity) at the start, so the
        # warm start begins from the same function as without it.
        if modulation == "film":
            self.film = nn.Parameter(torch.zeros(len(spec.tensors), depth + 1, 2, hidden))
        else:
            self.register_parameter("film", None)
        # Each MLP predicts a standardised value; a per-tensor shift and scale, taken from the
        # reference (pretrained) weights in the INR's output space, map it back. Without this, the
        # fan-in division leaves freshly initialised layers near zero and training crawls.
        shift, scale = torch.zeros(len(spec.tensors)), torch.ones(len(spec.tensors))
        if reference is not None:
            for i, t in enumerate(spec.tensors):
                target = self.scaled_target(t.name, reference[t.name].detach().float().cpu())
                shift[i], scale[i] = target.mean(), target.std().clamp_min(1e-8) if target.numel() > 1 else 1.0
        if base != "none":
            # The MLPs predict a correction of the stored copy below: centred on zero, and zero at
            # the start (their last layers zeroed), so training begins from the reference network.
            shift.zero_()
            for mlp in self.mlps:
                nn.init.zeros_(mlp.out.weight)
                nn.init.zeros_(mlp.out.bias)
        self.register_buffer("out_shift", shift)
        self.register_buffer("out_scale", scale)
        # The base: a full-width copy of every generated tensor (empty without one, so checkpoints
        # from before the option load). Frozen, it is stored but never trained.
        self.base = nn.ParameterList(
            nn.Parameter(
                reference[t.name].detach().float().cpu().clone() if reference is not None else torch.zeros(t.full_shape),
                requires_grad=base == "trained",
            )
            for t in (spec.tensors if base != "none" else ())
        )
        # Tensors of the network trained directly, shared by every width (e.g. the classifier): a
        # full-width copy, sliced like any frozen tensor. They start from the reference network.
        self.shared_names = list(shared)
        self.shared = nn.ParameterList(
            nn.Parameter(reference[name].detach().float().cpu().clone() if reference is not None else torch.zeros(shape))
            for name, shape in shared.items()
        )
        # One learnable scalar per listed module, multiplying its generated weight and bias: on the
        # last layer of a residual branch it scales the branch (SkipInit), shared by every width.
        self.branch_modules = list(branch_scale)
        if self.branch_modules:
            self.branch_scales = nn.Parameter(torch.full((len(self.branch_modules),), float(branch_scale_init)))
        else:
            self.register_parameter("branch_scales", None)

    def generate(
        self,
        widths: dict[str, int],
        noise: float = 0.0,
        samples: int = 1,
        generator: torch.Generator | None = None,
        trained: set[str] | None = None,
        only: set[str] | None = None,
        raw: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Weights of every generated tensor at ``widths``, averaged over ``samples`` noisy copies
        of each coordinate, plus the directly trained shared tensors at ``widths``. Tensors that
        share an MLP go through it together, in calls of up to ``CALL_ROWS`` coordinates per
        sample; a per_tensor INR makes one call per tensor, as before. With ``trained`` given, only
        those tensors keep an autograd graph; with ``only``, only those tensors are generated.
        ``raw``: the generated tensors alone (the MLPs' values, on the narrowed base if there is
        one; no branch scales, no shared tensors), as reconstruction compares them with the
        reference weights."""
        device = self.features.freqs.device
        grad = torch.is_grad_enabled()
        tensors = [(i, t) for i, t in enumerate(self.spec.tensors) if only is None or t.name in only]
        # A call is keyed by its MLP and by whether it keeps a graph: tensors outside ``trained``
        # are evaluated without one, in calls of their own.
        keys = {i: (self.route[i], trained is None or t.name in trained) for i, t in tensors}
        left = {key: list(keys.values()).count(key) for key in keys.values()}
        pending: dict[tuple[int, bool], list[int]] = {key: [] for key in left}
        rows: dict[tuple[int, bool], int] = dict.fromkeys(left, 0)
        inputs: dict[int, torch.Tensor] = {}
        values: dict[int, torch.Tensor] = {}

        def flush(key: tuple[int, bool]) -> None:
            chunk = pending[key]
            with torch.set_grad_enabled(grad and key[1]):
                values.update(self._evaluate(self.mlps[key[0]], chunk, [inputs.pop(i) for i in chunk], samples))
            pending[key], rows[key] = [], 0

        # Tensors are visited in spec order, so the noise stream is the same for every layout, and a
        # call is made as soon as its chunk is full or its MLP has no tensor left: coordinates wait
        # in memory only briefly (a per_tensor INR evaluates each tensor right after its noise).
        for i, tensor in tensors:
            key = keys[i]
            coords = raw_coordinates(self.spec, tensor, widths, device=device)
            if pending[key] and rows[key] + len(coords) > CALL_ROWS:
                flush(key)
            # All K noisy copies are drawn at once (one seeded stream), but evaluated one copy at a
            # time: K copies in one call would hold K times the hidden activations in memory.
            inputs[i] = add_noise(coords.repeat(samples, 1) if samples > 1 else coords, noise, generator, self._channel_noise(tensor, widths))
            pending[key].append(i)
            rows[key] += len(coords)
            left[key] -= 1
            if rows[key] >= CALL_ROWS or left[key] == 0:
                flush(key)
        weights = {t.name: self._to_layout(t, widths, values[i]) for i, t in tensors}
        if len(self.base):
            # Tensors outside ``trained`` keep no graph through their copy either.
            copies = {t.name: self.base[i] if trained is None or t.name in trained else self.base[i].detach() for i, t in tensors}
            narrowed = self.spec.narrow(copies, widths)
            weights = {name: narrowed[name] + value for name, value in weights.items()}
        return weights if raw else self.complete(widths, weights)

    def generator_parameters(self) -> list[nn.Parameter]:
        """The parameters that make the generated tensors (the MLPs and their modulation), without
        the directly trained shared tensors and branch scales: what the warm start fits."""
        return [*self.mlps.parameters(), *([self.film] if self.film is not None else [])]

    def complete(self, widths: dict[str, int], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The MLPs' ``weights`` with the branch scales applied and the shared tensors added: every
        tensor of the network at ``widths`` that differs from the reference network's (a new dict)."""
        out = dict(weights)
        for k, module in enumerate(self.branch_modules):
            for kind in ("weight", "bias"):
                name = f"{module}.{kind}"
                if name in out:
                    out[name] = out[name] * self.branch_scales[k]
        if self.shared_names:
            out.update(self.spec.narrow(dict(zip(self.shared_names, self.shared)), widths))
        return out

    def copy_block(self, source: list[str], target: list[str]) -> list[str]:
        """Start the MLPs of the ``target`` modules' tensors as copies of the ``source`` modules'
        (the block before it), tensor by tensor in order, where kind and shape agree (not at a
        stage boundary, where the channel counts change), with their modulation. Returns the
        tensors copied. Only for the per_tensor layout: the other layouts' MLPs are already shared
        between blocks."""
        if self.config["layout"] != "per_tensor":
            raise ValueError(f"copy_block needs inr.layout per_tensor ({self.config['layout']} MLPs are shared between blocks)")
        def pick(modules: list[str]) -> list[int]:
            return [i for i, t in enumerate(self.spec.tensors) if t.module in modules]

        copied = []
        for i, j in zip(pick(source), pick(target)):
            a, b = self.spec.tensors[i], self.spec.tensors[j]
            if (a.kind, a.full_shape, a.in_block) == (b.kind, b.full_shape, b.in_block):
                self.mlps[self.route[j]].load_state_dict(self.mlps[self.route[i]].state_dict())
                if self.film is not None:
                    with torch.no_grad():
                        self.film[j] = self.film[i]
                copied.append(b.name)
        return copied

    def _evaluate(
        self, mlp: ResidualMLP, tensors: list[int], noisy: list[torch.Tensor], samples: int
    ) -> dict[int, torch.Tensor]:
        """Standardised-back values of ``tensors`` (spec indices), sample-averaged, one MLP call per sample."""
        sizes = [len(x) // samples for x in noisy]
        # Normalised per tensor (each may see its own full sizes), all K copies at once: row-wise.
        inputs = [
            normalise(x, self.spec.norm, self.config["centred"], None if self.config["size_inputs"] else self._full_sizes(i))
            for i, x in zip(tensors, noisy)
        ]
        film = None if self.film is None else self.film[tensors]  # one segment per tensor
        total = None
        for k in range(samples):
            batch = [x[k * n : (k + 1) * n] for x, n in zip(inputs, sizes)]
            coords = batch[0] if len(batch) == 1 else torch.cat(batch)
            out = mlp(self.features(coords), film, sizes)
            total = out if total is None else total + out
        out = {}
        for i, part in zip(tensors, (total,) if len(tensors) == 1 else total.split(sizes)):
            out[i] = (part / samples) * self.out_scale[i] + self.out_shift[i]
        return out

    def _full_sizes(self, index: int) -> tuple[int, int]:
        """(C_in, C_out) of tensor ``index`` at full width, in the raw coordinate's terms."""
        tensor = self.spec.tensors[index]
        c_out, c_in = self.spec.channels(tensor, self.spec.full_widths)
        return c_in, c_out

    def _channel_noise(self, tensor: TensorSpec, widths: dict[str, int]) -> tuple[float, float]:
        """Factors on the (c_in, c_out) noise: 1 keeps it one cell of the current width; ``fixed``
        shrinks it to one cell of the full width, so narrow layers are not blurred more."""
        if self.config["noise_scaling"] == "width":
            return (1.0, 1.0)
        c_out, c_in = self.spec.channels(tensor, widths)
        return (c_in / tensor.full_in, c_out / tensor.full_out)

    def _to_layout(self, tensor: TensorSpec, widths: dict[str, int], values: torch.Tensor) -> torch.Tensor:
        c_out, c_in = self.spec.channels(tensor, widths)
        if tensor.kind == "bias":
            return values.view(c_out)
        # The INR predicts weight * fan-in, so a layer's output scale does not depend on its width.
        w = values.view(c_out, c_in, *tensor.full_shape[2:], tensor.in_block) / c_in
        if tensor.in_block > 1:  # flatten into Linear: each channel owns in_block columns
            return w.reshape(c_out, c_in * tensor.in_block)
        w = w.squeeze(-1)
        return w.transpose(0, 1) if tensor.transposed else w

    def scaled_target(self, tensor_name: str, weight: torch.Tensor) -> torch.Tensor:
        """A full-width tensor in the INR's output space (weights times their fan-in)."""
        spec = next(t for t in self.spec.tensors if t.name == tensor_name)
        return weight if spec.kind == "bias" else weight * spec.full_in

    def standardised_error(self, weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error of full-width ``weights`` against ``reference`` in the standardised
        output space, averaged over tensors: every tensor counts the same whatever its scale."""
        errors = []
        for i, t in enumerate(self.spec.tensors):
            if t.name not in weights:  # a subset (block-wise training): the mean is over those given
                continue
            diff = self.scaled_target(t.name, weights[t.name] - reference[t.name])
            errors.append((diff / self.out_scale[i]).pow(2).mean())
        return torch.stack(errors).mean()
