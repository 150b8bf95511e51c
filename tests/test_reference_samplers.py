"""Samplers against independent references.

* diffusers' schedulers, step by step, given the same model function and the
  same noise, in float64 (@pytest.mark.torch): DDPMScheduler (ancestral),
  DDIMScheduler, DPMSolverMultistepScheduler (DPM-Solver++ 2M / 3M, and
  SDE-DPM-Solver++ 2M) and HeunDiscreteScheduler (EDM's Heun).
* The Gaussian oracle: for data x0 ~ N(MU, SIGMA^2) per dimension the optimal
  eps is known in closed form and so is the probability-flow ODE's solution. In
  EDM's variables y = x / sqrt(alpha_bar), s = sqrt((1 - alpha_bar) / alpha_bar):
  y = x0 + s eps, the denoiser is D(y; s) = MU + SIGMA^2 (y - MU) / (SIGMA^2 + s^2),
  and dy/ds = (y - D) / s gives y(s') - MU = (y(s) - MU) sqrt(SIGMA^2 + s'^2) /
  sqrt(SIGMA^2 + s^2). The solvers' errors against it fall at their order; the
  SDE solver's output moments against the exact ones fall likewise.

float64 runs inside `jax.enable_x64(True)` with a float64 schedule (the
project's float32 tables would put a float32 floor under every comparison).
"""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm import samplers
from ddpm import schedules

MU, SIGMA = 0.3, 0.5   # the data distribution N(MU, SIGMA^2 I)
T = 1000
BETAS = schedules.linear_betas(T)
AB = schedules.tables_from_betas(BETAS)["alpha_bars"]       # float64 [T]
S_EDM = np.sqrt((1.0 - AB) / AB)                            # EDM sigma of each t
# The single-step comparisons (ancestral, DDIM) walk every step of the chain in
# Python on the reference side: a T = 100 schedule keeps them fast.
T_SHORT = 100
BETAS_SHORT = schedules.linear_betas(T_SHORT, 1e-3, 0.2)


def _schedule64(betas: np.ndarray = BETAS) -> schedules.Schedule:
  """The linear schedule with float64 tables (used under enable_x64)."""
  return schedules.Schedule(num_timesteps=len(betas), **schedules.tables_from_betas(betas))


def _alpha_bars(betas: np.ndarray) -> np.ndarray:
  return schedules.tables_from_betas(betas)["alpha_bars"]


def _eps_np(x: np.ndarray, t: int, betas: np.ndarray = BETAS) -> np.ndarray:
  """Float64 NumPy model: the Gaussian oracle's eps plus a nonlinear term."""
  a = _alpha_bars(betas)[t]
  eps = np.sqrt(1 - a) * (x - np.sqrt(a) * MU) / (a * SIGMA ** 2 + 1 - a)
  return eps + 0.1 * np.tanh(3 * x) * t / len(betas)


def _eps_fn(nonlinear: bool = True, betas: np.ndarray = BETAS):
  """The same model as a JAX eps_fn(x_t, t [B]); without the nonlinear term
  it is the Gaussian oracle's exact eps."""
  ab = _alpha_bars(betas)

  def eps_fn(x, t):
    a = jnp.asarray(ab, x.dtype)[t].reshape(-1, 1, 1, 1)
    eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * SIGMA ** 2 + 1 - a)
    if nonlinear:
      eps = eps + 0.1 * jnp.tanh(3 * x) * (t.astype(x.dtype).reshape(-1, 1, 1, 1) / len(ab))
    return eps
  return eps_fn


def _x_T(shape=(2, 3, 3, 1), seed=0) -> np.ndarray:
  return np.asarray(jax.random.normal(jax.random.key(seed), shape, jnp.float64))


@contextlib.contextmanager
def _x64():
  with jax.enable_x64(True):
    yield


def _torch():
  pytest.importorskip("diffusers")
  return pytest.importorskip("torch")


# --- diffusers, step by step -----------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("variance_type, variance", [("fixed_small", "beta_tilde"),
                                                     ("fixed_large", "beta")])
