"""The one error type for a bad configuration value."""
from __future__ import annotations

from typing import Any, Iterable


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
