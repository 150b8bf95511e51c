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
  it is closed (`GuardedH11Protocol`). A request whose headers do not end
  within `limits.max_header_bytes` is answered 431 and closed, however its
  bytes were split into reads (h11's own bound applies only to headers still
  incomplete after a read: 20 KiB of headers arriving in one read passed it).
- A whole request, headers and body, must arrive within
  `limits.request_timeout_s` of its first byte, and after the first
  `limits.body_rate_grace_s` seconds at `limits.min_body_rate` bytes/s on
  average at least; otherwise it is answered 408 and its connection closed
  (`BodyLimit`). A body of 1 byte/s is thus cut after the grace period, and
  no body holds a connection for longer than the deadline.
- The body is read in full (at most `limits.max_upload_bytes`) before the
  request takes one of the `limits.max_requests` slots (`InFlightLimit`
  inside `BodyLimit`), so clients trickling bodies hold only their
  connection, never a slot that requests compute in. Bodies being received
  are bounded by `max_connections` and the byte limits; what they can hold
  is what they have sent, at most max_connections x max_upload_bytes
  (2048 x 256 KiB = 512 MiB with the defaults, and only for clients sending
  at full speed, which then finish within the deadline).
- At most `limits.max_connections` connections are open: a new one beyond
  that closes the oldest connection with no request in progress (so a client
  that opens thousands of idle sockets evicts its own, oldest, sockets, not
  the server's ability to accept).
- `raise_fd_limit` lifts the process's RLIMIT_NOFILE soft limit to fit
  `max_connections` (and lowers the cap to what the hard limit allows).
"""
from __future__ import annotations

import asyncio
import collections
import json
import resource

from absl import logging
from uvicorn.protocols.http.h11_impl import H11Protocol

# The scope["state"] key of the event-loop time of a request's first byte.
REQUEST_STARTED = "launch.request_started"

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


def _header_refusal(max_header_bytes: int) -> bytes:
  body = json.dumps({"detail": f"headers: more than limits.max_header_bytes = "
                               f"{max_header_bytes} bytes", "field": "headers",
                     "errors": []}).encode()
  return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
          b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
          + body)


def guarded_protocol(header_timeout_s: float, max_connections: int,
                     max_header_bytes: int = 0) -> type[H11Protocol]:
  """An uvicorn HTTP protocol class (`uvicorn.run(http=...)`) with the bounds above.

  Args:
    header_timeout_s: seconds a connection may take to send a request's
      headers, from its opening or from its previous response.
    max_connections: open connections at most; beyond, the oldest idle one
      is closed.
    max_header_bytes: a request's headers must end within this many bytes,
      else 431 and the connection is closed (0 = h11's bound alone).

  Returns:
    A subclass of uvicorn's H11Protocol; its class attribute `opened` and
    `closed_idle` / `evicted` count connections (for logs and tests).
  """

  class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a header deadline and a connection cap (one per server)."""
    open_connections: "collections.OrderedDict[GuardedH11Protocol, None]" = (
        collections.OrderedDict())
    counts = collections.Counter(opened=0, closed_idle=0, evicted=0, headers_too_large=0)

    def connection_made(self, transport):  # type: ignore[override]
      super().connection_made(transport)
      cls = type(self)
      cls.counts["opened"] += 1
      cls.open_connections[self] = None
      self._deadline = None
      self._base_state = self.app_state
      self._request_started = None
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

    def data_received(self, data: bytes) -> None:
      if max_header_bytes and not self.in_request:   # receiving a request's headers
        head = self.conn.trailing_data[0] + data       # what h11 holds of them, and the new bytes
        if (len(head) > max_header_bytes
            and b"\r\n\r\n" not in head[:max_header_bytes + 4]):
          type(self).counts["headers_too_large"] += 1
          type(self).open_connections.pop(self, None)
          self._disarm()
          self.transport.write(_header_refusal(max_header_bytes))
          self.transport.close()
          return
      if self._request_started is None:  # the first byte of a request: its clock starts
        self._request_started = self.loop.time()
        # uvicorn copies app_state into the request's scope["state"]: BodyLimit reads it.
        self.app_state = {**self._base_state, REQUEST_STARTED: self._request_started}
      super().data_received(data)

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
      self._request_started = None
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


class BodyLimit:
  """ASGI middleware: reads the whole body within its bounds, then calls the app.

  Answers 413 to a body over its byte limit (declared in content-length, or
  counted as it arrives) and 408 to a request not received in full within
  `request_timeout_s` of its first byte (`GuardedH11Protocol` stamps it; the
  middleware's own start time otherwise), or slower than `min_body_rate`
  bytes/s on average once `body_rate_grace_s` have passed. Both answers close
  the connection (the rest of the body is never read). The app gets the body
  as one message, so nothing inside it waits on the client.

  `error(status, field, detail, headers)` builds the answer (an ASGI app): the
  server's JSON error, so that every error looks alike.
  """

  def __init__(self, app, error, *, max_bytes: int, upload_bytes: int = 0,
               upload_paths: tuple[str, ...] = (), request_timeout_s: float = 30.0,
               min_body_rate: float = 0.0, body_rate_grace_s: float = 5.0):
    self.app = app
    self.error = error
    self.max_bytes = max_bytes
    self.upload_bytes = upload_bytes
    self.upload_paths = frozenset(upload_paths)
    self.request_timeout_s = request_timeout_s
    self.min_body_rate = min_body_rate
    self.body_rate_grace_s = body_rate_grace_s
    self.counts = collections.Counter(timed_out=0, too_slow=0, too_large=0)

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    limit = self.upload_bytes if scope.get("path") in self.upload_paths else self.max_bytes
    declared = dict(scope.get("headers") or ()).get(b"content-length")
    if declared is not None:
      try:
        size = int(declared)
      except ValueError:
        size = -1
      if size < 0:
        return await self._refuse(400, "content-length", "content-length: not a byte count",
                                  scope, receive, send)
      if size > limit:
        self.counts["too_large"] += 1
        return await self._refuse(413, "body", self._message(limit), scope, receive, send)
    body = await self._read(scope, receive, limit)
    if not isinstance(body, bytes):
      status, field, detail = body
      return await self._refuse(status, field, detail, scope, receive, send)
    sent = False

    async def replay():
      nonlocal sent
      if not sent:
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
      return await receive()  # what follows the body: the client's disconnect

    return await self.app(scope, replay, send)

  async def _read(self, scope, receive, limit: int):
    """The body, or (status, field, detail) of the refusal."""
    loop = asyncio.get_running_loop()
    started = (scope.get("state") or {}).get(REQUEST_STARTED, loop.time())
    deadline = started + self.request_timeout_s
    chunks, received = [], 0
    while True:
      now = loop.time()
      if now >= deadline:
        self.counts["timed_out"] += 1
        return (408, "body", f"body: the request was not received within "
                             f"{self.request_timeout_s:g} s (limits.request_timeout_s)")
      elapsed = now - started
      if self.min_body_rate and elapsed > self.body_rate_grace_s and (
          received < self.min_body_rate * elapsed):
        self.counts["too_slow"] += 1
        return (408, "body", f"body: received at {received / elapsed:.0f} bytes/s, under the "
                             f"minimum of {self.min_body_rate:g} bytes/s (limits.min_body_rate)")
      wait = deadline - now
      if self.min_body_rate:  # wake up at least each second to check the rate
        wait = min(wait, max(self.body_rate_grace_s - elapsed, 0.0) + 1.0)
      try:
        message = await asyncio.wait_for(receive(), wait)
      except asyncio.TimeoutError:
        continue
      if message["type"] == "http.disconnect":
        return (400, "body", "body: the client closed the connection")
      chunk = message.get("body", b"")
      received += len(chunk)
      if received > limit:
        self.counts["too_large"] += 1
        return (413, "body", self._message(limit))
      chunks.append(chunk)
      if not message.get("more_body", False):
        return b"".join(chunks)

  def _message(self, limit: int) -> str:
    which = "limits.max_upload_bytes" if limit == self.upload_bytes else "limits.max_body_bytes"
    return f"body: the request body exceeds the limit of {limit} bytes ({which})"

  async def _refuse(self, status: int, field: str, detail: str, scope, receive, send):
    # "connection: close": the unread rest of the body cannot start the next request.
    return await self.error(status, field, detail, headers={"connection": "close"})(
        scope, receive, send)
