"""DDPM maths: time embedding, schedules, forward process, objectives."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm import embedding
from ddpm import objectives
from ddpm import schedules


def test_interleaved_embedding_matches_the_course_formula():
  emb = embedding.sinusoidal_embedding(jnp.array([1.0]), 8, layout="interleaved")
  np.testing.assert_allclose(
      emb[0], [0.841471, 0.540302, 0.0998334, 0.995004, 0.00999983, 0.99995, 0.001, 0.9999995],
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("freq_shift", [0, 1])
def test_concat_embedding_against_numpy(freq_shift):
  t = np.array([0.0, 1.0, 17.0, 999.0])
  dim, half = 16, 8
  freqs = np.exp(-math.log(10000) * np.arange(half) / (half - freq_shift))
  args = t[:, None] * freqs[None]
  want = np.concatenate([np.sin(args), np.cos(args)], axis=1)
  got = embedding.sinusoidal_embedding(jnp.asarray(t), dim, freq_shift=freq_shift)
  assert got.shape == (4, dim)
  np.testing.assert_allclose(got, want, atol=2e-4)   # float32 angles up to ~1000 rad
  inter = embedding.sinusoidal_embedding(jnp.asarray(t), dim, layout="interleaved",
                                         freq_shift=freq_shift)
  np.testing.assert_array_equal(inter[:, 0::2], got[:, :half])
  np.testing.assert_array_equal(inter[:, 1::2], got[:, half:])


def _linear64():
  return schedules.tables_from_betas(schedules.linear_betas(1000))


def test_linear_schedule_values_against_float64():
  tables = _linear64()
  np.testing.assert_allclose(tables["alpha_bars"][999], 4.035829765e-05, rtol=1e-9)
  np.testing.assert_allclose(tables["posterior_variance"][487], 0.009791571986, rtol=1e-9)
  s = schedules.make_schedule("linear", 1000)
  assert s.num_timesteps == 1000 and s.betas.dtype == jnp.float32
  np.testing.assert_allclose(s.betas[[0, 999]], [1e-4, 0.02], rtol=1e-6)
  for name, table in tables.items():
    np.testing.assert_allclose(getattr(s, name), table.astype(np.float32), rtol=1e-6,
                               err_msg=name)
  np.testing.assert_allclose(s.alpha_bars[999], 4.035829765e-05, rtol=1e-5)
  np.testing.assert_allclose(s.posterior_variance[487], 0.009791571986, rtol=1e-6)


def test_posterior_identities():
  tb = _linear64()
  # Mean of q(x_{t-1} | x_t, x0) at x_t = sqrt(alpha_bar_t) x0 is sqrt(alpha_bar_{t-1}) x0.
  np.testing.assert_allclose(
      tb["posterior_mean_coef1"] + tb["posterior_mean_coef2"] * np.sqrt(tb["alpha_bars"]),
      np.sqrt(tb["alpha_bars_prev"]), rtol=1e-12)
  assert tb["posterior_variance"][0] == 0.0
  np.testing.assert_allclose(tb["posterior_log_variance_clipped"][0],
                             np.log(tb["posterior_variance"][1]))
  assert np.all(tb["posterior_variance"][1:] <= tb["betas"][1:])


def test_cosine_schedule_against_float64():
  num_timesteps, s = 1000, 0.008
  f = lambda u: np.cos((u / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  alpha_bar = f(np.arange(1, num_timesteps + 1)) / f(0)
  betas = schedules.cosine_betas(num_timesteps, s)
  assert betas.max() <= 0.999 and betas.min() > 0
  unclipped = betas < 0.999
  np.testing.assert_allclose(np.cumprod(1 - betas)[unclipped], alpha_bar[unclipped], rtol=1e-9)
  sched = schedules.make_schedule("cosine", num_timesteps)
  np.testing.assert_allclose(sched.alpha_bars[:900], alpha_bar[:900].astype(np.float32),
                             rtol=1e-5)


def test_unknown_schedule_raises():
  with pytest.raises(ValueError, match="unknown schedule"):
    schedules.make_schedule("quadratic", 10)


def test_q_sample_closed_form_matches_iterated_forward_process():
  """x_t from the closed form and from t one-step updates agree in distribution."""
  sched = schedules.make_schedule("linear", 1000)
  x0 = jnp.array([-1.0, -0.2, 0.5, 1.0])
  n = 20_000
  check = jnp.array([99, 499, 999])

  def step(x, inp):
    beta, key = inp
    x = jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key, x.shape)
    return x, x

  keys = jax.random.split(jax.random.key(0), 1000)
  _, xs = jax.lax.scan(step, jnp.broadcast_to(x0, (n, 4)), (sched.betas, keys))
  for t in check:
    iterated = xs[t]
    closed = schedules.q_sample(sched, jnp.broadcast_to(x0, (n, 4)), jnp.full((n,), t),
                                jax.random.normal(jax.random.key(int(t)), (n, 4)))
    for x in (iterated, closed):
      np.testing.assert_allclose(x.mean(0), sched.sqrt_alpha_bars[t] * x0, atol=0.03)
      np.testing.assert_allclose(x.var(0), 1 - sched.alpha_bars[t], atol=0.03)


def test_q_sample_and_posterior_shapes():
  sched = schedules.make_schedule("linear", 100)
  x0 = jnp.ones((3, 4, 4, 2))
  t = jnp.array([0, 50, 99])
  noise = jnp.zeros_like(x0)
  x_t = schedules.q_sample(sched, x0, t, noise)
  np.testing.assert_allclose(x_t[:, 0, 0, 0], sched.sqrt_alpha_bars[np.asarray(t)], rtol=1e-6)
  mean, var, log_var = schedules.q_posterior(sched, x0, x_t, t)
  assert mean.shape == x0.shape and var.shape == (3, 1, 1, 1) and log_var.shape == (3, 1, 1, 1)
  np.testing.assert_allclose(mean[:, 0, 0, 0], np.sqrt(np.asarray(sched.alpha_bars_prev)[t]),
                             rtol=1e-5)


def test_objective_conversions_against_float64():
  sched = schedules.make_schedule("linear", 1000)
  tables = _linear64()
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (6, 3, 3, 2))
  eps = rng.standard_normal((6, 3, 3, 2))
  t = np.array([1, 10, 100, 500, 900, 999])
  a = np.sqrt(tables["alpha_bars"][t])[:, None, None, None]
  s = np.sqrt(1 - tables["alpha_bars"][t])[:, None, None, None]
  x_t = a * x0 + s * eps
  v = a * eps - s * x0
  f32 = lambda z: jnp.asarray(z, jnp.float32)
  tj = jnp.asarray(t)
  np.testing.assert_allclose(schedules.q_sample(sched, f32(x0), tj, f32(eps)), x_t, atol=1e-5)
  np.testing.assert_allclose(objectives.v_target(sched, f32(x0), tj, f32(eps)), v, atol=1e-5)
  np.testing.assert_allclose(objectives.eps_to_x0(sched, f32(x_t), tj, f32(eps)), x0, atol=2e-4)
  np.testing.assert_allclose(objectives.x0_to_eps(sched, f32(x_t), tj, f32(x0)), eps, atol=2e-4)
  np.testing.assert_allclose(objectives.v_to_x0(sched, f32(x_t), tj, f32(v)), x0, atol=1e-5)
  np.testing.assert_allclose(objectives.v_to_eps(sched, f32(x_t), tj, f32(v)), eps, atol=1e-5)
  for name, out in (("eps", eps), ("x0", x0), ("v", v)):
    np.testing.assert_allclose(objectives.target(name, sched, f32(x0), tj, f32(eps)), out,
                               atol=1e-5)
    np.testing.assert_allclose(objectives.output_to_eps(name, sched, f32(x_t), tj, f32(out)),
                               eps, atol=2e-4, err_msg=name)


def test_drop_labels():
  label = jnp.arange(1000) % 10
  key = jax.random.key(0)
  np.testing.assert_array_equal(objectives.drop_labels(key, label, 0.0, 10), label)
  np.testing.assert_array_equal(objectives.drop_labels(key, label, 1.0, 10), 10)
  dropped = objectives.drop_labels(key, label, 0.3, 10)
  assert 0.25 < float(jnp.mean(dropped == 10)) < 0.35
  kept = dropped != 10
  np.testing.assert_array_equal(dropped[kept], label[kept])


@pytest.mark.parametrize("objective, want", [("eps", 1.0), ("x0", 1.0 / 3.0)])
def test_diffusion_loss_of_the_zero_predictor(objective, want):
  """E[eps^2] = 1; E[x0^2] = 1/3 for x0 ~ U(-1, 1)."""
  sched = schedules.make_schedule("linear", 1000)
  x0 = jax.random.uniform(jax.random.key(1), (64, 8, 8, 1), minval=-1, maxval=1)
  loss = objectives.diffusion_loss(lambda x_t, t: jnp.zeros_like(x_t), sched, x0,
                                   jax.random.key(2), objective=objective)
  np.testing.assert_allclose(loss, want, rtol=0.05)


@pytest.mark.parametrize("num_timesteps", [20, 100, 1000])
def test_linear_schedule_ends_near_standard_normal_for_any_T(num_timesteps):
  """beta_start/beta_end scale by 1000/T (Improved DDPM): alpha_bar_T ~ 0 for every T."""
  sched = schedules.make_schedule("linear", num_timesteps)
  # Independent float64 reference: Improved DDPM's get_named_beta_schedule("linear").
  scale = 1000 / num_timesteps
  betas = np.minimum(np.linspace(scale * 1e-4, scale * 0.02, num_timesteps), 0.999)
  alpha_bar_T = np.prod(1.0 - betas)
  assert alpha_bar_T < 1e-4
  # x_T's signal coefficient sqrt(alpha_bar_T) is under 1% of its noise.
  assert float(sched.sqrt_alpha_bars[-1]) < 1e-2
  np.testing.assert_allclose(sched.alpha_bars[-1], alpha_bar_T, rtol=1e-4)
  np.testing.assert_allclose(sched.betas, betas.astype(np.float32), rtol=1e-6)


def test_linear_schedule_at_T_1000_is_unchanged_by_rescaling():
  want = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  np.testing.assert_array_equal(schedules.scaled_linear_betas(1000), want)
  np.testing.assert_array_equal(schedules.make_schedule("linear", 1000).betas,
                                want.astype(np.float32))


def test_linear_schedule_rescaling_can_be_turned_off():
  sched = schedules.make_schedule("linear", 20, beta_reference_timesteps=0)
  np.testing.assert_allclose(sched.betas[[0, -1]], [1e-4, 0.02], rtol=1e-6)
  assert float(sched.alpha_bars[-1]) > 0.8   # Ho et al.'s end points unscaled: far from N(0, I)


def test_smoke_config_schedule_reaches_noise():
  """The smoke variant's T = 20 forward process ends at noise (it stopped at alpha_bar 0.82)."""
  from configs import ddpm_fashion_mnist
  from launch import tasks
  config = ddpm_fashion_mnist.get_config("smoke")
  assert config.diffusion.num_timesteps == 20
  task = tasks.build(config)
  assert float(task.schedule.alpha_bars[-1]) < 1e-4


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_min_snr_weights_against_float64(objective):
  """Hang et al.'s min(SNR, gamma) x0-weight, converted to each regressed target (float64)."""
  sched = schedules.make_schedule("linear", 1000)
  t = np.array([0, 1, 100, 400, 999])
  a_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t]
  snr = a_bar / (1.0 - a_bar)
  x0_weight = np.minimum(snr, 5.0)
  want = {"eps": x0_weight / snr, "x0": x0_weight, "v": x0_weight / (snr + 1.0)}[objective]
  got = jax.jit(lambda t: objectives.min_snr_weight(objective, sched, t, 5.0))(jnp.asarray(t))
  np.testing.assert_allclose(got, want, rtol=2e-4)


