"""VAE objective and metrics: closed forms on hand cases, and the importance-sampled NLL."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neumeta_pipeline.models import build_model
from neumeta_pipeline.neumeta.generation import (
    bernoulli_log_likelihood,
    gaussian_kl,
    importance_sampled_nll,
    negative_elbo,
    reconstruction_mse,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_kl_matches_the_closed_form():
    # Unit variance, mean 1 in each of 2 dims: 2 * 1/2 = 1 nat.
    assert gaussian_kl(torch.ones(1, 2), torch.zeros(1, 2)).item() == pytest.approx(1.0)
    # Zero mean, variance 2 in 1 dim: (2 - 1 - log 2) / 2; the prior itself: 0.
    kl = gaussian_kl(torch.zeros(2, 1), torch.tensor([[math.log(2.0)], [0.0]]))
    assert kl.tolist() == pytest.approx([0.5 * (1 - math.log(2.0)), 0.0])


def test_negative_elbo_of_a_hand_case():
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    recon = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]], [[[0.9, 0.9], [0.9, 0.9]]]])
    mean = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    log_var = torch.zeros(2, 2)
    # Image 1: 4 pixels at probability 1/2 plus KL 1; image 2: 4 pixels at 0.9 plus KL 0.
    expected = ((4 * math.log(2.0) + 1.0) + (-4 * math.log(0.9))) / 2
    assert negative_elbo(recon, x, mean, log_var).item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_mse_sums_over_pixels_and_averages_over_images():
    x = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]]])
    assert reconstruction_mse(torch.zeros_like(x), x).item() == pytest.approx((5.0 + 9.0) / 2)


class ExactPosterior(nn.Module):
    """A 2x2 one-channel model whose Gaussian posterior is exact, so every importance weight is p(x).

    Pixel 0's probability is c * N(z; m, s^2 I) / N(z; 0, I) over 2 latent dims (at most 0.82 for
    these m, s, c), the other pixels' do not depend on z. Then p(x_0 = 1) = c,
    p(z | x_0 = 1) = N(m, s^2 I) = q(z|x), and p(x|z) p(z) / q(z|x) = p(x) for every z.
    """

    m, log_s2, c = 0.5, math.log(0.5), 0.25
    others = (0.3, 0.8, 0.6)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (x.shape[0], 2)
        return torch.full(shape, self.m, dtype=x.dtype), torch.full(shape, self.log_s2, dtype=x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        log_ratio = (-0.5 * ((z - self.m).square() / math.exp(self.log_s2) + self.log_s2) + 0.5 * z.square()).sum(1)
        first = self.c * log_ratio.exp()
        return torch.cat([first[:, None], torch.tensor(self.others, dtype=z.dtype).expand(z.shape[0], 3)], dim=1).view(-1, 1, 2, 2)


def test_importance_sampled_nll_is_exact_when_the_posterior_is():
    model = ExactPosterior()
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]], dtype=torch.float64).view(2, 1, 2, 2)
    log_c = math.log(model.c)  # pixel 0 is on in both images
    expected = -(log_c + math.log(0.7 * 0.8 * 0.4) + log_c + math.log(0.3 * 0.2 * 0.6)) / 2
    gen = torch.Generator().manual_seed(0)
    for k in (1, 3, 64):
        assert importance_sampled_nll(model, x, k, gen, chunk=5).item() == pytest.approx(expected, rel=1e-9)


@pytest.fixture(scope="module")
def tiny_vae() -> tuple[nn.Module, torch.Tensor]:
    """A random 8x8 VAE whose decoder depends strongly on z (so K matters), and 3 binary images,
    each repeated so one call averages over many independent estimates."""
    torch.manual_seed(0)
    model = build_model("conv_vae", in_channels=1, image_size=8, width=4, latent_dim=4).eval()
    with torch.no_grad():
        model.from_latent.weight.mul_(10)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)).round()
    return model, x


def test_one_sample_estimates_the_negative_elbo(tiny_vae):
    model, x = tiny_vae
    xs = x.repeat(2000, 1, 1, 1)
    nll = importance_sampled_nll(model, xs, 1, torch.Generator().manual_seed(2)).item()
    with torch.no_grad():
        mean, log_var = model.encode(xs)
        z = model.sample_latent(mean, log_var, torch.Generator().manual_seed(3))
        elbo = negative_elbo(model.decode(z), xs, mean, log_var).item()
    # Two Monte Carlo means of 6000 draws each; their standard errors are about 0.05 nats.
    assert nll == pytest.approx(elbo, abs=0.25)


def test_more_samples_tighten_the_estimate(tiny_vae):
    model, x = tiny_vae
    xs = x.repeat(300, 1, 1, 1)
    nll = [importance_sampled_nll(model, xs, k, torch.Generator().manual_seed(4)).item() for k in (1, 8, 64)]
    assert nll[0] > nll[1] > nll[2]
    assert nll[0] - nll[2] > 1.0  # far above the noise (about 0.15 nats at K=1)


def test_the_estimate_is_deterministic_for_a_generator_and_chunking(tiny_vae):
    model, x = tiny_vae
    a = importance_sampled_nll(model, x, 20, torch.Generator().manual_seed(5), chunk=3)
    b = importance_sampled_nll(model, x, 20, torch.Generator().manual_seed(5), chunk=20)
    c = importance_sampled_nll(model, x, 20, torch.Generator().manual_seed(6), chunk=3)
    torch.testing.assert_close(a, b)
    assert a.item() != c.item()
    with pytest.raises(ValueError, match="at least 1"):
        importance_sampled_nll(model, x, 0)


def test_bernoulli_likelihood_clamps_saturated_pixels():
    x = torch.tensor([[1.0, 0.0]])
    ll = bernoulli_log_likelihood(torch.tensor([[0.0, 1.0]]), x)
    assert torch.isfinite(ll).all() and ll.item() == pytest.approx(2 * math.log(1e-6), rel=1e-3)
