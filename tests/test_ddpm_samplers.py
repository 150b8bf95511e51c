"""Samplers: DDIM / ancestral equivalence, Gaussian data, trajectory capture, guidance, the sampling spec."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm import samplers
from ddpm import schedules

MU, SIGMA = 0.3, 0.5   # the data distribution N(MU, SIGMA^2 I)


def _gaussian_eps_fn(schedule):
  """The optimal eps predictor E[eps | x_t] for x0 ~ N(MU, SIGMA^2 I)."""
  def eps_fn(x_t, t):
    a = jnp.asarray(schedule.alpha_bars)[t].reshape(-1, 1, 1, 1)
    return jnp.sqrt(1 - a) * (x_t - jnp.sqrt(a) * MU) / (a * SIGMA ** 2 + 1 - a)
  return eps_fn


def _nonlinear_eps_fn(schedule):
  gauss = _gaussian_eps_fn(schedule)
  return lambda x_t, t: gauss(x_t, t) + 0.1 * jnp.tanh(3 * x_t) * (t[:, None, None, None] / 1000)


def test_ddim_timesteps():
  np.testing.assert_array_equal(samplers.ddim_timesteps(1000, 1000), np.arange(1000))
  seq = samplers.ddim_timesteps(1000, 50)
  assert len(seq) == 50 and seq[0] == 0 and seq[-1] == 999 and np.all(np.diff(seq) > 0)
  quad = samplers.ddim_timesteps(1000, 100, "quadratic")
  assert len(quad) == 100 and np.all(np.diff(quad) > 0) and quad[-1] < 1000
  assert np.diff(quad)[-1] > np.diff(quad)[0]
  with pytest.raises(ValueError):
    samplers.ddim_timesteps(10, 11)


@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_eta1_stride1_equals_ancestral_beta_tilde(clip_x0):
  sched = schedules.make_schedule("linear", 1000)
  eps_fn = _nonlinear_eps_fn(sched)
  x_T = jax.random.normal(jax.random.key(0), (8, 4, 4, 1))
  key = jax.random.key(1)
  run = jax.jit(lambda x, k: (
      samplers.ancestral_sample(eps_fn, sched, x, k, variance="beta_tilde", clip_x0=clip_x0),
      samplers.ddim_sample(eps_fn, sched, x, k, num_steps=1000, eta=1.0, clip_x0=clip_x0)))
  ancestral, ddim = run(x_T, key)
  assert float(jnp.std(ancestral)) > 0.1
  np.testing.assert_allclose(ddim, ancestral, atol=1e-4, rtol=1e-4)


def _moments(x):
  return float(jnp.mean(x)), float(jnp.std(x))


@pytest.mark.parametrize("name, kwargs", [
    ("ancestral", dict(variance="beta")),
    ("ancestral", dict(variance="beta_tilde")),
    ("ddim", dict(num_steps=50, eta=0.0)),
    ("ddim", dict(num_steps=100, eta=1.0, spacing="quadratic")),
])
def test_samplers_reproduce_gaussian_data(name, kwargs):
  sched = schedules.make_schedule("linear", 1000)
  x_T = jax.random.normal(jax.random.key(2), (4000, 2, 2, 1))
  fn = samplers.ancestral_sample if name == "ancestral" else samplers.ddim_sample
  x0 = jax.jit(lambda x, k: fn(_gaussian_eps_fn(sched), sched, x, k, **kwargs))(
      x_T, jax.random.key(3))
  mean, std = _moments(x0)
  assert abs(mean - MU) < 0.02, (mean, std)
  assert abs(std - SIGMA) < 0.03, (mean, std)


def test_deterministic_ancestral_ignores_the_key():
  sched = schedules.make_schedule("linear", 100)
  eps_fn = _nonlinear_eps_fn(sched)
  x_T = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
  run = jax.jit(lambda k: samplers.ancestral_sample(eps_fn, sched, x_T, k, deterministic=True))
  np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(2)))


def test_trajectory_capture():
  sched = schedules.make_schedule("linear", 100)
  eps_fn = _nonlinear_eps_fn(sched)
  x_T = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
  key = jax.random.key(1)

  @jax.jit
  def run(x):
    plain = samplers.ancestral_sample(eps_fn, sched, x, key)
    final, traj = samplers.ancestral_sample(eps_fn, sched, x, key, capture_every=10)
    d_plain = samplers.ddim_sample(eps_fn, sched, x, key, num_steps=10, eta=0.5)
    d_final, d_traj = samplers.ddim_sample(eps_fn, sched, x, key, num_steps=10, eta=0.5,
                                           capture_every=4)
    first10 = samplers.ancestral_sample(eps_fn, sched, x, key, capture_every=10)[1][0]
    return plain, final, traj, d_plain, d_final, d_traj, first10

  plain, final, traj, d_plain, d_final, d_traj, first10 = run(x_T)
  assert traj.shape == (10, 3, 2, 2, 1)
  np.testing.assert_array_equal(final, plain)
  np.testing.assert_array_equal(traj[-1], final)
  assert d_traj.shape == (3, 3, 2, 2, 1)         # ceil(10 / 4) captures, after 4, 8, 10 steps
  np.testing.assert_allclose(d_final, d_plain, atol=1e-6)
  np.testing.assert_array_equal(d_traj[-1], d_final)
  np.testing.assert_array_equal(first10, traj[0])
  assert float(jnp.std(traj[0] - traj[-1])) > 0.01


def test_guided_eps_fn():
  def model_fn(x, t, label):
    return x * (1.0 + label[:, None, None, None].astype(jnp.float32)) + t[:, None, None, None]

  x = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
  t = jnp.arange(4)
  label = jnp.array([0, 1, 2, 3])
  cond = model_fn(x, t, label)
  uncond = model_fn(x, t, jnp.full_like(label, 10))
  np.testing.assert_array_equal(samplers.guided_eps_fn(model_fn, label, 10, 1.0)(x, t), cond)
  np.testing.assert_array_equal(
      jax.jit(lambda s: samplers.guided_eps_fn(model_fn, label, 10, s)(x, t))(1.0), cond)
  np.testing.assert_allclose(samplers.guided_eps_fn(model_fn, label, 10, 0.0)(x, t), uncond,
                             atol=1e-5)
  np.testing.assert_allclose(samplers.guided_eps_fn(model_fn, label, 10, 3.0)(x, t),
                             uncond + 3.0 * (cond - uncond), atol=1e-4)


# ---------------------------------------------------------------------------
# SamplingSpec and the dispatcher.

def test_spec_defaults_validate_and_resolve_steps():
  spec = samplers.SamplingSpec(num_timesteps=100).validate()
  assert spec.num_steps == 100 and spec.rule is samplers.SAMPLERS["ancestral"]
  ddim = dataclasses.replace(spec, sampler="ddim", steps=10, eta=0.5).validate()
  assert ddim.num_steps == 10 and ddim != spec and hash(ddim) != hash(spec)
  assert dataclasses.asdict(ddim)["steps"] == 10


@pytest.mark.parametrize("changes, field", [
    (dict(sampler="euler"), "sampler"),
    (dict(steps=50), "steps"),                       # only ddim takes steps < T
    (dict(sampler="deterministic", steps=50), "steps"),
    (dict(sampler="ddim", steps=101), "steps"),
    (dict(sampler="ddim", steps=-1), "steps"),
    (dict(sampler="ddim", steps=2.5), "steps"),
    (dict(spacing="cubic"), "spacing"),
    (dict(variance="large"), "variance"),
    (dict(eta=1.5), "eta"),
    (dict(eta=float("nan")), "eta"),
    (dict(clip_x0=1), "clip_x0"),
    (dict(guidance=2.0), "guidance"),                # no null label
    (dict(num_classes=10, null_label=True, guidance=-1.0), "guidance"),
    (dict(num_classes=10, null_label=True, guidance=101.0), "guidance"),
    (dict(label=3), "label"),                        # unconditional
    (dict(num_classes=10, label=10), "label"),       # 10 is the null label: needs one
    (dict(num_classes=10, null_label=True, label=11), "label"),
    (dict(null_label=True), "null_label"),           # no classes
    (dict(num_timesteps=0), "num_timesteps"),
])
def test_spec_validate_names_the_bad_field(changes, field):
  spec = dataclasses.replace(samplers.SamplingSpec(num_timesteps=100), **changes)
  with pytest.raises(samplers.SpecError) as e:
    spec.validate()
  assert e.value.field == field and str(e.value).startswith(f"{field}=")


def test_spec_accepts_the_edges_of_each_rule():
  base = samplers.SamplingSpec(num_timesteps=100, num_classes=10, null_label=True)
  for changes in (dict(steps=100), dict(sampler="ddim", steps=1), dict(sampler="ddim", steps=100),
                  dict(eta=1.0), dict(guidance=0.0), dict(guidance=100.0), dict(label=0),
                  dict(label=10), dict(eta=np.float32(0.5)), dict(guidance=jnp.float32(3.0))):
    dataclasses.replace(base, **changes).validate()


def test_spec_labels():
  assert samplers.SamplingSpec().labels(3) is None
  cond = samplers.SamplingSpec(num_classes=10)
  np.testing.assert_array_equal(cond.labels(12), np.arange(12) % 10)
  np.testing.assert_array_equal(dataclasses.replace(cond, label=3).labels(2), [3, 3])


@pytest.mark.parametrize("changes, direct", [
    (dict(), lambda e, s, x, k: samplers.ancestral_sample(e, s, x, k, clip_x0=True)),
    (dict(variance="beta_tilde", clip_x0=False),
     lambda e, s, x, k: samplers.ancestral_sample(e, s, x, k, variance="beta_tilde")),
    (dict(sampler="deterministic"),
     lambda e, s, x, k: samplers.ancestral_sample(e, s, x, k, clip_x0=True, deterministic=True)),
    (dict(sampler="ddim", steps=7, eta=0.3, spacing="quadratic"),
     lambda e, s, x, k: samplers.ddim_sample(e, s, x, k, num_steps=7, eta=0.3,
                                             spacing="quadratic", clip_x0=True)),
    (dict(sampler="ddim"),
     lambda e, s, x, k: samplers.ddim_sample(e, s, x, k, num_steps=50, clip_x0=True)),
    (dict(sampler="dpmpp_2m"),
     lambda e, s, x, k: samplers.dpm_solver_sample(e, s, x, k, num_steps=20, order=2,
                                                   spacing="linspace", clip_x0=True)),
    (dict(sampler="dpmpp_2m_sde", steps=9),
     lambda e, s, x, k: samplers.dpm_solver_sample(e, s, x, k, num_steps=9, order=2,
                                                   spacing="linspace", clip_x0=True, sde=True)),
    (dict(sampler="heun", steps=6, clip_x0=False),
     lambda e, s, x, k: samplers.heun_sample(e, s, x, k, num_steps=6, spacing="linspace")),
])
def test_dispatcher_runs_the_named_sampler(changes, direct):
  sched = schedules.make_schedule("linear", 50)
  eps_fn = _nonlinear_eps_fn(sched)
  spec = dataclasses.replace(samplers.SamplingSpec(num_timesteps=50), **changes).validate()
  x_T = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
  key = jax.random.key(1)
  got = jax.jit(lambda x: samplers.sample(spec, eps_fn, sched, x, key))(x_T)
  want = jax.jit(lambda x: direct(eps_fn, sched, x, key))(x_T)
  np.testing.assert_array_equal(got, want)
  final, traj = jax.jit(lambda x: samplers.sample(spec, eps_fn, sched, x, key,
                                                  capture_every=5))(x_T)
  # Another program (a scan of scans): XLA may fuse it differently, so equal to float32 rounding.
  np.testing.assert_allclose(final, want, rtol=0, atol=1e-6)
  assert traj.shape == (-(-spec.num_steps // 5),) + x_T.shape


def test_dispatcher_refuses_a_schedule_of_another_length():
  sched = schedules.make_schedule("linear", 50)
  with pytest.raises(ValueError, match="T=100"):
    samplers.sample(samplers.SamplingSpec(num_timesteps=100), _nonlinear_eps_fn(sched), sched,
                    jnp.zeros((1, 2, 2, 1)), jax.random.key(0))


def test_spec_is_a_pytree_whose_leaves_are_eta_and_guidance():
  """A new eta reuses the compiled program; a new step count compiles a new one."""
  sched = schedules.make_schedule("linear", 20)
  eps_fn = _nonlinear_eps_fn(sched)
  x_T = jax.random.normal(jax.random.key(0), (2, 2, 2, 1))
  traces = []

  @jax.jit
  def run(spec, x):
    traces.append(spec.steps)
    return samplers.sample(spec, eps_fn, sched, x, jax.random.key(1))

  spec = samplers.SamplingSpec(sampler="ddim", steps=5, num_timesteps=20).validate()
  assert jax.tree.leaves(spec) == [0.0, 1.0]
  outs = [run(dataclasses.replace(spec, eta=eta), x_T) for eta in (0.0, 0.5, 1.0)]
  assert traces == [5]
  assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-3
  run(dataclasses.replace(spec, steps=4), x_T)
  assert traces == [5, 4]


def test_every_registered_sampler_has_a_valid_rule():
  for name, rule in samplers.SAMPLERS.items():
    spec = samplers.SamplingSpec(sampler=name, num_timesteps=10,
                                 distilled=rule.needs_distilled).validate()
    assert spec.rule is rule and callable(rule.run)
    if rule.timesteps is not None:
      seq = rule.timesteps(10, 4, "uniform")
      assert len(seq) == 4 and np.all(np.diff(seq) > 0) and 0 <= seq[0] and seq[-1] < 10


def test_ode_solvers_step_rule():
  # Default chain lengths, at most T - 1 steps, and the rule names the field.
  spec = samplers.SamplingSpec(sampler="dpmpp_2m", num_timesteps=1000).validate()
  assert spec.num_steps == 20
  assert samplers.SamplingSpec(sampler="heun", num_timesteps=1000).validate().num_steps == 10
  assert samplers.SamplingSpec(sampler="dpmpp_2m", num_timesteps=8).validate().num_steps == 7
  samplers.SamplingSpec(sampler="dpmpp_2m", steps=999, num_timesteps=1000).validate()
  assert samplers.SamplingSpec(sampler="dpmpp_2m_sde", num_timesteps=1000).validate(
      ).num_steps == 20
  with pytest.raises(samplers.SpecError, match="steps"):
    samplers.SamplingSpec(sampler="dpmpp_2m_sde", steps=1000, num_timesteps=1000).validate()
  with pytest.raises(samplers.SpecError, match="steps"):
    samplers.SamplingSpec(sampler="dpmpp_2m", steps=1000, num_timesteps=1000).validate()
  with pytest.raises(samplers.SpecError, match="steps"):
    samplers.SamplingSpec(sampler="heun", steps=1000, num_timesteps=1000).validate()