def test_min_snr_weights_equalise_the_x0_error_of_every_objective():
  """The same x0 error weighs the same under every objective once min-SNR-weighted.

  A prediction with x0 error d has eps error -sqrt(SNR) d and v error
  -sqrt(SNR + 1) d (up to sign); the weighted squared errors then agree.
  """
  sched = schedules.make_schedule("cosine", 1000)
  t = jnp.array([3, 250, 600, 990])
  snr = sched.alpha_bars[t] / (1.0 - sched.alpha_bars[t])
  d2 = jnp.array([0.3, 0.1, 2.0, 0.7])              # squared x0 errors
  weighted = {
      "x0": objectives.min_snr_weight("x0", sched, t, 5.0) * d2,
      "eps": objectives.min_snr_weight("eps", sched, t, 5.0) * snr * d2,
      "v": objectives.min_snr_weight("v", sched, t, 5.0) * (snr + 1.0) * d2,
  }
  np.testing.assert_allclose(weighted["eps"], weighted["x0"], rtol=1e-5)
  np.testing.assert_allclose(weighted["v"], weighted["x0"], rtol=1e-5)


def test_min_snr_loss_is_the_weighted_mean_of_per_example_errors():
  sched = schedules.make_schedule("linear", 1000)
  x0 = jax.random.uniform(jax.random.key(1), (16, 4, 4, 1), minval=-1, maxval=1)
  key = jax.random.key(2)
  model_fn = lambda x_t, t: 0.5 * x_t
  got = objectives.diffusion_loss(model_fn, sched, x0, key, objective="eps", min_snr_gamma=5.0)
  # Recompute with the same draws of t and eps, in float64.
  k_t, k_eps = jax.random.split(key)
  t = np.asarray(jax.random.randint(k_t, (16,), 0, 1000))
  eps = np.asarray(jax.random.normal(k_eps, x0.shape, jnp.float32), np.float64)
  a_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None]
  x_t = np.sqrt(a_bar) * np.asarray(x0, np.float64) + np.sqrt(1 - a_bar) * eps
  err = np.mean((0.5 * x_t - eps) ** 2, axis=(1, 2, 3))
  snr = a_bar[:, 0, 0, 0] / (1 - a_bar[:, 0, 0, 0])
  np.testing.assert_allclose(got, np.mean(err * np.minimum(snr, 5.0) / snr), rtol=1e-4)
  plain = objectives.diffusion_loss(model_fn, sched, x0, key, objective="eps")
  np.testing.assert_allclose(plain, np.mean(err), rtol=1e-4)


