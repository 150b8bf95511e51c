"""Connection bounds of the HTTP server: idle and slow clients cannot block it.

uvicorn alone closes a keep-alive connection `timeout_keep_alive` seconds
after its last response, but never one that has not finished sending its
first request's headers (it sends nothing, or half a header, forever), and
its `limit_concurrency` counts such idle connections: ~144 of them made every
request, /health included, get uvicorn's plain-text 503. Here instead:

- `limit_concurrency` is not used; in-flight requests are bounded by
  `InFlightLimit` (the documented JSON 503 with Retry-After), and idle
  connections cost only a file descriptor and a few KiB.
- A connection must complete its request headers within
  `limits.header_timeout_s` of being opened or of its previous response, or
  it is closed (`GuardedH11Protocol`); h11 refuses headers over
  `limits.max_header_bytes`; a request body must arrive within
  `limits.body_timeout_s` (`launch.serve.app.BodyLimit`).
- At most `limits.max_connections` connections are open: a new one beyond
  that closes the oldest connection with no request in progress (so a client
  that opens thousands of idle sockets evicts its own, oldest, sockets, not
  the server's ability to accept).
- `raise_fd_limit` lifts the process's RLIMIT_NOFILE soft limit to fit
  `max_connections` (and lowers the cap to what the hard limit allows).
"""
from __future__ import annotations

import collections
import resource

from absl import logging
from uvicorn.protocols.http.h11_impl import H11Protocol

# Descriptors kept for everything that is not a client connection (the
# listening socket, checkpoint files, JAX's runtime, logs).
FD_RESERVE = 256


def raise_fd_limit(max_connections: int) -> int:
  """Raises RLIMIT_NOFILE's soft limit to fit `max_connections`; returns the cap that fits.

  Args:
    max_connections: the configured connection cap.

  Returns:
    min(max_connections, hard limit - FD_RESERVE): the cap to use.
  """
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  want = max_connections + FD_RESERVE
  if hard != resource.RLIM_INFINITY:
    want = min(want, hard)
  if soft != resource.RLIM_INFINITY and soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = want
  fits = max_connections if soft == resource.RLIM_INFINITY else max(1, soft - FD_RESERVE)
  if fits < max_connections:
    logging.warning("serve: the file descriptor limit (%d) allows %d connections, not the "
                    "configured limits.max_connections = %d", soft, fits, max_connections)
  return min(max_connections, fits)


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
  """An uvicorn HTTP protocol class (`uvicorn.run(http=...)`) with the bounds above.

  Args:
    header_timeout_s: seconds a connection may take to send a request's
      headers, from its opening or from its previous response.
    max_connections: open connections at most; beyond, the oldest idle one
      is closed.

  Returns:
    A subclass of uvicorn's H11Protocol; its class attribute `opened` and
    `closed_idle` / `evicted` count connections (for logs and tests).
  """

  class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a header deadline and a connection cap (one per server)."""
    open_connections: "collections.OrderedDict[GuardedH11Protocol, None]" = (
        collections.OrderedDict())
    counts = collections.Counter(opened=0, closed_idle=0, evicted=0)

    def connection_made(self, transport):  # type: ignore[override]
      super().connection_made(transport)
      cls = type(self)
      cls.counts["opened"] += 1
      cls.open_connections[self] = None
      self._deadline = None
      self._arm()
      while len(cls.open_connections) > max_connections:
        victim = next((c for c in cls.open_connections if not c.in_request), None)
        if victim is None:  # every connection is serving a request: refuse the new one
          victim = self
        cls.open_connections.pop(victim, None)
        cls.counts["evicted"] += 1
        victim.transport.close()
        if victim is self:
          break

    def connection_lost(self, exc):
      type(self).open_connections.pop(self, None)
      self._disarm()
      super().connection_lost(exc)

    @property
    def in_request(self) -> bool:
      """A request's headers arrived and its response is not complete."""
      return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
      self._disarm()
      self._deadline = self.loop.call_later(header_timeout_s, self._on_deadline)

    def _disarm(self) -> None:
      if getattr(self, "_deadline", None) is not None:
        self._deadline.cancel()
        self._deadline = None

    def _on_deadline(self) -> None:
      self._deadline = None
      if self.in_request or self.transport.is_closing():
        return  # the response re-arms it; the request has its own time limits
      type(self).counts["closed_idle"] += 1
      type(self).open_connections.pop(self, None)
      self.transport.close()

    def on_response_complete(self) -> None:
      super().on_response_complete()
      if not self.transport.is_closing():
        self._arm()  # idle until the next request's headers: the same deadline

  return GuardedH11Protocol


class InFlightLimit:
  """ASGI middleware: at most `max_requests` HTTP requests in progress; beyond, JSON 503.

  `respond(scope, receive, send)` writes the 503 (the app's error format,
  with Retry-After); it is given by the app so that every error looks alike.
  """

  def __init__(self, app, max_requests: int, respond):
    self.app = app
    self.max_requests = max_requests
    self.respond = respond
    self.in_flight = 0

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    if self.in_flight >= self.max_requests:
      return await self.respond(scope, receive, send)
    self.in_flight += 1
    try:
      return await self.app(scope, receive, send)
    finally:
      self.in_flight -= 1