@pytest.mark.parametrize("clip", [False, True])
def test_ancestral_steps_equal_ddpm_scheduler(monkeypatch, variance_type, variance, clip):
  """Every step (T = 100), from our x_t, equals DDPMScheduler.step (tol 1e-10).

  Our step i draws z = normal(fold_in(key, i)) (the module's documented noise);
  diffusers draws its noise with `randn_tensor`, which is replaced by one that
  returns that same z.
  """
  torch = _torch()
  from diffusers import DDPMScheduler
  from diffusers.schedulers import scheduling_ddpm
  key = jax.random.key(1)
  with _x64():
    x_T = _x_T()
    run = jax.jit(lambda x: samplers.ancestral_sample(
        _eps_fn(betas=BETAS_SHORT), _schedule64(BETAS_SHORT), x, key, variance=variance,
        clip_x0=clip, capture_every=1))
    _, traj = run(x_T)
    noise = np.asarray(jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(key, i), x_T.shape, jnp.float64))(jnp.arange(T_SHORT)))
  traj = np.asarray(traj)
  assert traj.dtype == np.float64 and np.std(traj[-1]) > 0.1
  ref = DDPMScheduler(num_train_timesteps=T_SHORT, trained_betas=BETAS_SHORT,
                      variance_type=variance_type, clip_sample=clip)
  ref.alphas_cumprod = torch.from_numpy(_alpha_bars(BETAS_SHORT))   # float64 (its own: float32)
  current = {}
  monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **k: current["z"])
  x = x_T
  clipped = 0
  for i in range(T_SHORT):
    t = T_SHORT - 1 - i
    current["z"] = torch.from_numpy(noise[i].copy())
    out = ref.step(torch.from_numpy(_eps_np(x, t, BETAS_SHORT)), t, torch.from_numpy(x))
    clipped += bool(np.any(np.abs(out.pred_original_sample.numpy()) >= 1.0))
    np.testing.assert_allclose(traj[i], out.prev_sample.numpy(), rtol=0, atol=1e-10,
                               err_msg=f"step {i} (t = {t})")
    x = traj[i].copy()
  assert not clip or clipped > 5   # the clipping branch is exercised


@pytest.mark.torch
@pytest.mark.parametrize("num_steps, eta, clip", [
    (10, 0.0, False), (10, 1.0, False), (10, 0.0, True), (10, 1.0, True), (T_SHORT, 1.0, True)])
