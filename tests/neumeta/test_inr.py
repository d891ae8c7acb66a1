import torch
import torch.nn.functional as F

from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.inr import FourierFeatures, NeuMetaINR
from neumeta_pipeline.neumeta.morph import MorphSpec

X = torch.randn(16, 1, 28, 28)


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


def test_a_tiny_inr_learns_to_reproduce_a_tiny_network():
    torch.manual_seed(0)
    model = build_model("lenet", width=2).eval()
    spec = MorphSpec(model, X[:1])
    inr = NeuMetaINR(spec, num_frequencies=6, hidden=64, depth=2)
    full = spec.widths(0.0)
    state = model.state_dict()
    optimizer = torch.optim.Adam(inr.parameters(), lr=3e-3)
    for _ in range(600):
        weights = inr.generate(full)
        loss = sum(F.mse_loss(weights[n], state[n]) / state[n].pow(2).mean() for n in weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weights = inr.generate(full)
        errors = {n: float(((weights[n] - state[n]).pow(2).mean() / state[n].pow(2).mean())) for n in weights}
        assert max(errors.values()) < 1e-2, errors
        expected, got = model(X), spec.run(model, full, weights, X)
    assert (expected.argmax(1) == got.argmax(1)).float().mean() >= 0.9
