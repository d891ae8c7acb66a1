"""Objective and metrics of the image-generation (VAE) tasks, in nats per image.

The likelihood is Bernoulli on pixels in [0, 1] (the decoder gives per-pixel probabilities) and
the prior is N(0, I); the posterior q(z|x) is a diagonal Gaussian given by its mean and
log-variance. Every function sums over the pixels (or latent dims) of an image and averages over
the images of the batch.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "bernoulli_log_likelihood",
    "gaussian_kl",
    "negative_elbo",
    "reconstruction_mse",
    "importance_sampled_nll",
    "generation_scores",
]

# Probabilities are kept this far from 0 and 1, so a saturated sigmoid costs at most
# -log(1e-6) ~ 13.8 nats per pixel instead of BCE's internal floor of 100 (and its gradients).
_EPS = 1e-6
_LOG_2PI = math.log(2 * math.pi)


class LatentVariableModel(Protocol):
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


def bernoulli_log_likelihood(probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per image, shape (batch,): Bernoulli with pixel probabilities ``probs`` (clamped
    to [1e-6, 1 - 1e-6]) evaluated at targets ``x`` in [0, 1], summed over pixels."""
    bce = F.binary_cross_entropy(probs.clamp(_EPS, 1 - _EPS), x, reduction="none")
    return -bce.flatten(1).sum(1)


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) per image, shape (batch,), summed over latent dims."""
    return 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(1)


def negative_elbo(recon: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Negative ELBO in nats per image, averaged over the batch: the Bernoulli reconstruction loss
    of ``x`` under decoder probabilities ``recon`` (binary cross-entropy summed over pixels) plus the
    analytic KL of the posterior N(mean, exp(log_var)) from the prior N(0, I).

    ``recon`` is the decoding of one posterior sample per image (``ConvVAE.sample_latent``), so this
    is the usual single-sample estimate; its gradient reaches the encoder through the sample.
    """
    return (gaussian_kl(mean, log_var) - bernoulli_log_likelihood(recon, x)).mean()


def reconstruction_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over the pixels of each image, averaged over images (the paper's MSE)."""
    return (recon - x).square().flatten(1).sum(1).mean()


@torch.no_grad()
def importance_sampled_nll(
    model: LatentVariableModel,
    x: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    chunk: int = 16,
) -> torch.Tensor:
    """-log p(x) in nats per image, averaged over the batch, estimated with ``samples`` importance
    samples from the posterior: -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x).

    ``model`` needs ``encode(x) -> (mean, log_var)`` and ``decode(z) -> pixel probabilities``; run it
    in eval mode (BatchNorm in training mode would normalise over the samples). The estimate is a
    stochastic upper bound on the true NLL that tightens as ``samples`` grows; with one sample its
    expectation is the negative ELBO. At most ``chunk`` samples per image are decoded per call, to
    bound memory. All the noise is drawn up front from ``generator`` (on the generator's device,
    then moved to the data's; the global generator when None), so the result does not depend on
    ``chunk``, and a CPU generator gives the same draws whatever device the model is on.
    """
    if samples < 1 or chunk < 1:
        raise ValueError(f"samples and chunk must be at least 1, got {samples} and {chunk}")
    mean, log_var = model.encode(x)
    device = generator.device if generator is not None else mean.device
    eps = torch.randn((samples, *mean.shape), generator=generator, device=device, dtype=mean.dtype).to(mean.device)
    std = torch.exp(0.5 * log_var)
    log_weights = []
    for noise in eps.split(chunk):
        k = noise.shape[0]
        z = mean + noise * std  # (k, batch, latent)
        probs = model.decode(z.flatten(0, 1))
        log_px = bernoulli_log_likelihood(probs, x.expand(k, *x.shape).flatten(0, 1)).view(k, -1)
        log_pz = -0.5 * (z.square() + _LOG_2PI).sum(-1)
        # q's density at z = mean + noise * std, written through the noise for accuracy.
        log_qz = -0.5 * (noise.square() + log_var + _LOG_2PI).sum(-1)
        log_weights.append(log_px + log_pz - log_qz)
    log_px_estimate = torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(samples)
    return -log_px_estimate.mean()


class _Parts:
    """``encode`` and ``decode`` of a VAE reached through one call with a ``mode`` keyword: the
    module itself, or a function that runs it with other weights (``functional_call`` reaches
    modules only through ``forward``; see ``models.vae.ConvVAE.forward``)."""

    def __init__(self, call) -> None:
        self.call = call

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.call(x, mode="encode")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.call(z, mode="decode")


@torch.no_grad()
def generation_scores(call, data, nll_samples: int, nll_images: int | None = None, batch_size: int = 500, seed: int = 0) -> dict:
    """A VAE's test metrics over a split, averaged over images: ``mse``, the reconstruction through
    the posterior mean, squared error summed over the pixels of an image; ``nll``, -log p(x) in nats
    per image by importance sampling with ``nll_samples`` posterior draws per image, over the first
    ``nll_images`` images (None: all; K decodes per image make it the costly one). The draws come
    from a generator seeded with ``seed``, so a network always gets the same figures. With one
    draw, ``nll`` is the single-sample negative-ELBO estimate.

    ``call(x, mode=...)`` runs the VAE (``ConvVAE.forward``'s modes).
    """
    generator = torch.Generator().manual_seed(seed)
    parts = _Parts(call)
    mse = nll = 0.0
    images = nll_count = 0
    for x, _ in data.batches(batch_size):
        mse += float(reconstruction_mse(call(x), x)) * len(x)
        take = len(x) if nll_images is None else max(0, min(len(x), nll_images - nll_count))
        if take:
            nll += float(importance_sampled_nll(parts, x[:take], nll_samples, generator)) * take
        images, nll_count = images + len(x), nll_count + take
    return {"mse": mse / images, "nll": nll / nll_count}