def test_ddim_steps_equal_ddim_scheduler(num_steps, eta, clip):
  """Every DDIM step (T = 100), from our x_t, equals DDIMScheduler.step (tol 1e-10).

  DDIMScheduler.step goes from t to t - T // num_inference_steps; our uniform
  spacing with S = 10 visits 0, 11, ..., 99 (stride 11 = 100 // 9), so the
  reference is told num_inference_steps = 9 and stepped at our timesteps; the
  step from t = 0 goes to alpha_bar = 1 in both (set_alpha_to_one). Clipping is
  diffusers' clip_sample with use_clipped_model_output (eps recomputed from the
  clipped x0, as ours). The eta > 0 noise is passed as variance_noise.
  """
  torch = _torch()
  from diffusers import DDIMScheduler
  key = jax.random.key(2)
  seq = samplers.ddim_timesteps(T_SHORT, num_steps)
  stride = int(seq[1] - seq[0])
  with _x64():
    x_T = _x_T()
    _, traj = jax.jit(lambda x: samplers.ddim_sample(
        _eps_fn(betas=BETAS_SHORT), _schedule64(BETAS_SHORT), x, key, num_steps=num_steps,
        eta=eta, clip_x0=clip, capture_every=1))(x_T)
    noise = np.asarray(jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(key, i), x_T.shape, jnp.float64))(jnp.arange(num_steps)))
  traj = np.asarray(traj)
  ref = DDIMScheduler(num_train_timesteps=T_SHORT, trained_betas=BETAS_SHORT, clip_sample=clip,
                      set_alpha_to_one=True)
  ref.alphas_cumprod = torch.from_numpy(_alpha_bars(BETAS_SHORT))
  ref.set_timesteps(T_SHORT // stride)
  assert T_SHORT // ref.num_inference_steps == stride
  x = x_T
  for i, t in enumerate(seq[::-1]):
    out = ref.step(torch.from_numpy(_eps_np(x, int(t), BETAS_SHORT)), int(t), torch.from_numpy(x),
                   eta=eta,
                   use_clipped_model_output=clip,
                   variance_noise=torch.from_numpy(noise[i]) if eta > 0 else None)
    np.testing.assert_allclose(traj[i], out.prev_sample.numpy(), rtol=0, atol=1e-10,
                               err_msg=f"step {i} (t = {t})")
    x = traj[i].copy()


def _dpm_reference(torch, ts, order, spacing, final_sigma, solver_type, clip,
                   algorithm_type="dpmsolver++"):
  """diffusers' DPMSolverMultistepScheduler on our timesteps (asserted equal to its
  own) with our float64 sigmas (its float32 ones checked against them, rtol 1e-4,
  except with "karras", where it keeps unrounded sigmas)."""
  from diffusers import DPMSolverMultistepScheduler
  ref = DPMSolverMultistepScheduler(
      num_train_timesteps=T, trained_betas=BETAS, solver_order=order,
      algorithm_type=algorithm_type,
      timestep_spacing=spacing if spacing != "karras" else "linspace",
      use_karras_sigmas=spacing == "karras", final_sigmas_type=final_sigma,
      solver_type=solver_type, thresholding=clip, sample_max_value=1.0)
  ref.set_timesteps(len(ts))
  np.testing.assert_array_equal(ref.timesteps.numpy(), ts)
  sigmas = np.append(S_EDM[ts], 0.0 if final_sigma == "zero" else S_EDM[0])
  if spacing != "karras":
    np.testing.assert_allclose(ref.sigmas.numpy(), sigmas, rtol=1e-4)
  ref.sigmas = torch.from_numpy(sigmas)
  return ref


@pytest.mark.torch
@pytest.mark.parametrize("num_steps, order, spacing, final_sigma, solver_type, clip", [
    (10, 2, "linspace", "zero", "midpoint", False),      # diffusers' defaults, N < 15
    (20, 2, "linspace", "zero", "midpoint", False),      # diffusers' defaults
    (20, 2, "trailing", "sigma_min", "midpoint", False),
    (16, 2, "karras", "zero", "heun", False),
    (12, 3, "leading", "zero", "midpoint", False),       # 3M, lowered at the end
    (20, 3, "linspace", "zero", "midpoint", False),
    (20, 2, "linspace", "zero", "midpoint", True),       # thresholding at 1 = clipping
])
def test_dpm_solver_equals_dpm_solver_multistep_scheduler(num_steps, order, spacing, final_sigma,
                                                          solver_type, clip):
  """The whole DPM-Solver++ trajectory equals DPMSolverMultistepScheduler's.

  Fed our x_i at every step (so each step is compared alone), diffusers keeps
  its own history of x0 predictions. Same timesteps (asserted: our spacings are
  its set_timesteps'), same sigmas: its float32 sigmas (checked against ours,
  rtol 1e-4) are replaced by our float64 ones; with "karras" it keeps the Karras
  sigma of a rounded timestep where we use that timestep's own sigma, so there
  only the timesteps are checked before the swap. Tolerance 2e-6 absolute: its
  `step` casts the sample to float32 ("upcast to avoid precision issues"), so
  sigma_u / sigma_s x carries a float32 rounding (observed <= 1e-6); on these
  trajectories first-order steps, or the "heun" second-order term in place of
  "midpoint", move x by > 1e-3 (measured).
  """
  torch = _torch()
  with _x64():
    sched = _schedule64()
    ts = samplers.solver_timesteps(sched, num_steps, spacing)
    x_T = _x_T()
    _, traj = jax.jit(lambda x: samplers.dpm_solver_sample(
        _eps_fn(), sched, x, None, num_steps=num_steps, order=order, spacing=spacing,
        final_sigma=final_sigma, solver_type=solver_type, clip_x0=clip, capture_every=1))(x_T)
  traj = np.asarray(traj)
  ref = _dpm_reference(torch, ts, order, spacing, final_sigma, solver_type, clip)
  x = x_T
  for i, t in enumerate(ts):
    out = ref.step(torch.from_numpy(_eps_np(x, int(t))), int(t), torch.from_numpy(x))
    np.testing.assert_allclose(traj[i], out.prev_sample.numpy(), rtol=0, atol=2e-6,
                               err_msg=f"step {i} (t = {t})")
    x = traj[i].copy()
  assert np.std(traj[-1]) > 0.1


@pytest.mark.torch
@pytest.mark.parametrize("num_steps, spacing, final_sigma, solver_type, clip", [
    (10, "linspace", "zero", "midpoint", False),         # N < 15: lowered last steps
    (20, "linspace", "zero", "midpoint", False),         # the registry's dpmpp_2m_sde
    (20, "linspace", "zero", "midpoint", True),
    (16, "karras", "zero", "heun", False),
    (20, "trailing", "sigma_min", "midpoint", False),
])
def test_sde_dpm_solver_equals_sde_dpmsolver_multistep_scheduler(num_steps, spacing, final_sigma,
                                                                 solver_type, clip):
  """SDE-DPM-Solver++(2M) step by step equals DPMSolverMultistepScheduler with
  algorithm_type="sde-dpmsolver++", given our noise of each step as its
  variance_noise (it casts that to float32, a rounding of < 1e-7 against our
  float64 draw). Same protocol and tolerance as the ODE test above; the
  noise term moves x by O(0.1 .. 1) per step, so a wrong noise scale or step
  index cannot pass.
  """
  torch = _torch()
  key = jax.random.key(7)
  with _x64():
    sched = _schedule64()
    ts = samplers.solver_timesteps(sched, num_steps, spacing)
    x_T = _x_T()
    noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, i), x_T.shape,
                                                   jnp.float64)) for i in range(num_steps)])
    _, traj = jax.jit(lambda x: samplers.dpm_solver_sample(
        _eps_fn(), sched, x, key, num_steps=num_steps, order=2, spacing=spacing,
        final_sigma=final_sigma, solver_type=solver_type, clip_x0=clip, sde=True,
        capture_every=1))(x_T)
  traj = np.asarray(traj)
  ref = _dpm_reference(torch, ts, 2, spacing, final_sigma, solver_type, clip,
                       algorithm_type="sde-dpmsolver++")
  x = x_T
  for i, t in enumerate(ts):
    z = noise[i].astype(np.float32).astype(np.float64)
    out = ref.step(torch.from_numpy(_eps_np(x, int(t))), int(t), torch.from_numpy(x),
                   variance_noise=torch.from_numpy(z))
    np.testing.assert_allclose(traj[i], out.prev_sample.numpy(), rtol=0, atol=2e-6,
                               err_msg=f"step {i} (t = {t})")
    x = traj[i].copy()
  with _x64():   # the same chain without noise ends elsewhere: the noise is used
    ode = np.asarray(jax.jit(lambda x: samplers.dpm_solver_sample(
        _eps_fn(), sched, x, key, num_steps=num_steps, order=2, spacing=spacing,
        final_sigma=final_sigma, solver_type=solver_type, clip_x0=clip))(x_T))
    moved = np.abs(ode - traj[-1]).max()
  assert moved > 0.1 and np.std(traj[-1]) > 0.1


