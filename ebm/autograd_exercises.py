"""The course's four PyTorch-autograd exercises, side by side with JAX.

Each exercise is a pair of small functions: `*_torch()` (PyTorch's
tape-based autograd: tensors with requires_grad, `.backward()`, `.grad`) and
`*_jax()` (JAX's functional transformations: `jax.grad` of a Python function,
`argnums` to choose the differentiated arguments, `jax.lax.stop_gradient` in
place of `.detach()`). PyTorch is imported lazily, so this module works
without the `[torch]` extra; `torch_available()` tells whether it is there.

    python -m ebm.autograd_exercises

prints the two columns side by side (the torch column says "not installed"
when PyTorch is missing).
"""
from __future__ import annotations

import importlib.util
from typing import Callable

import jax
import jax.numpy as jnp


def torch_available() -> bool:
  """Whether PyTorch can be imported."""
  return importlib.util.find_spec("torch") is not None


# 1. Basic gradient -----------------------------------------------------------


def basic_gradient_torch() -> float:
  """dy/dx of y = x² + 3x at x = 2, with PyTorch.

  Course question: what is x.grad after y.backward()? Answer: 2x + 3 = 7.
  PyTorch records the operations on x (requires_grad=True) on a tape, and
  y.backward() walks it back and stores dy/dx in the leaf's `.grad`.
  """
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.tensor(2.0, requires_grad=True)
  y = x ** 2 + 3 * x
  y.backward()
  return float(x.grad)


def basic_gradient_jax() -> float:
  """dy/dx of y = x² + 3x at x = 2, with JAX: 7.

  JAX has no tape and no `.grad` attribute: `jax.grad(f)` is a new function
  that returns df/dx at a point. The function, not the array, is
  differentiated, and nothing is stored on x.
  """
  f = lambda x: x ** 2 + 3 * x
  return float(jax.grad(f)(2.0))


# 2. Gradients with respect to weights ---------------------------------------


def weight_gradients_torch() -> tuple[list[float], float]:
  """∂y/∂w and ∂y/∂x of y = w₀x² + w₁x at w = [1, 3], x = 2, with PyTorch.

  Course question: what are w.grad and x.grad? Answer: ∂y/∂w = [x², x] =
  [4, 2] and ∂y/∂x = 2w₀x + w₁ = 7. One backward() fills `.grad` of every
  leaf that requires grad.
  """
  import torch  # pylint: disable=import-outside-toplevel
  w = torch.tensor([1.0, 3.0], requires_grad=True)
  x = torch.tensor(2.0, requires_grad=True)
  y = w[0] * x ** 2 + w[1] * x
  y.backward()
  return [float(g) for g in w.grad], float(x.grad)


def weight_gradients_jax() -> tuple[list[float], float]:
  """∂y/∂w = [4, 2] and ∂y/∂x = 7 with JAX.

  Which inputs are differentiated is chosen by `argnums` (here both: (0, 1))
  instead of by a requires_grad flag on the arrays; the gradients come back
  as a tuple matching the arguments.
  """
  def y(w, x):
    return w[0] * x ** 2 + w[1] * x
  dw, dx = jax.grad(y, argnums=(0, 1))(jnp.array([1.0, 3.0]), 2.0)
  return [float(g) for g in dw], float(dx)


# 3. Breaking the graph with detach -------------------------------------------


def detach_torch() -> tuple[float | None, float]:
  """y = x², z = y.detach() at x = 3: what is x.grad? With PyTorch.

  Course question: does the gradient reach x through a detached tensor?
  Answer: no. `z = y.detach()` is a new tensor cut from the graph, so z has
  no grad_fn; z.backward() raises ("element 0 of tensors does not require
  grad") and x.grad stays None (absent). The fix is to backpropagate
  through y itself (no detach): dy/dx = 2x = 6.

  Returns:
    (x.grad after trying z.backward() (None), dy/dx without detach (6)).
  """
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.tensor(3.0, requires_grad=True)
  y = x ** 2
  z = y.detach()
  try:
    z.backward()
  except RuntimeError:
    pass
  detached_grad = None if x.grad is None else float(x.grad)
  x = torch.tensor(3.0, requires_grad=True)
  y = x ** 2
  y.backward()
  return detached_grad, float(x.grad)


