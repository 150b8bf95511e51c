"""The variational bound of Ho et al. 2020 in bits per dimension.

The bound (paper eq. 5) on -log p_theta(x_0) of discrete data x_0 (uint8
values scaled to [-1, 1]):

  L = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
  L_T     = KL(q(x_T | x_0) || N(0, I))                      (the prior term)
  L_{t-1} = E_q KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
  L_0     = E_q -log p_theta(x_0 | x_1)                       (the decoder, eq. 13)

with t 1-based as in the paper. In code (0-based t, see `ddpm.schedules`)
the terms are indexed so that `terms[t]` is the paper's L_t: term t = 0 is
the decoder L_0, evaluated at x_1 (code index 0), and term t >= 1 is the KL
at code index t (the paper's step t + 1 -> t, i.e. L_t). The prior L_T is
returned on its own. Each term is one Monte-Carlo draw of x_t ~ q(x_t | x_0)
(the noise of term t is `normal(fold_in(key, t), x_0.shape)`), as in the
authors' `calc_bpd_loop`; the sum is an unbiased estimate of the bound.

The reverse process p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)
is the one the samplers use: mu_theta is the posterior mean of
q(x_{t-1} | x_t, x_0) at x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) /
sqrt(alpha_bar_t) (x0_hat clipped to [-1, 1] with clip_x0; without clipping
this is Algorithm 2's mean), and sigma_t^2 = beta_t ("beta", the code's
fixedlarge) or beta_tilde_t ("beta_tilde", fixedsmall).

The decoder (paper eq. 13) is the Gaussian N(x0_hat, sigma_1^2) integrated
over each of the 256 bins [x - 1/255, x + 1/255], the first and last bins
extended to -inf and +inf. Its variance sigma_1^2 is beta_tilde at code
index 1 for both variance choices, as in the authors' diffusion_utils_2.py:
beta_tilde at code index 0 is 0, and for fixedlarge the authors set it "like
so to get a better decoder log likelihood". The normal CDF is either the
authors' tanh approximation `approx_standard_normal_cdf` (cdf="approx", the
default: their computation, for comparable numbers; in float32 its bins with
P < 1e-4 come out as small but inexact, floored at 1e-12) or the exact one
from log_ndtr (cdf="exact", accurate deep into both tails). Either gives a distribution
over the 256 bins (the CDF is monotone and the bins telescope), so either is
a valid bound. On the Gaussian oracle of tests/test_likelihood.py the tanh
decoder costs 0.004 bits/dim more than the exact one (L_0 2.5156 vs 2.5115).

All terms are in nats per image, then divided by D ln 2 (D = H W C): bits per
dimension. `variational_bound` runs every term for a batch in one
`lax.scan` over t (one eps_fn call per t).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import special
import numpy as np

from ddpm import objectives
from ddpm import schedules
from ddpm.samplers import EpsFn
from ddpm.schedules import Schedule

VARIANCES = ("beta", "beta_tilde")
CDFS = ("approx", "exact")
BIN_HALF_WIDTH = 1.0 / 255.0   # data in [-1, 1] on 256 levels: bins 2/255 wide
_LOG_FLOOR = 1e-12             # the authors' floor of a bin's probability


class Bound(NamedTuple):
  """The variational bound of a batch, in bits per dimension.

  Attributes:
    total_bpd: [B] L_T + sum_t terms[t]: the bound on -log2 p(x_0) / D.
    terms_bpd: [B, T] terms_bpd[:, 0] = L_0 (decoder), terms_bpd[:, t] = the
      paper's L_t (code index t, t >= 1).
    prior_bpd: [B] L_T.
    x0_mse: [B, T] mean squared error (per dimension, in [-1, 1] units) of
      the x0_hat predicted from the x_t of term t (clipped with clip_x0).
  """
  total_bpd: jax.Array
  terms_bpd: jax.Array
  prior_bpd: jax.Array
  x0_mse: jax.Array


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

  The variance part exp(d) - 1 - d (d = logvar1 - logvar2) is written with
  expm1: in float32, -1 + exp(d) alone has an error of ~1e-7 nats per
  element, as large as the whole KL at the last few hundred steps.
  """
  d = logvar1 - logvar2
  return 0.5 * (jnp.expm1(d) - d + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  """The authors' approximation 0.5 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array,
                                        *, cdf: str = "approx") -> jax.Array:
  """log P(x) of N(mean, exp(log_scale)^2) discretised to 256 bins of [-1, 1] (eq. 13).

  The bin of x is [x - 1/255, x + 1/255], except that the lowest bin
  (x < -0.999) starts at -inf and the highest (x > 0.999) ends at +inf.

  Args:
    x: data on the 256 levels k / 127.5 - 1 (any shape).
    mean: the Gaussian's mean (broadcasts with x).
    log_scale: log of its standard deviation (broadcasts with x).
    cdf: "approx" (the authors' tanh CDF, a probability floored at 1e-12 as
      theirs) or "exact" (log_ndtr, computed on the side of the bin nearer
      the mean, so tail bins keep their relative accuracy).

  Returns:
    log-probabilities in nats, the broadcast shape of the inputs.
  """
  if cdf not in CDFS:
    raise ValueError(f"unknown cdf {cdf!r}; allowed: {CDFS}")
  inv_scale = jnp.exp(-log_scale)
  lo = (x - mean - BIN_HALF_WIDTH) * inv_scale   # the bin's edges, standardised
  hi = (x - mean + BIN_HALF_WIDTH) * inv_scale
  if cdf == "approx":
    cdf_hi, cdf_lo = approx_standard_normal_cdf(hi), approx_standard_normal_cdf(lo)
    log_first = jnp.log(jnp.maximum(cdf_hi, _LOG_FLOOR))
    log_last = jnp.log(jnp.maximum(1.0 - cdf_lo, _LOG_FLOOR))
    log_mid = jnp.log(jnp.maximum(cdf_hi - cdf_lo, _LOG_FLOOR))
  else:
    log_first = special.log_ndtr(hi)
    log_last = special.log_ndtr(-lo)
    # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): use the side where both CDFs
    # are <= 1/2, then log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - Phi(a) / Phi(b)).
    upper = lo > 0
    a = jnp.where(upper, -hi, lo)
    b = jnp.where(upper, -lo, hi)
    log_a, log_b = special.log_ndtr(a), special.log_ndtr(b)
    log_mid = log_b + jnp.log(-jnp.expm1(jnp.minimum(log_a - log_b, 0.0)))
  return jnp.where(x < -0.999, log_first, jnp.where(x > 0.999, log_last, log_mid))


def prior_bpd(schedule: Schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension.

  Args:
    schedule: the noise schedule.
    x0: [B, ...] data.

  Returns:
    [B].
  """
  # log(1 - alpha_bar_T) from the float64-derived table: 1 - alpha_bar in
  # float32 would lose the digits of a short schedule's small 1 - alpha_bar.
  log_var = 2.0 * jnp.log(jnp.asarray(schedule.sqrt_one_minus_alpha_bars)[-1])
  mean = jnp.asarray(schedule.sqrt_alpha_bars)[-1] * x0
  kl = normal_kl(mean, log_var, 0.0, 0.0)
  return jnp.mean(kl.reshape(x0.shape[0], -1), axis=1) / math.log(2.0)


def variational_bound(eps_fn: EpsFn, schedule: Schedule, x0: jax.Array, key: jax.Array, *,
                      variance: str = "beta", clip_x0: bool = False,
                      cdf: str = "approx") -> Bound:
  """All T + 1 terms of the bound for a batch, in one `lax.scan` over t.

  Args:
    eps_fn: (x_t [B, ...], t [B] int32) -> eps_hat, as for the samplers.
    schedule: the noise schedule.
    x0: [B, H, W, C] data on the 256 levels of [-1, 1] (uint8 / 127.5 - 1).
    key: PRNG key; term t uses the noise normal(fold_in(key, t), x0.shape).
    variance: the reverse variance sigma_t^2: "beta" (fixedlarge) or
      "beta_tilde" (fixedsmall).
    clip_x0: clip x0_hat to [-1, 1] in the model mean (as the sampler's
      clip_x0; the authors' calc_bpd_loop clips by default).
    cdf: the decoder's normal CDF, "approx" or "exact" (module docstring).

  Returns:
    A `Bound`.
  """
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; allowed: {VARIANCES}")
  if cdf not in CDFS:
    raise ValueError(f"unknown cdf {cdf!r}; allowed: {CDFS}")
  x0 = jnp.asarray(x0, jnp.float32)
  s = schedules.to_device(schedule)
  b = x0.shape[0]
  bpd = 1.0 / math.log(2.0)
  # log sigma_t^2 of p_theta. Index 0 (the decoder) is log beta_tilde at
  # code index 1 for both choices (the module docstring says why); for
  # "beta_tilde" the very table of q, so that the variance part of the KL is 0.
  log_var_model = s.posterior_log_variance_clipped
  if variance == "beta":
    log_var_model = jnp.log(s.betas).at[0].set(log_var_model[0])

  def term(_, t):
    eps = jax.random.normal(jax.random.fold_in(key, t), x0.shape, jnp.float32)
    t_b = jnp.full((b,), t, jnp.int32)
    x_t = schedules.q_sample(s, x0, t_b, eps)
    eps_hat = eps_fn(x_t, t_b).astype(jnp.float32)
    x0_hat = objectives.eps_to_x0(s, x_t, t_b, eps_hat)
    if clip_x0:
      x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
      err = x0 - x0_hat
    else:
      # x0 - x0_hat = sqrt(1 - a) / sqrt(a) (eps_hat - eps) exactly; this form
      # avoids the cancellation of x0 - x0_hat in float32 at small t, where
      # the KL divides the squared error by a variance ~ 1e-4.
      err = s.sqrt_one_minus_alpha_bars[t] / s.sqrt_alpha_bars[t] * (eps_hat - eps)
    # Posterior mean minus model mean: coef1 (x0 - x0_hat), the x_t parts cancel.
    mean_diff = s.posterior_mean_coef1[t] * err
    kl = normal_kl(mean_diff, s.posterior_log_variance_clipped[t], 0.0, log_var_model[t])
    decoder_nll = -discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * log_var_model[0],
                                                       cdf=cdf)
    nats = jnp.where(t == 0, decoder_nll, kl)
    return None, (jnp.mean(nats.reshape(b, -1), axis=1) * bpd,
                  jnp.mean(jnp.square(err).reshape(b, -1), axis=1))

  _, (terms, mse) = jax.lax.scan(term, None, jnp.arange(schedule.num_timesteps, dtype=jnp.int32))
  prior = prior_bpd(schedule, x0)
  terms, mse = terms.T, mse.T
  return Bound(total_bpd=prior + jnp.sum(terms, axis=1), terms_bpd=terms, prior_bpd=prior,
               x0_mse=mse)


