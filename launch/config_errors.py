"""The one error type for a bad configuration value, and the one set of checks that raise it."""
from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np


class ConfigError(ValueError):
  """A config value is unknown or out of range; the message names the key."""

  def __init__(self, key: str, value: Any, *, allowed: Iterable[Any] | str | None = None,
               reason: str = ""):
    msg = f"config.{key}={value!r} is invalid"
    if reason:
      msg += f": {reason}"
    if allowed is not None:
      if not isinstance(allowed, str):
        allowed = ", ".join(repr(a) for a in allowed)
      msg += f" (allowed: {allowed})"
    super().__init__(msg)
    self.key = key
    self.value = value


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(key, value, allowed=allowed)
  return value


def check_range(key: str, value: Any, lo=None, hi=None, *, lo_open=False, hi_open=False):
  """Checks lo <= value <= hi (or strict with *_open); None = unbounded."""
  bad = ((lo is not None and (value <= lo if lo_open else value < lo)) or
         (hi is not None and (value >= hi if hi_open else value > hi)))
  if bad:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    raise ConfigError(key, value, allowed=f"a value in {rng}")
  return value


def check_int(key: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
  """An integer (not a bool) in [lo, hi] (None = unbounded)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ConfigError(key, value, reason="must be an integer")
  return check_range(key, int(value), lo, hi)


def check_ints(key: str, values: Any, lo: int = 1, allow_empty: bool = False
               ) -> tuple[int, ...]:
  """A sequence of integers >= lo (non-empty unless allow_empty)."""
  try:
    values = tuple(values)
  except TypeError:
    raise ConfigError(key, values, reason="must be a sequence of integers") from None
  if not values and not allow_empty:
    raise ConfigError(key, values, reason="must not be empty")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
      raise ConfigError(key, values, reason=f"must be integers >= {lo}")
  return values


def check_number(key: str, value: Any, lo=None, hi=None, *, lo_open: bool = False,
                 hi_open: bool = False):
  """A real number (not a bool) in range."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigError(key, value, allowed="a number")
  return check_range(key, value, lo, hi, lo_open=lo_open, hi_open=hi_open)


def check_bool(key: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ConfigError(key, value, allowed=(True, False))
  return bool(value)
