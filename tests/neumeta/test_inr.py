import pytest
import torch

from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.coords import add_noise, normalise, raw_coordinates
from neumeta_pipeline.neumeta import inr as inr_module
from neumeta_pipeline.neumeta.fuse import fuse_batchnorm
from neumeta_pipeline.neumeta.inr import LAYOUTS, MODULATIONS, FourierFeatures, NeuMetaINR, inr_parameter_count
from neumeta_pipeline.neumeta.morph import MorphSpec, blocks, generated_modules, shared_parameters

X = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # not the global RNG: order-free


def test_fourier_features_are_sin_and_cos_of_doubling_frequencies():
    f = FourierFeatures(3)
    out = f(torch.full((1, 6), 0.25))
    assert out.shape == (1, 36)
    assert torch.allclose(out[0, :3], torch.sin(torch.pi * torch.tensor([0.25, 0.5, 1.0])), atol=1e-6)


def test_generated_shapes_at_odd_widths_match_the_network():
    model = build_model("lenet", width=6)
    spec = MorphSpec(model, X[:1])
    inr = NeuMetaINR(spec, num_frequencies=4, hidden=8, depth=1)
    widths = {"conv1": 5, "conv2": 7, "fc1": 9}
    weights = inr.generate(widths, noise=1.0, samples=3, generator=torch.Generator().manual_seed(0))
    assert weights["conv1.weight"].shape == (5, 1, 5, 5)
    assert weights["conv2.weight"].shape == (7, 5, 5, 5)
    assert weights["fc1.weight"].shape == (9, 7 * 16)
    assert weights["fc2.weight"].shape == (10, 9) and weights["fc2.bias"].shape == (10,)
    assert spec.run(model, widths, weights, X).shape == (16, 10)


def test_without_size_inputs_a_half_width_layer_samples_the_full_width_function():
    # Corner coordinates c / C: channel 2j of 8 and channel j of 4 sit at the same position, so
    # without size inputs the half-width weight is the full-width one times the fan-in ratio (the
    # INR predicts weight * fan-in). With size inputs the INR sees another channel count there.
    torch.manual_seed(0)
    spec = MorphSpec(build_model("lenet", width=4), X[:1])  # conv2: 8 -> 4 channels at half width
    blind = NeuMetaINR(spec, num_frequencies=4, hidden=16, depth=1, size_inputs=False)
    sees = NeuMetaINR(spec, num_frequencies=4, hidden=16, depth=1)
    sees.load_state_dict(blind.state_dict())
    full, half = blind.generate(spec.full_widths), blind.generate(spec.widths(0.5))
    assert half["conv2.weight"].shape == (4, 2, 5, 5)
    assert torch.allclose(half["conv2.weight"], 2 * full["conv2.weight"][::2, ::2], atol=1e-6)
    assert torch.allclose(half["conv2.bias"], full["conv2.bias"][::2], atol=1e-6)
    assert torch.equal(sees.generate(spec.full_widths)["conv2.weight"], full["conv2.weight"])
    assert not torch.allclose(sees.generate(spec.widths(0.5))["conv2.weight"], half["conv2.weight"], atol=1e-3)


# --------------------------------------------------------------------------------------------
# Layouts


def _old_generate(inr: NeuMetaINR, widths, noise=0.0, samples=1, generator=None):
    """The per_tensor ``generate`` as it was before layouts: one MLP call per tensor and sample."""
    weights = {}
    for i, (tensor, mlp) in enumerate(zip(inr.spec.tensors, inr.mlps)):
        raw = raw_coordinates(inr.spec, tensor, widths)
        n = len(raw)
        noisy = add_noise(raw.repeat(samples, 1) if samples > 1 else raw, noise, generator)
        values = sum(mlp(inr.features(normalise(noisy[k * n : (k + 1) * n], inr.spec.norm))) for k in range(samples))
        values = (values / samples) * inr.out_scale[i] + inr.out_shift[i]
        weights[tensor.name] = inr._to_layout(tensor, widths, values)
    return weights