def rate_distortion(bound: Bound) -> tuple[jax.Array, jax.Array]:
  """The paper's Fig. 5: bits received and the error of x0_hat along the reverse chain.

  A receiver that has x_T, ..., x_t (Algorithm 3, the paper's 1-based t) has
  been sent L_T + L_{T-1} + ... + L_t bits per dimension and predicts x_0 by
  x0_hat(x_t). For code index t (the paper's t + 1):
    rate[t] = L_T + sum_{s > t} terms[s],
    distortion[t] = sqrt(mean (x_0 - x0_hat(x_t))^2) on the [0, 255] scale.
  After the last step (L_0 sent too) the rate is total_bpd and the
  distortion 0 (x_0 is decoded losslessly).

  Args:
    bound: a `Bound` of N images.

  Returns:
    (rate [T] bits/dim, distortion [T] RMSE in [0, 255] units), averaged
    over the images; index T - 1 is the first step (x_T received).
  """
  terms = jnp.mean(bound.terms_bpd, axis=0)
  after = jnp.cumsum(terms[::-1])[::-1] - terms   # sum over s > t
  rate = jnp.mean(bound.prior_bpd) + after
  distortion = jnp.sqrt(jnp.mean(bound.x0_mse, axis=0)) * 127.5
  return rate, distortion