@pytest.mark.torch
@pytest.mark.parametrize("num_steps, spacing, clip", [
    (10, "karras", False), (18, "karras", True), (12, "linspace", False)])
def test_heun_equals_heun_discrete_scheduler(num_steps, spacing, clip):
  """The whole Heun trajectory equals HeunDiscreteScheduler's (tol 1e-10).

  diffusers is given our integer timesteps as custom `timesteps` (its own
  "linspace" ones are fractional; with use_karras_sigmas its timesteps, rounded,
  are nearest to ours: asserted), its float32 sigmas are replaced by the same values in
  float64, and it starts from y_T = x_T sqrt(1 + s_0^2) (its init_noise_sigma is
  s_0, the large-s approximation). Its sample is y; ours is x = y / sqrt(1 + s^2),
  compared after each full step (the corrector call, and the final Euler call).
  """
  torch = _torch()
  from diffusers import HeunDiscreteScheduler
  with _x64():
    sched = _schedule64()
    ts = samplers.solver_timesteps(sched, num_steps,
                                   "karras" if spacing == "karras" else "heun_linspace")
    x_T = _x_T()
    _, traj = jax.jit(lambda x: samplers.heun_sample(
        _eps_fn(), sched, x, None, num_steps=num_steps, spacing=spacing, clip_x0=clip,
        capture_every=1))(x_T)
  traj = np.asarray(traj)
  if spacing == "karras":
    # Its fractional timesteps come from its float32 tables: ours are the
    # nearest integers up to that rounding (a .5 tie may round either way).
    karras = HeunDiscreteScheduler(num_train_timesteps=T, trained_betas=BETAS,
                                   use_karras_sigmas=True)
    karras.set_timesteps(num_steps)
    frac = karras.timesteps.numpy()
    np.testing.assert_array_less(np.abs(np.append(frac[:1], frac[1::2]) - ts), 0.5 + 1e-3)
  else:
    np.testing.assert_array_equal(ts, np.round(np.linspace(0, T - 1, num_steps))[::-1])
  ref = HeunDiscreteScheduler(num_train_timesteps=T, trained_betas=BETAS, clip_sample=clip)
  ref.set_timesteps(timesteps=ts.tolist())
  s = np.append(S_EDM[ts], 0.0)
  layout = np.concatenate([s[:1], np.repeat(s[1:-1], 2), s[-1:]])
  np.testing.assert_allclose(ref.sigmas.numpy(), layout, rtol=1e-4)
  ref.sigmas = torch.from_numpy(layout)
  y = torch.from_numpy(x_T * np.sqrt(1.0 + s[0] ** 2))
  full = []
  for k, t in enumerate(ref.timesteps):
    x_in = ref.scale_model_input(y, t).numpy()
    y = ref.step(torch.from_numpy(_eps_np(x_in, int(t))), t, y).prev_sample
    if k % 2 == 1 or k == len(ref.timesteps) - 1:
      full.append(y.numpy())
  assert len(full) == num_steps
  x_ref = np.stack(full) / np.sqrt(1.0 + s[1:] ** 2).reshape(-1, 1, 1, 1, 1)
  np.testing.assert_allclose(traj, x_ref, rtol=0, atol=1e-10)
  assert np.std(traj[-1]) > 0.1