def _lenet_spec(width: int = 6) -> tuple[torch.nn.Module, MorphSpec]:
    model = build_model("lenet", width=width).eval()
    return model, MorphSpec(model, X[:1])


def test_per_tensor_generate_is_unchanged():
    torch.manual_seed(0)
    model, spec = _lenet_spec()
    inr = NeuMetaINR(spec, num_frequencies=4, hidden=8, depth=1, reference=model.state_dict())
    widths = {"conv1": 5, "conv2": 7, "fc1": 9}
    new = inr.generate(widths, noise=1.0, samples=3, generator=torch.Generator().manual_seed(0))
    old = _old_generate(inr, widths, noise=1.0, samples=3, generator=torch.Generator().manual_seed(0))
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


def test_per_kind_routes_tensors_by_kind_and_kernel_from_the_spec():
    _, spec = _lenet_spec()
    inr = NeuMetaINR(spec, num_frequencies=4, hidden=8, depth=1, layout="per_kind")
    # conv1.w conv1.b conv2.w conv2.b fc1.w fc1.b fc2.w fc2.b: 5x5 kernels, biases, fc1 (16 columns
    # per conv2 channel), fc2 (one value).
    assert inr.route == [0, 1, 0, 1, 2, 1, 3, 1]
    assert [m.out.out_features for m in inr.mlps] == [25, 1, 16, 1]
    assert inr.config["layout"] == "per_kind" and len(inr.out_scale) == len(spec.tensors)
    with pytest.raises(ValueError, match="unknown INR layout"):
        NeuMetaINR(spec, num_frequencies=4, hidden=8, depth=1, layout="per_layer")


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("call_rows", [1, 80, 4096])
def test_per_kind_batched_generate_equals_one_call_per_tensor(monkeypatch, call_rows, modulation):
    # 1: every tensor alone; 80: chunks break between tensors; 4096: one call per kind.
    monkeypatch.setattr(inr_module, "CALL_ROWS", call_rows)
    torch.manual_seed(0)
    model, spec = _lenet_spec()
    inr = NeuMetaINR(spec, num_frequencies=4, hidden=8, depth=1, reference=model.state_dict(), layout="per_kind", modulation=modulation)
    if inr.film is not None:  # away from the identity, so a row given another tensor's FiLM would show
        torch.nn.init.normal_(inr.film, std=0.5)
    widths = {"conv1": 5, "conv2": 7, "fc1": 9}
    batched = inr.generate(widths, noise=1.0, samples=3, generator=torch.Generator().manual_seed(1))
    # The same computation tensor by tensor, each through the MLP its clean index routes it to.
    generator = torch.Generator().manual_seed(1)
    for i, tensor in enumerate(spec.tensors):
        raw = raw_coordinates(spec, tensor, widths)
        n = len(raw)
        noisy = add_noise(raw.repeat(3, 1), 1.0, generator)
        mlp = inr.mlps[inr.route[i]]
        film = None if inr.film is None else inr.film[i : i + 1]
        values = sum(mlp(inr.features(normalise(noisy[k * n : (k + 1) * n], spec.norm)), film) for k in range(3))
        values = (values / 3) * inr.out_scale[i] + inr.out_shift[i]
        torch.testing.assert_close(batched[tensor.name], inr._to_layout(tensor, widths, values), rtol=1e-5, atol=1e-6)
    assert spec.run(model, widths, batched, X).shape == (16, 10)