def _min_snr_v_weights_float64(gamma: float) -> np.ndarray:
  """min(SNR, gamma) / (SNR + 1) for the linear schedule, in float64."""
  a_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
  snr = a_bar / (1.0 - a_bar)
  return np.minimum(snr, gamma) / (snr + 1.0)


def test_importance_timesteps_follow_the_loss_weights():
  sched = schedules.make_schedule("linear", 1000)
  w = _min_snr_v_weights_float64(5.0)
  np.testing.assert_allclose(objectives.timestep_weights("v", sched, 5.0), w, rtol=1e-3)  # float32 1 - abar
  t, factor = objectives.sample_timesteps(jax.random.key(0), 400_000,
                                          objectives.timestep_weights("v", sched, 5.0),
                                          "importance")
  # the factor is mean_s w(s) for every draw, so p(t) factor = w(t) / T
  np.testing.assert_allclose(factor, np.full(400_000, w.mean()), rtol=1e-5)
  # histogram over 20 bins of t against sum_t w(t) / sum w, within 5 standard errors
  edges = np.arange(0, 1001, 50)
  counts = np.histogram(np.asarray(t), edges)[0]
  p_bin = np.add.reduceat(w, edges[:-1]) / w.sum()
  se = np.sqrt(400_000 * p_bin * (1 - p_bin))
  assert np.all(np.abs(counts - 400_000 * p_bin) <= 5 * se + 1), (counts, 400_000 * p_bin)
  # the weights are small at high noise: ~40% of uniform draws lie where p is tiny
  assert p_bin[12:].sum() < 0.03 and (edges[12] / 1000) == 0.6
  # zero weights are never drawn, the first and last included
  t, _ = objectives.sample_timesteps(jax.random.key(1), 40_000, jnp.array([0., 1., 0., 3., 0.]),
                                     "importance")
  counts = np.bincount(np.asarray(t), minlength=5)
  assert counts[[0, 2, 4]].sum() == 0 and abs(counts[3] - 30_000) < 5 * np.sqrt(40_000 * 0.1875)