# --- the Gaussian oracle: convergence order ---------------------------------------

def _y_exact(y_T: np.ndarray, s_to: float) -> np.ndarray:
  """The probability-flow ODE from s_{T-1} to s_to, in closed form."""
  return MU + (y_T - MU) * np.sqrt(SIGMA ** 2 + s_to ** 2) / np.sqrt(SIGMA ** 2 + S_EDM[-1] ** 2)


def _denoise(y: np.ndarray, s: float) -> np.ndarray:
  return MU + SIGMA ** 2 * (y - MU) / (SIGMA ** 2 + s ** 2)


def _slope(num_steps, errors) -> float:
  """The fitted order p of error ~ C N^-p."""
  return -np.polyfit(np.log(num_steps), np.log(errors), 1)[0]


@pytest.mark.parametrize("name, num_steps, lo, hi", [
    ("dpm_solver_2m", (20, 28, 40), 1.7, 2.6),
    ("heun", (10, 20, 40), 1.8, 2.6),
    ("ddim", (10, 20, 40), 0.85, 1.15),
])
def test_gaussian_oracle_convergence_order(name, num_steps, lo, hi):
  """Final-sample error against the exact ODE solution falls as N^-p.

  Each sampler ends with a jump to x0_hat = D(y; s_last) from its last level
  (t = 0 for these), so the reference is D(y_exact(s_last); s_last): the
  jump, a contraction, keeps the ODE part's order. Measured slopes (float64,
  T = 1000 linear): DPM-Solver++ 2M on the Karras spacing 2.16 (N = 20 .. 40;
  N = 10 .. 14 are pre-asymptotic), Heun (Karras, 2N - 1 NFE) 2.26, DDIM
  (uniform) 0.99. The bounds are [lo, hi]. DPM-Solver++ on diffusers' default
  "linspace" spacing is not tested here: its last level t_{N-1} moves with N
  and its error is not monotone in N for N <= 40 (see the report).
  """
  with _x64():
    sched = _schedule64()
    x_T = _x_T((64, 1, 1, 1), seed=3)
    y_T = x_T / np.sqrt(AB[-1])
    target = _denoise(_y_exact(y_T, S_EDM[0]), S_EDM[0])
    errors = []
    for n in num_steps:
      if name == "dpm_solver_2m":
        fn = lambda x, n=n: samplers.dpm_solver_sample(_eps_fn(False), sched, x, None,
                                                       num_steps=n, spacing="karras")
      elif name == "heun":
        fn = lambda x, n=n: samplers.heun_sample(_eps_fn(False), sched, x, None, num_steps=n)
      else:
        fn = lambda x, n=n: samplers.ddim_sample(_eps_fn(False), sched, x,
                                                jax.random.key(0), num_steps=n)
      errors.append(np.abs(np.asarray(jax.jit(fn)(x_T)) - target).max())
  assert np.all(np.diff(errors) < 0), errors
  assert lo <= _slope(num_steps, errors) <= hi, (errors, _slope(num_steps, errors))