def test_per_kind_keeps_a_graph_only_for_trained_tensors():
    _, spec = _lenet_spec()
    inr = NeuMetaINR(spec, num_frequencies=4, hidden=8, depth=1, layout="per_kind")
    weights = inr.generate(spec.widths(0.25), trained={"conv2.weight", "fc2.bias"})
    assert {k for k, v in weights.items() if v.requires_grad} == {"conv2.weight", "fc2.bias"}
    with torch.no_grad():
        assert not any(v.requires_grad for v in inr.generate(spec.widths(0.0)).values())


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["lenet", "resnet20"])
def test_parameter_count_formula_matches_the_module(layout, name, modulation):
    if name == "lenet":
        model, spec = _lenet_spec(width=8)
    else:
        model = fuse_batchnorm(build_model("resnet20")).eval()
        spec = MorphSpec(model, torch.zeros(1, 3, 32, 32))
    for hidden, depth, freqs in ((16, 0, 3), (32, 2, 5)):
        config = {"num_frequencies": freqs, "hidden": hidden, "depth": depth, "layout": layout, "modulation": modulation}
        inr = NeuMetaINR(spec, **config)
        assert inr_parameter_count(config, spec) == sum(p.numel() for p in inr.parameters())
        assert inr_parameter_count(inr.config, spec) == sum(p.numel() for p in inr.parameters())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shared_tensors_and_branch_scales_are_counted_sliced_and_scaled(layout):
    model = fuse_batchnorm(build_model("resnet20")).eval()
    spec = MorphSpec(model, torch.zeros(1, 3, 32, 32), ["layer3.*.conv1", "layer3.*.conv2"], ["layer3.*.conv1"])
    shared = shared_parameters(model, spec, ["fc", "conv1"])
    assert shared == {"conv1.weight": [16, 3, 3, 3], "conv1.bias": [16], "fc.weight": [10, 64], "fc.bias": [10]}
    scaled = generated_modules(spec, "layer3.*.conv2", "branch_scale")
    config = {"num_frequencies": 3, "hidden": 8, "depth": 1, "layout": layout, "shared": shared, "branch_scale": scaled,
              "branch_scale_init": 0.5}
    inr = NeuMetaINR(spec, **config, reference=model.state_dict())
    assert inr_parameter_count(config, spec) == sum(p.numel() for p in inr.parameters())
    assert inr_parameter_count(config, spec) == inr_parameter_count({**config, "shared": {}, "branch_scale": []}, spec) + (432 + 16) + (640 + 10) + 3
    widths = spec.widths(0.5)
    raw, weights = inr.generate(widths, raw=True), inr.generate(widths)
    assert set(weights) == set(raw) | set(shared)
    torch.testing.assert_close(weights["layer3.1.conv2.bias"], 0.5 * raw["layer3.1.conv2.bias"])
    torch.testing.assert_close(weights["layer3.1.conv1.weight"], raw["layer3.1.conv1.weight"])
    torch.testing.assert_close(weights["fc.weight"], model.fc.weight)  # starts from the reference network
    assert spec.run(model, widths, weights, torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="shared: 'layer3.0.conv1' matches none"):
        shared_parameters(model, spec, ["layer3.0.conv1"])  # generated, so it cannot be shared


