"""Where log lines go: a quiet terminal and the full log in `WORKDIR/log.txt`.

Libraries log a lot at INFO (Orbax alone writes ~70 lines for a 2-step smoke
run). By default the terminal shows the progress bar, this project's one-line
events (INFO from `launch/`, `configs/`, `ddpm/`, `ebm/`, `core/`: "Resumed
from ...") and every library's warnings and errors, written above the bar
(`tqdm.write`) so that they never split it. The file gets every line at INFO,
in absl's format, whatever the terminal shows.

`--verbosity` (absl's flag) changes the terminal only:
  not given   events + warnings + errors (the default)
  -2          errors only
  -1          warnings and errors
   0          every INFO line too, Orbax's included, as absl prints them
   1          DEBUG as well (the file then gets DEBUG too)
"""
from __future__ import annotations

import logging
import os
import sys

from absl import logging as absl_logging

# This project's top-level packages: INFO from these is an "event".
PROJECT_PACKAGES = ("launch", "configs", "ddpm", "ebm", "core")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_FILE = "log.txt"

# A record with extra={"file_only": True} goes to the log file and never to
# the terminal (e.g. an error the launcher prints itself as one line).
FILE_ONLY = {"file_only": True}

_installed: dict[str, logging.Handler] = {}


def from_project(record: logging.LogRecord) -> bool:
  """Whether the record was logged by this project's code (not a library's)."""
  path = os.path.abspath(record.pathname)
  try:
    rel = os.path.relpath(path, _ROOT)
  except ValueError:  # another drive (Windows)
    return False
  return rel.split(os.sep, 1)[0] in PROJECT_PACKAGES


class TerminalFilter(logging.Filter):
  """Lets through what the terminal should show at a verbosity (None = default)."""

  def __init__(self, verbosity: int | None):
    super().__init__()
    self.verbosity = verbosity

  def filter(self, record: logging.LogRecord) -> bool:
    if getattr(record, "file_only", False):
      return False
    v = self.verbosity
    if v is None:
      return record.levelno >= (logging.INFO if from_project(record) else logging.WARNING)
    if v >= 1:
      return record.levelno >= logging.DEBUG
    threshold = {0: logging.INFO, -1: logging.WARNING}.get(v, logging.ERROR)
    return record.levelno >= threshold


class TerminalFormatter(logging.Formatter):
  """One line per record: the message, `warning: `/`error: ` before the others.

  At --verbosity >= 0 the terminal shows absl's own format instead (with time
  and file:line), as absl apps normally print.
  """

  def __init__(self, verbosity: int | None):
    super().__init__()
    self._absl = absl_logging.PythonFormatter() if verbosity is not None and verbosity >= 0 else None

  def format(self, record: logging.LogRecord) -> str:
    if self._absl is not None:
      return self._absl.format(record).rstrip("\n")
    msg = record.getMessage()
    if record.levelno >= logging.ERROR:
      return f"error: {msg}"
    if record.levelno >= logging.WARNING:
      return f"warning: {msg}"
    return msg


class _TqdmHandler(logging.Handler):
  """Writes above any progress bar (tqdm.write clears it, prints, redraws)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      from tqdm import tqdm
      tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # a logging handler must not raise
      self.handleError(record)


def configure_terminal(verbosity: int | None) -> logging.Handler:
  """Replaces absl's stderr handler with the quiet terminal handler.

  Args:
    verbosity: absl's --verbosity when given on the command line, else None.

  Returns:
    The installed handler (on the root logger).
  """
  root = logging.getLogger()
  absl_handler = absl_logging.get_absl_handler()
  if absl_handler in root.handlers:
    root.removeHandler(absl_handler)
  previous = _installed.pop("terminal", None)
  if previous is not None:
    root.removeHandler(previous)
  handler = _TqdmHandler()
  handler.addFilter(TerminalFilter(verbosity))
  handler.setFormatter(TerminalFormatter(verbosity))
  root.addHandler(handler)
  _installed["terminal"] = handler
  level = logging.DEBUG if verbosity is not None and verbosity >= 1 else logging.INFO
  # Records below the loggers' level never reach the file handler either:
  # keep INFO whatever the terminal shows.
  root.setLevel(level)
  absl_logging.get_absl_logger().setLevel(level)
  return handler


def log_to_file(workdir: str, *, process_index: int = 0) -> str | None:
  """Appends every log line (INFO and up) to WORKDIR/log.txt; returns its path.

  Process 0 writes log.txt, process i > 0 log.process<i>.txt. The workdir
  must exist (this never creates it); remote workdirs (gs://) get no file.

  Returns:
    The file's path, or None when there is no local workdir to write to.
  """
  if not workdir or "://" in workdir or not os.path.isdir(workdir):
    return None
  name = LOG_FILE if process_index == 0 else f"log.process{process_index}.txt"
  path = os.path.join(workdir, name)
  root = logging.getLogger()
  previous = _installed.pop("file", None)
  if previous is not None:
    root.removeHandler(previous)
    previous.close()
  handler = logging.FileHandler(path, mode="a", encoding="utf-8")
  handler.setFormatter(absl_logging.PythonFormatter())
  handler.setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.INFO)
  root.addHandler(handler)
  _installed["file"] = handler
  return path


def close() -> None:
  """Removes and closes the handlers installed here (tests, repeated runs)."""
  root = logging.getLogger()
  for handler in _installed.values():
    root.removeHandler(handler)
    handler.close()
  _installed.clear()