def variational_bound_batches(eps_fn_of: Callable, schedule: Schedule, params,
                              images: np.ndarray, labels: np.ndarray | None, key: jax.Array,
                              batch_size: int, *, variance: str,
                              clip_x0: bool) -> dict[str, np.ndarray]:
  """`variational_bound` of every image, in batches of one compiled shape.

  The last batch is padded with copies of its last image (dropped from the
  result); batch i starting at image s uses the key fold_in(key, s).

  Args:
    eps_fn_of: (params, labels [B] or None) -> eps_fn, e.g. `DDPMTask.eps_fn`.
    schedule: the schedule the network was trained with.
    params: the network's parameters.
    images: [N, H, W, C] in [-1, 1].
    labels: [N] int labels (conditional models) or None.
    key: PRNG key of the bound's noise.
    batch_size: images per compiled call.
    variance, clip_x0: the reverse process's, as in `variational_bound`.

  Returns:
    {"total_bpd" [N], "terms_bpd" [N, T], "prior_bpd" [N], "x0_mse" [N, T]} on the host.
  """
  n = len(images)
  bs = max(1, min(int(batch_size), n))

  @jax.jit
  def bound(params, x, label, k):
    return variational_bound(eps_fn_of(params, label), schedule, x, k, variance=variance,
                              clip_x0=clip_x0)._asdict()

  parts = []
  for start in range(0, n, bs):
    x = images[start:start + bs]
    valid = len(x)
    lab = None if labels is None else np.resize(labels[start:start + bs], bs)
    if valid < bs:
      x = np.concatenate([x, np.repeat(x[-1:], bs - valid, axis=0)])
    out = jax.device_get(bound(params, jnp.asarray(x),
                               None if lab is None else jnp.asarray(lab),
                               jax.random.fold_in(key, start)))
    parts.append({k: np.asarray(v)[:valid] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