@pytest.mark.parametrize("narrowing", ["first", "cells"])
@pytest.mark.parametrize("base", ["frozen", "trained"])
def test_a_base_starts_every_width_as_the_narrowed_reference_and_is_stored(base, narrowing):
    model = build_model("resnet20").eval()  # BatchNorm kept, so the base is what the INR generates
    spec = MorphSpec(model, torch.zeros(1, 3, 32, 32), ["layer2.*.conv1", "layer2.*.conv2"], ["layer2.*.conv1"], narrowing=narrowing)
    config = {"num_frequencies": 3, "hidden": 8, "depth": 1, "base": base}
    inr = NeuMetaINR(spec, **config, reference=model.state_dict())
    generated = sum(t.numel() for name, t in model.state_dict().items() if name in {t.name for t in spec.tensors})
    assert inr_parameter_count(config, spec) == sum(p.numel() for p in inr.parameters())
    assert inr_parameter_count(config, spec) == inr_parameter_count({**config, "base": "none"}, spec) + generated
    reference = {t.name: model.state_dict()[t.name] for t in spec.tensors}
    for gamma in (0.0, 0.5):
        widths = spec.widths(gamma)
        weights = inr.generate(widths, noise=1.0, samples=2, generator=torch.Generator().manual_seed(0))
        expected = spec.narrow(reference, widths)
        assert weights.keys() == expected.keys()
        for name, value in weights.items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    # A step moves the MLPs away from zero; only a trained base changes with them.
    optimizer = torch.optim.SGD([p for p in inr.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # the first step moves only the zeroed last layers
        optimizer.zero_grad()
        sum(w.square().sum() for w in inr.generate(spec.widths(0.5)).values()).backward()
        optimizer.step()
    moved = [not torch.equal(copy, reference[t.name]) for copy, t in zip(inr.base, spec.tensors)]
    assert all(moved) if base == "trained" else not any(moved)
    full = inr.generate(spec.widths(0.0), raw=True)
    assert any(not torch.equal(full[name], reference[name]) for name in full)
    # Rebuilt from its config and state (as a checkpoint is sampled), the INR generates the same tensors.
    rebuilt = NeuMetaINR(spec, **inr.config)
    rebuilt.load_state_dict(inr.state_dict())
    for name, value in rebuilt.generate(spec.widths(0.5)).items():
        torch.testing.assert_close(value, inr.generate(spec.widths(0.5))[name])
    with pytest.raises(ValueError, match="unknown base 'pretrained'"):
        NeuMetaINR(spec, num_frequencies=3, hidden=8, depth=1, base="pretrained")


def test_copy_block_copies_mlps_within_a_stage_only():
    model = fuse_batchnorm(build_model("resnet20")).eval()
    spec = MorphSpec(model, torch.zeros(1, 3, 32, 32), ["layer1.*", "layer2.0.*"], ["layer1.*.conv1", "layer2.0.conv1"])
    assert blocks(spec)[:2] == [["layer1.0.conv1", "layer1.0.conv2"], ["layer1.1.conv1", "layer1.1.conv2"]]
    torch.manual_seed(0)
    inr = NeuMetaINR(spec, num_frequencies=3, hidden=8, depth=1, modulation="film")
    torch.nn.init.normal_(inr.film)
    index = {t.name: i for i, t in enumerate(spec.tensors)}

    def mlp(name):
        return inr.mlps[inr.route[index[name]]].state_dict()

    copied = inr.copy_block(["layer1.0.conv1", "layer1.0.conv2"], ["layer1.1.conv1", "layer1.1.conv2"])
    assert copied == ["layer1.1.conv1.weight", "layer1.1.conv1.bias", "layer1.1.conv2.weight", "layer1.1.conv2.bias"]
    for name in copied:
        source = name.replace("layer1.1", "layer1.0")
        assert all(torch.equal(a, b) for a, b in zip(mlp(name).values(), mlp(source).values()))
        assert torch.equal(inr.film[index[name]], inr.film[index[source]])
    # layer2.0 halves the resolution and doubles the channels: nothing has the predecessor's shape
    assert inr.copy_block(["layer1.2.conv1", "layer1.2.conv2"], ["layer2.0.conv1", "layer2.0.conv2"]) == []
    with pytest.raises(ValueError, match="per_tensor"):
        NeuMetaINR(spec, num_frequencies=3, hidden=8, depth=1, layout="per_kind").copy_block(["layer1.0.conv1"], ["layer1.1.conv1"])


def test_per_kind_and_per_shape_do_not_grow_with_depth():
    counts = {}
    for depth in (20, 56):
        model = fuse_batchnorm(build_model(f"resnet{depth}")).eval()
        spec = MorphSpec(model, torch.zeros(1, 3, 32, 32))
        config = {"num_frequencies": 16, "hidden": 128, "depth": 3}
        counts[depth] = {layout: inr_parameter_count({**config, "layout": layout}, spec) for layout in LAYOUTS}
    assert counts[20]["per_kind"] == counts[56]["per_kind"]
    assert counts[20]["per_shape"] == counts[56]["per_shape"]
    assert counts[56]["per_tensor"] > 2 * counts[20]["per_tensor"]
    assert counts[20]["per_kind"] < counts[20]["per_shape"] < counts[20]["per_tensor"]


def test_per_shape_gives_each_stage_and_each_channel_change_its_own_mlp():
    model = fuse_batchnorm(build_model("resnet20")).eval()
    inr = NeuMetaINR(MorphSpec(model, torch.zeros(1, 3, 32, 32)), num_frequencies=2, hidden=4, depth=1, layout="per_shape")
    mlp = {t.name: inr.route[i] for i, t in enumerate(inr.spec.tensors)}
    stage3 = {mlp[f"layer3.{b}.conv{c}.weight"] for b in range(3) for c in (1, 2)} - {mlp["layer3.0.conv1.weight"]}
    assert len(stage3) == 1  # every 64 -> 64 convolution of the stage shares one MLP
    assert len({mlp["layer3.0.conv1.weight"], mlp["layer3.1.conv1.weight"], mlp["layer2.1.conv1.weight"]}) == 3
    assert mlp["layer1.0.conv1.weight"] == mlp["layer1.2.conv2.weight"]
    # Biases of one channel count share one MLP, whichever stage they sit in.
    assert mlp["layer2.0.conv1.bias"] == mlp["layer2.2.conv2.bias"] != mlp["layer3.0.conv1.bias"]


@pytest.mark.parametrize("layout", ["per_tensor", "per_kind"])
def test_a_tiny_inr_learns_to_reproduce_a_tiny_network(layout):
    torch.manual_seed(0)
    model = build_model("lenet", width=2).eval()
    spec = MorphSpec(model, X[:1])
    inr = NeuMetaINR(spec, num_frequencies=6, hidden=64, depth=2, reference=model.state_dict(), layout=layout)
    full = spec.widths(0.0)
    state = model.state_dict()
    optimizer = torch.optim.Adam(inr.parameters(), lr=3e-3)
    for _ in range(600):
        loss = inr.standardised_error(inr.generate(full), state)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weights = inr.generate(full)
        errors = {n: float(((weights[n] - state[n]).pow(2).mean() / state[n].pow(2).mean())) for n in weights}
        assert max(errors.values()) < 1e-2, errors
        expected, got = model(X), spec.run(model, full, weights, X)
    assert (expected.argmax(1) == got.argmax(1)).float().mean() >= 0.9


def test_film_starts_as_the_identity_and_tells_tensors_of_one_mlp_apart():
    torch.manual_seed(0)
    model = fuse_batchnorm(build_model("resnet20")).eval()
    spec = MorphSpec(model, torch.zeros(1, 3, 32, 32), ["layer3.*.conv2"], [])
    config = {"num_frequencies": 3, "hidden": 8, "depth": 2, "layout": "per_shape", "reference": model.state_dict()}
    plain, film = NeuMetaINR(spec, **config), NeuMetaINR(spec, **config, modulation="film")
    film.load_state_dict({**plain.state_dict(), "film": film.film.detach()})
    full = spec.widths(0.0)
    before = film.generate(full)
    assert all(torch.equal(before[k], plain.generate(full)[k]) for k in before)
    index = {t.name: i for i, t in enumerate(spec.tensors)}
    a, b = index["layer3.1.conv2.weight"], index["layer3.2.conv2.weight"]
    assert film.route[a] == film.route[b]  # the two 64 -> 64 convolutions share one MLP
    with torch.no_grad():
        film.film[b].normal_()
    after = film.generate(full)
    assert {k for k in after if not torch.equal(after[k], before[k])} == {"layer3.2.conv2.weight"}
    assert {name: p.shape for name, p in film.named_parameters() if p is film.film} == {"film": (len(spec.tensors), 3, 2, 8)}
    assert film.generator_parameters()[-1] is film.film