def test_importance_sampled_loss_has_the_uniform_loss_expectation_and_less_variance():
  """Both estimators against the closed-form expectation (1/T) sum_t w(t) E[err(t)]
  for the predictor 0.5 x_t, the v objective and min-SNR-5 (w = min(SNR, 5) / (SNR + 1)):
  0.5 x_t - v = (0.5 sqrt(abar) + sqrt(1 - abar)) x0 + (0.5 sqrt(1 - abar) - sqrt(abar)) eps."""
  sched = schedules.make_schedule("linear", 1000)
  x0 = jnp.tile(jnp.array([[[[0.8]], [[-0.6]]]]), (512, 1, 1, 1))        # [512, 2, 1, 1]
  model_fn = lambda x_t, t: 0.5 * x_t
  a_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
  w = _min_snr_v_weights_float64(5.0)
  e_err = ((0.5 * np.sqrt(a_bar) + np.sqrt(1 - a_bar)) ** 2 * np.mean(np.array([0.8, -0.6]) ** 2)
           + (0.5 * np.sqrt(1 - a_bar) - np.sqrt(a_bar)) ** 2)
  want = np.mean(w * e_err)
  est = {}
  for mode in objectives.T_SAMPLINGS:
    loss = jax.jit(jax.vmap(lambda k: objectives.diffusion_loss(
        model_fn, sched, x0, k, objective="v", min_snr_gamma=5.0, t_sampling=mode)))
    est[mode] = np.asarray(loss(jax.random.split(jax.random.key(3), 400)), np.float64)
  for mode, values in est.items():
    se = values.std() / np.sqrt(len(values))
    assert abs(values.mean() - want) < 4 * se, (mode, values.mean(), want, se)
  assert est["importance"].std() < 0.5 * est["uniform"].std(), {k: v.std() for k, v in est.items()}