def _sde_dpm_solver_moments(num_steps: int) -> tuple[float, float]:
  """Exact mean and variance of SDE-DPM-Solver++(2M)'s output on the Gaussian
  oracle ("karras" timesteps, midpoint, final step to x0_hat), from a float64
  NumPy transcription of the update (Lu et al. 2022b's SDE-DPM-Solver++(2M)),
  independent of ddpm.samplers' coefficients. With the exact eps
  every x is affine in (x_T, z_0, ..., z_{N-1}): the state is that weight
  vector, with x_T drawn from the exact marginal at t_0."""
  ts = samplers.solver_timesteps(_schedule64(), num_steps, "karras")
  a = AB[ts]
  al, si = np.sqrt(a), np.sqrt(1.0 - a)
  lam = np.log(al / si)
  w = np.zeros(num_steps + 2)   # weights over [1, x_T, z_0 .. z_{N-1}]
  w[0], w[1] = al[0] * MU, np.sqrt(a[0] * SIGMA ** 2 + 1.0 - a[0])
  m_prev = None
  for i in range(num_steps):
    k = (1.0 - a[i]) / (a[i] * SIGMA ** 2 + 1.0 - a[i])   # x0_hat = ((1 - k) x + k al MU) / al
    m0 = w * (1.0 - k) / al[i]
    m0[0] += k * MU
    if i == num_steps - 1:                                 # the last step: x = x0_hat
      w = m0
      break
    h = lam[i + 1] - lam[i]
    a2 = al[i + 1] * (1.0 - np.exp(-2.0 * h))
    new = si[i + 1] / si[i] * np.exp(-h) * w + a2 * m0
    if i > 0:                                              # 2M: D1 = (m0 - m_prev) / r0
      new += 0.5 * a2 * (m0 - m_prev) * h / (lam[i] - lam[i - 1])
    new[2 + i] += si[i + 1] * np.sqrt(1.0 - np.exp(-2.0 * h))
    m_prev, w = m0, new
  return w[0], float(np.sum(w[1:] ** 2))


def test_sde_dpm_solver_on_the_gaussian_oracle():
  """SDE-DPM-Solver++(2M) samples the data distribution, with a weak error
  that falls at order ~2, and our chain draws from that distribution.

  The exact reverse SDE ends at x_0 ~ N(alpha_0 MU, alpha_0^2 (SIGMA^2 +
  s_0^2)) and the final jump to x0_hat = D gives mean MU, variance
  SIGMA^4 / (SIGMA^2 + s_0^2). From the exact moments of the discrete chain
  (`_sde_dpm_solver_moments`): the mean is exact (1e-12) and the variance
  error falls monotonically for N = 20 .. 56 at a fitted order of 1.94
  (measured; bounds [1.6, 2.4]). Then 200,000 float64 draws of
  `dpm_solver_sample(sde=True)` at N = 20 have that chain's mean and variance
  within 5 standard errors, where the variance differs from the exact one by
  0.056 (70 standard errors): the test tells a right chain from a wrong one.
  """
  num_steps = (20, 28, 40, 56)
  target = SIGMA ** 4 / (SIGMA ** 2 + S_EDM[0] ** 2)
  moments = [_sde_dpm_solver_moments(n) for n in num_steps]
  assert all(abs(m - MU) < 1e-12 for m, _ in moments)
  errors = [abs(v - target) for _, v in moments]
  assert np.all(np.diff(errors) < 0), errors
  assert 1.6 <= _slope(num_steps, errors) <= 2.4, (errors, _slope(num_steps, errors))
  n = 200_000
  mean, var = moments[0]
  with _x64():
    sched = _schedule64()
    t0 = samplers.solver_timesteps(sched, 20, "karras")[0]
    x_T = (np.sqrt(AB[t0]) * MU + np.sqrt(AB[t0] * SIGMA ** 2 + 1.0 - AB[t0])
           * np.asarray(jax.random.normal(jax.random.key(5), (n, 1, 1, 1), jnp.float64)))
    x0 = np.asarray(jax.jit(lambda x: samplers.dpm_solver_sample(
        _eps_fn(False), sched, x, jax.random.key(6), num_steps=20, spacing="karras",
        sde=True))(x_T))
  se_mean, se_var = np.sqrt(var / n), var * np.sqrt(2.0 / n)
  assert abs(x0.mean() - mean) < 5 * se_mean, (x0.mean(), mean)
  assert abs(x0.var() - var) < 5 * se_var, (x0.var(), var)
  assert abs(var - target) > 50 * se_var