def detach_jax() -> tuple[float, float]:
  """The same with `jax.lax.stop_gradient`: 0 through it, 6 without it.

  stop_gradient is the identity in the forward pass and has zero derivative,
  so jax.grad of the stopped function is a well-defined 0 rather than an
  error or a missing attribute.

  Returns:
    (d stop_gradient(x²)/dx = 0, d x²/dx = 6), both at x = 3.
  """
  stopped = jax.grad(lambda x: jax.lax.stop_gradient(x ** 2))(3.0)
  fixed = jax.grad(lambda x: x ** 2)(3.0)
  return float(stopped), float(fixed)


# 4. Gradient accumulation ----------------------------------------------------


def accumulation_torch() -> tuple[float, float]:
  """Two backward() calls without zeroing: y₁ = x², then y₂ = 3x, at x = 1.

  Course question: what does x.grad hold after each call? Answer: 2, then
  2 + 3 = 5: `.grad` accumulates (adds) until it is zeroed, which is why
  training loops call optimizer.zero_grad() every step (and how gradient
  accumulation over micro-batches works).

  Returns:
    (x.grad after the first backward (2), after the second (5)).
  """
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.tensor(1.0, requires_grad=True)
  (x ** 2).backward()
  first = float(x.grad)
  (3 * x).backward()
  return first, float(x.grad)


def accumulation_jax() -> tuple[float, float, float]:
  """The same two gradients in JAX: 2 and 3, and 5 only when summed.

  jax.grad returns a fresh value each call and stores nothing, so there is
  nothing to zero and nothing accumulates; accumulation is written out
  (here g₁ + g₂; in training, a sum or `jax.tree.map(jnp.add, ...)` over
  micro-batch gradients).

  Returns:
    (d x²/dx = 2, d 3x/dx = 3, their explicit sum 5), at x = 1.
  """
  g1 = jax.grad(lambda x: x ** 2)(1.0)
  g2 = jax.grad(lambda x: 3 * x)(1.0)
  return float(g1), float(g2), float(g1 + g2)


EXERCISES: tuple[tuple[str, Callable[[], object], Callable[[], object]], ...] = (
    ("1. basic: dy/dx, y = x^2 + 3x at x = 2", basic_gradient_torch, basic_gradient_jax),
    ("2. weights: (dy/dw, dy/dx), y = w0 x^2 + w1 x", weight_gradients_torch,
     weight_gradients_jax),
    ("3. detach: (grad through detach, fix)", detach_torch, detach_jax),
    ("4. accumulation: two backward passes", accumulation_torch, accumulation_jax),
)


def _fmt(value) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if value is None:
    return "None"
  if isinstance(value, (list, tuple)):
    inner = ", ".join(_fmt(v) for v in value)
    return f"[{inner}]" if isinstance(value, list) else f"({inner})"
  return str(value)


def side_by_side() -> str:
  """The table printed by `python -m ebm.autograd_exercises`."""
  has_torch = torch_available()
  rows = [("exercise", "PyTorch", "JAX")]
  for title, torch_fn, jax_fn in EXERCISES:
    torch_col = _fmt(torch_fn()) if has_torch else "not installed"
    rows.append((title, torch_col, _fmt(jax_fn())))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  lines += ["",
            "3: PyTorch's x.grad is None (z has no grad_fn); JAX gives 0 through "
            "stop_gradient.",
            "4: PyTorch's .grad accumulates (2, then 5); JAX returns g1, g2 and "
            "their explicit sum."]
  return "\n".join(lines)


if __name__ == "__main__":
  print(side_by_side())
