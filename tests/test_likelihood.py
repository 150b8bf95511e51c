"""The variational bound in bits/dim: float64 NumPy reference, the decoder, the Gaussian oracle."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from ddpm import likelihood
from ddpm import schedules

LEVELS = np.arange(256) / 127.5 - 1.0                       # the 256 data values
EDGES = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 127.5 - 1.0, [np.inf]])


def _approx_cdf(u):
  return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u ** 3)))


def _bin_log_prob(k, mean, scale, cdf):
  """float64 log P(bin k) of N(mean, scale^2), bins [EDGES[k], EDGES[k + 1]]."""
  lo, hi = (EDGES[k] - mean) / scale, (EDGES[k + 1] - mean) / scale
  if cdf == "approx":
    p = (_approx_cdf(hi) if np.isfinite(hi) else 1.0) - (_approx_cdf(lo) if np.isfinite(lo)
                                                         else 0.0)
    return np.log(np.maximum(p, 1e-12))
  if lo > 0:                          # both edges above the mean: the upper tail
    lo, hi = -hi, -lo
  with np.errstate(divide="ignore"):   # -inf beyond float64's range, filtered by the caller
    return np.log(special.ndtr(hi) - special.ndtr(lo))


# ----------------------------------------------------------------------------
# The decoder.


@pytest.mark.parametrize("cdf", likelihood.CDFS)
def test_decoder_probabilities_sum_to_one(cdf):
  means = np.array([-1.3, -1.0, -0.41, 0.0, 0.5, 0.99, 1.2]).reshape(-1, 1, 1)
  scales = np.array([1e-3, 7.3e-3, 0.05, 0.4, 1.0, 4.0]).reshape(1, -1, 1)
  log_p = likelihood.discretized_gaussian_log_likelihood(
      jnp.asarray(LEVELS.reshape(1, 1, -1), jnp.float32), jnp.asarray(means, jnp.float32),
      jnp.asarray(np.log(scales), jnp.float32), cdf=cdf)     # [means, scales, 256 bins]
  assert log_p.shape == (7, 6, 256) and np.all(np.isfinite(log_p))
  total = np.exp(np.asarray(log_p, np.float64)).sum(-1)
  np.testing.assert_allclose(total, np.ones((7, 6)), atol=2e-5)


@pytest.mark.parametrize("cdf", likelihood.CDFS)
def test_decoder_matches_float64_bins(cdf):
  means = np.array([-1.0, -0.2, 0.0, 0.31, 1.0])
  scales = np.array([0.01, 0.05, 0.3])
  m, s, k = np.meshgrid(means, scales, np.arange(0, 256, 5), indexing="ij")
  log_p = likelihood.discretized_gaussian_log_likelihood(
      jnp.asarray(LEVELS[k], jnp.float32), jnp.asarray(m, jnp.float32),
      jnp.asarray(np.log(s), jnp.float32), cdf=cdf)
  expected = np.vectorize(lambda kk, mm, ss: _bin_log_prob(kk, mm, ss, cdf))(k, m, s)
  log_p = np.asarray(log_p)
  if cdf == "approx":
    # 1 - cdf in float32 (the authors' computation) keeps ~7 digits: bins with
    # P > 1e-4 agree, the tail ones only stay below it (down to the 1e-12 floor).
    tail = expected < math.log(1e-4)
    np.testing.assert_allclose(log_p[~tail], expected[~tail], rtol=1e-4, atol=2e-4)
    assert np.all(log_p[tail] < math.log(2e-4)) and np.all(log_p >= math.log(1e-12) - 1e-4)
  else:                 # the exact CDF keeps relative accuracy deep in the tails
    finite = expected > -700
    np.testing.assert_allclose(log_p[finite], expected[finite], rtol=2e-5, atol=2e-4)


# ----------------------------------------------------------------------------
# Against a float64 NumPy transcription of the paper's terms on a tiny problem.


def _tiny_eps(x_t, t, xp):
  """An analytic, nonlinear stand-in for the network; t is the 0-based timestep [B]."""
  t = xp.reshape(t, (-1,) + (1,) * (x_t.ndim - 1))
  return 0.6 * xp.tanh(1.5 * x_t) + 0.04 * (t + 1) * x_t - 0.1


def _reference_bound(x0, betas, noises, variance, clip_x0, cdf):
  """Ho et al.'s L_T, L_{t-1} and L_0 in float64, written from the paper's formulas.

  noises[t] is the eps of x_t at 0-based t. The model mean is Algorithm 2's
  (1 / sqrt(alpha_t)) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat), or with
  clipping the posterior mean at the clipped x0_hat.
  """
  num_t = len(betas)
  alphas = 1.0 - betas
  ab = np.cumprod(alphas)
  ab_prev = np.append(1.0, ab[:-1])
  beta_tilde = betas * (1 - ab_prev) / (1 - ab)
  b, d = x0.shape[0], x0[0].size
  terms = np.zeros((b, num_t))
  mse = np.zeros((b, num_t))
  for t in range(num_t):
    x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * noises[t]
    eps_hat = _tiny_eps(x_t, np.full(b, t, np.float64), np)
    x0_hat = (x_t - np.sqrt(1 - ab[t]) * eps_hat) / np.sqrt(ab[t])
    if clip_x0:
      x0_hat = np.clip(x0_hat, -1, 1)
    coef_x0 = np.sqrt(ab_prev[t]) * betas[t] / (1 - ab[t])
    coef_xt = np.sqrt(alphas[t]) * (1 - ab_prev[t]) / (1 - ab[t])
    if clip_x0:
      mu_model = coef_x0 * x0_hat + coef_xt * x_t
    else:
      mu_model = (x_t - betas[t] / np.sqrt(1 - ab[t]) * eps_hat) / np.sqrt(alphas[t])
    mse[:, t] = ((x0 - x0_hat) ** 2).reshape(b, -1).mean(1)
    if t == 0:
      # p(x_0 | x_1): N(mu, sigma_1^2) over the bins, sigma_1^2 = beta_tilde_2
      # (0-based index 1) for either variance, as in the authors' code.
      scale = np.sqrt(beta_tilde[1])
      k = np.rint((x0 + 1) * 127.5).astype(int)
      log_p = np.vectorize(lambda kk, mm: _bin_log_prob(kk, mm, scale, cdf))(k, mu_model)
      terms[:, 0] = -log_p.reshape(b, -1).sum(1)
    else:
      mu_q = coef_x0 * x0 + coef_xt * x_t
      var_q = beta_tilde[t]
      var_p = betas[t] if variance == "beta" else beta_tilde[t]
      kl = 0.5 * (np.log(var_p / var_q) + (var_q + (mu_q - mu_model) ** 2) / var_p - 1)
      terms[:, t] = kl.reshape(b, -1).sum(1)
  var_T = 1 - ab[-1]
  prior = (0.5 * (-np.log(var_T) + var_T + ab[-1] * x0 ** 2 - 1)).reshape(b, -1).sum(1)
  to_bpd = 1.0 / (d * math.log(2))
  terms, prior = terms * to_bpd, prior * to_bpd
  return prior + terms.sum(1), terms, prior, mse


@pytest.mark.parametrize("variance, clip_x0, cdf", [
    ("beta", False, "approx"), ("beta_tilde", True, "approx"),
    ("beta", True, "exact"), ("beta_tilde", False, "exact")])
def test_bound_matches_float64_reference(variance, clip_x0, cdf):
  betas = np.linspace(0.02, 0.6, 10)        # T = 10, alpha_bar_T = 0.007
  sched = schedules.schedule_from_betas(betas)
  # 3 images of D = 4, hitting both edge bins and interior levels.
  k = np.array([[0, 255, 128, 37], [3, 250, 101, 190], [255, 0, 64, 127]])
  x0 = (k / 127.5 - 1).reshape(3, 2, 2, 1)
  key = jax.random.key(7)
  bound = jax.jit(lambda x: likelihood.variational_bound(
      lambda x_t, t: _tiny_eps(x_t, t, jnp), sched, x, key, variance=variance, clip_x0=clip_x0,
      cdf=cdf))(jnp.asarray(x0, jnp.float32))
  # The documented noise of term t: normal(fold_in(key, t), x0.shape).
  noises = [np.asarray(jax.random.normal(jax.random.fold_in(key, t), x0.shape), np.float64)
            for t in range(10)]
  total, terms, prior, mse = _reference_bound(x0, betas, noises, variance, clip_x0, cdf)
  assert bound.terms_bpd.shape == (3, 10) and bound.total_bpd.shape == (3,)
  np.testing.assert_allclose(bound.terms_bpd, terms, rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(bound.prior_bpd, prior, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bound.total_bpd, total, rtol=2e-4)
  np.testing.assert_allclose(bound.x0_mse, mse, rtol=1e-4, atol=1e-7)
  rate, distortion = likelihood.rate_distortion(bound)
  np.testing.assert_allclose(rate[-1], prior.mean(), rtol=1e-4)
  np.testing.assert_allclose(rate[0] + terms[:, 0].mean(), total.mean(), rtol=2e-4)
  np.testing.assert_allclose(distortion, np.sqrt(mse.mean(0)) * 127.5, rtol=1e-4)


def test_bound_rejects_unknown_names():
  sched = schedules.schedule_from_betas(np.linspace(0.1, 0.5, 3))
  x0 = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match="variance"):
    likelihood.variational_bound(lambda x, t: x, sched, x0, jax.random.key(0), variance="large")
  with pytest.raises(ValueError, match="cdf"):
    likelihood.variational_bound(lambda x, t: x, sched, x0, jax.random.key(0), cdf="erf")


# ----------------------------------------------------------------------------
# The Gaussian oracle: x_0 ~ N(MU, S^2 I) discretised, eps_hat = E[eps | x_t].

MU, S = 0.1, 0.25


def _oracle_eps_fn(sched):
  def eps_fn(x_t, t):
    a = jnp.asarray(sched.alpha_bars)[t].reshape(-1, 1, 1, 1)
    return jnp.sqrt(1 - a) * (x_t - jnp.sqrt(a) * MU) / (a * S ** 2 + 1 - a)
  return eps_fn


def _bin_probs():
  """P(bin k) of the discretised N(MU, S^2) (the true data distribution)."""
  p = np.diff(special.ndtr((EDGES - MU) / S))
  assert abs(p.sum() - 1) < 1e-12
  return p


def _expected_bound(variance, cdf, tables):
  """E_q of every term in closed form (float64); the decoder by Gauss-Hermite quadrature.

  With eps_hat linear in x_t, x0 - x0_hat = sqrt(1 - a) / sqrt(a) (eps_hat -
  eps) has E[(eps_hat - eps)^2] = (c sqrt(a))^2 E[(x0 - MU)^2] + (1 - c sqrt(1 - a))^2,
  c = sqrt(1 - a) / v, v = a S^2 + 1 - a, the moments those of the discrete data.

  Returns:
    (total, KL terms [T] with [0] = 0, decoder, prior, x0 mse [T]), bits/dim.
  """
  p = _bin_probs()
  m1, m2 = np.sum(p * LEVELS), np.sum(p * LEVELS ** 2)
  var_x0 = m2 - 2 * MU * m1 + MU ** 2          # E[(x0 - MU)^2]
  a = tables["alpha_bars"]
  v = a * S ** 2 + 1 - a
  c = np.sqrt(1 - a) / v
  err_eps2 = c ** 2 * a * var_x0 + (1 - c * np.sqrt(1 - a)) ** 2
  mse = (1 - a) / a * err_eps2
  log_var_q = tables["posterior_log_variance_clipped"]
  var_p = tables["betas"] if variance == "beta" else tables["posterior_variance"]
  var_p = np.where(np.arange(len(a)) == 0, np.exp(log_var_q[0]), var_p)
  kl = 0.5 * (np.log(var_p) - log_var_q + np.exp(log_var_q) / var_p - 1
              + tables["posterior_mean_coef1"] ** 2 * mse / var_p)
  kl[0] = 0.0
  # Decoder: given the bin k, x0_hat = x0 + sqrt(1 - a)/sqrt(a) (eps_hat - eps)
  # is Gaussian with mean k0 x + k1 and std k2.
  a0 = a[0]
  k0 = 1 - (1 - a0) / v[0]                      # = a0 S^2 / v0
  k1 = (1 - a0) * MU / v[0]
  k2 = math.sqrt((1 - a0) / a0) * (1 - c[0] * math.sqrt(1 - a0))
  z, w = np.polynomial.hermite_e.hermegauss(60)
  w = w / w.sum()
  scale = math.sqrt(var_p[0])
  decoder = sum(p[k] * np.sum(w * -np.array([_bin_log_prob(k, m, scale, cdf) for m in
                                             k0 * LEVELS[k] + k1 + k2 * z]))
                for k in range(256) if p[k] > 1e-14)
  prior = 0.5 * (-math.log(1 - a[-1]) + (1 - a[-1]) + a[-1] * m2 - 1)
  nats = kl.sum() + decoder + prior
  return (nats / math.log(2), kl / math.log(2), decoder / math.log(2),
          prior / math.log(2), mse)


@pytest.fixture(scope="module")
def oracle_data():
  rng = np.random.default_rng(0)
  k = np.clip(np.rint((rng.normal(MU, S, (16, 32, 32, 1)) + 1) * 127.5), 0, 255).astype(int)
  return k


@pytest.mark.parametrize("variance, cdf, expected_gap", [("beta", "approx", 0.127),
                                                          ("beta_tilde", "exact", 0.750)])
def test_gaussian_oracle_bound_is_above_and_close_to_the_true_nll(oracle_data, variance, cdf,
                                                                  expected_gap):
  sched = schedules.make_schedule("linear", 1000)
  tables = schedules.tables_from_betas(schedules.linear_betas(1000))
  k = oracle_data
  x0 = jnp.asarray(k / 127.5 - 1, jnp.float32)
  bound = jax.jit(lambda x: likelihood.variational_bound(
      _oracle_eps_fn(sched), sched, x, jax.random.key(1), variance=variance, cdf=cdf))(x0)
  # The true NLL of the discretised data: its entropy, and the NLL of these pixels.
  p = _bin_probs()
  entropy = -np.sum(p[p > 0] * np.log2(p[p > 0]))
  nll = -np.log2(p[k]).reshape(len(k), -1).mean(1)
  total = np.asarray(bound.total_bpd)
  assert np.all(np.isfinite(total)) and np.all(np.isfinite(bound.terms_bpd))
  se = total.std() / math.sqrt(len(total))    # Monte-Carlo error of the mean bound
  print(f"{variance} {cdf}: bound {total.mean():.4f} +- {se:.4f}, NLL of the images "
        f"{nll.mean():.4f}, entropy {entropy:.4f}")
  # The bound is above the NLL of the same images, by many standard errors.
  assert total.mean() - nll.mean() > 5 * se, (total.mean(), nll.mean(), se)
  # ... and is the closed-form expectation of every term, whose gap to the
  # entropy is the price of the fixed reverse variances and of the decoder.
  exp_total, exp_kl, exp_decoder, exp_prior, exp_mse = _expected_bound(variance, cdf, tables)
  assert exp_total - entropy == pytest.approx(expected_gap, abs=2e-3)
  assert abs(total.mean() - exp_total) < 4 * se, (total.mean(), exp_total, se)
  terms_bt = np.asarray(bound.terms_bpd)
  terms = terms_bt.mean(0)
  assert abs(terms[0] - exp_decoder) < 4 * terms_bt[:, 0].std() / math.sqrt(len(k))
  np.testing.assert_allclose(np.asarray(bound.prior_bpd).mean(), exp_prior, rtol=1e-2)
  # The KL curve, in blocks of 100 steps (1.6e4 pixels per term).
  blocks = np.arange(1, 1000, 111)
  np.testing.assert_allclose(np.add.reduceat(terms, blocks), np.add.reduceat(exp_kl, blocks),
                             rtol=0.03)
  # Rate-distortion: the distortion is the posterior RMSE of x0_hat: the
  # noise of one step at x_1, the data's std at x_T.
  rate, distortion = likelihood.rate_distortion(bound)
  np.testing.assert_allclose(np.asarray(distortion), np.sqrt(exp_mse) * 127.5, rtol=0.03)
  assert float(distortion[0]) < 1.5
  assert float(distortion[-1]) == pytest.approx(S * 127.5, rel=0.02)
  assert np.all(np.diff(np.asarray(rate)) <= 1e-6)      # bits only accumulate