# --- interface ----------------------------------------------------------------------

@pytest.mark.parametrize("fn, kwargs", [
    (samplers.dpm_solver_sample, dict(num_steps=20)),
    (samplers.dpm_solver_sample, dict(num_steps=20, order=3, spacing="karras")),
    (samplers.heun_sample, dict(num_steps=18)),
])
def test_solvers_float32(fn, kwargs):
  """float32 with the project's (float32) schedule: one jit, the trajectory's
  last entry is x_0, the key is ignored, the result is the float64 run's to
  1e-4 (no precision lost in the coefficients or the m0 - m1 differences),
  and samples have the data's moments (tol 0.03 on the mean, 0.04 on the std:
  20 steps leave a discretisation bias of ~0.025 in the std)."""
  sched = schedules.make_schedule("linear", T)
  x_T = jax.random.normal(jax.random.key(4), (4000, 2, 2, 1))
  run = jax.jit(lambda x, k: fn(_eps_fn(False), sched, x, k, capture_every=3, **kwargs))
  x0, traj = run(x_T, jax.random.key(0))
  x0_other_key, _ = run(x_T, jax.random.key(1))
  assert x0.dtype == jnp.float32 and traj.shape == (-(-kwargs["num_steps"] // 3),) + x_T.shape
  np.testing.assert_array_equal(traj[-1], x0)
  np.testing.assert_array_equal(x0, x0_other_key)
  with _x64():
    x0_64 = jax.jit(lambda x: fn(_eps_fn(False), _schedule64(), x, None, **kwargs))(
        np.asarray(x_T, np.float64))
  np.testing.assert_allclose(x0, x0_64, rtol=0, atol=1e-4)
  assert abs(float(jnp.mean(x0)) - MU) < 0.03 and abs(float(jnp.std(x0)) - SIGMA) < 0.04


def test_solver_timesteps_and_errors():
  sched = schedules.make_schedule("linear", T)
  np.testing.assert_array_equal(samplers.solver_timesteps(sched, 10, "linspace"),
                                [999, 899, 799, 699, 599, 500, 400, 300, 200, 100])
  np.testing.assert_array_equal(samplers.solver_timesteps(sched, 10, "trailing"),
                                [999, 899, 799, 699, 599, 499, 399, 299, 199, 99])
  karras = samplers.solver_timesteps(sched, 20, "karras")
  assert karras[0] == T - 1 and karras[-1] == 0 and np.all(np.diff(karras) < 0)
  cosine = schedules.make_schedule("cosine", T)
  lowered = samplers.solver_timesteps(cosine, 20, "karras", sigma_max=80.0)
  assert lowered[0] < T - 1 and lowered[-1] == 0
  np.testing.assert_allclose(samplers.karras_sigmas(0.002, 80.0, 3, 7.0)[[0, 2]], [80.0, 0.002])
  with pytest.raises(ValueError, match="cannot fit 200 distinct"):
    samplers.solver_timesteps(sched, 200, "karras")
  with pytest.raises(ValueError, match="unknown spacing"):
    samplers.dpm_solver_sample(_eps_fn(), sched, jnp.zeros((1, 1, 1, 1)), None, spacing="uniform")
  with pytest.raises(ValueError, match="order must be"):
    samplers.dpm_solver_sample(_eps_fn(), sched, jnp.zeros((1, 1, 1, 1)), None, order=4)
  with pytest.raises(ValueError, match="sigma_min"):
    samplers.dpm_solver_sample(_eps_fn(), sched, jnp.zeros((1, 1, 1, 1)), None,
                               spacing="karras", final_sigma="sigma_min")
  with pytest.raises(ValueError, match="concrete schedule"):
    jax.jit(lambda s: samplers.heun_sample(_eps_fn(), s, jnp.zeros((1, 1, 1, 1)), None))(
        schedules.to_device(sched))
