"""The page at / in headless Chromium: pick a model, class and seed, click, see the grid.

Chromium (Debian's `chromium` package) is driven over the DevTools protocol
with a small client on `websockets`; nothing is downloaded. The server is a
real uvicorn on 127.0.0.1 (in a thread of this process) over the smoke models
of tests/conftest.py (its `batcher`). The screenshot is kept as
test-artifacts/serve_page.png. Skips only when no chromium binary is found.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time

import httpx
import pytest
import uvicorn
from websockets.sync.client import connect

from launch.serve import app as serve

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--disable-quic",
                  "--window-size=1100,800")


def _chromium() -> str | None:
  for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


class DevTools:
  """A minimal Chrome DevTools Protocol client over one page's websocket."""

  def __init__(self, ws):
    self._ws = ws
    self._ids = itertools.count(1)
    self.events: list[dict] = []

  def call(self, method: str, timeout: float = 60.0, **params) -> dict:
    call_id = next(self._ids)
    self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
    end = time.monotonic() + timeout
    while True:
      message = json.loads(self._ws.recv(timeout=max(end - time.monotonic(), 0.01)))
      if message.get("id") == call_id:
        if "error" in message:
          raise RuntimeError(f"{method}: {message['error']}")
        return message.get("result", {})
      self.events.append(message)

  def eval(self, expression: str):
    result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                       awaitPromise=True)
    if "exceptionDetails" in result:
      raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
    return result["result"].get("value")

  def wait_for(self, expression: str, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
      value = self.eval(expression)
      if value:
        return value
      time.sleep(0.1)
    raise TimeoutError(f"not true after {timeout} s: {expression}")

  def click(self, selector: str) -> None:
    """A real mouse click (pressed + released) at the centre of the element (scrolled to)."""
    box = self.eval(f"(() => {{ const e = document.querySelector({selector!r}); "
                    "e.scrollIntoView({block: 'center'}); const r = e"
                    ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
      self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                clickCount=1)


def _error_status(browser, element_id: str) -> str:
  """The text of the page's status line `element_id` once it shows an error."""
  return browser.wait_for(f"(() => {{ const s = document.getElementById('{element_id}'); "
                          "return s.classList.contains('error') && s.textContent; })()")


def _assert_no_js_errors(browser) -> None:
  errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown" or (
      e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")]
  assert not errors, errors


@pytest.fixture(scope="module")
def live_url(batcher):
  """A real uvicorn on 127.0.0.1 (free port) serving the session's warmed-up smoke models
  (the `batcher` fixture of tests/conftest.py)."""
  server = uvicorn.Server(uvicorn.Config(serve.create_app(batcher, manage=False),
                                         host="127.0.0.1", port=0, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  for _ in range(600):
    if server.started:
      break
    time.sleep(0.05)
  assert server.started, "uvicorn did not start"
  port = server.servers[0].sockets[0].getsockname()[1]
  yield f"http://127.0.0.1:{port}"
  server.should_exit = True
  thread.join(30)


@pytest.fixture(scope="module")
def browser():
  """A DevTools client on a fresh headless Chromium's page."""
  binary = _chromium()
  if binary is None:
    if os.environ.get("CI") == "true":  # `make test` installs it; CI must run this test
      pytest.fail("no chromium binary found in CI (make browser installs Debian's chromium)")
    pytest.skip("no chromium binary found (apt-get install -y chromium)")
  profile = tempfile.mkdtemp(prefix="chromium-profile-")
  proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           "--remote-debugging-port=0", "about:blank"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    port_file = pathlib.Path(profile) / "DevToolsActivePort"
    for _ in range(600):
      if port_file.exists() and port_file.read_text().strip():
        break
      assert proc.poll() is None, f"chromium exited with {proc.returncode}"
      time.sleep(0.05)
    port = int(port_file.read_text().split()[0])
    pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
             if t["type"] == "page"]
    with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
      devtools = DevTools(ws)
      devtools.call("Page.enable")
      devtools.call("Runtime.enable")
      yield devtools
  finally:
    proc.terminate()
    try:
      proc.wait(20)
    except subprocess.TimeoutExpired:
      proc.kill()
    shutil.rmtree(profile, ignore_errors=True)


def _set(devtools: DevTools, element_id: str, value: str) -> None:
  devtools.eval(f"(() => {{ const e = document.getElementById({element_id!r}); "
                f"e.value = {value!r}; e.dispatchEvent(new Event('change')); }})()")


def test_page_generates_a_grid_on_click(browser, live_url):
  browser.call("Page.navigate", url=f"{live_url}/")
  browser.wait_for("document.body && document.body.dataset.ready === '1'", timeout=60)
  assert browser.eval("document.getElementById('health').textContent") == "ready"
  models = browser.eval("[...document.getElementById('model').options].map(o => o.value)")
  assert models == ["cond", "ddpm", "ebm"]

  _set(browser, "model", "cond")
  assert browser.eval("document.getElementById('label-row').hidden") is False
  assert browser.eval("document.getElementById('label').options.length") == 11
  _set(browser, "label", "3")
  _set(browser, "num", "4")
  _set(browser, "seed", "7")
  browser.click("#generate")
  browser.wait_for("document.getElementById('grid').dataset.state === 'loaded'", timeout=120)
  size = browser.eval("(() => { const g = document.getElementById('grid'); "
                      "return [g.naturalWidth, g.naturalHeight]; })()")
  assert size == [70, 70]  # 2 x 2 tiles of 32 x 32, 2 px padding
  assert browser.eval("document.getElementById('status').textContent") == "4 image(s) from cond"
  info = browser.eval("document.getElementById('info').textContent")
  assert info.startswith("seed 7, ancestral with 20 steps"), info
  assert browser.eval("document.getElementById('guidance').value") == "2"  # the model's default

  ARTIFACTS.mkdir(exist_ok=True)
  shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
  assert shot.startswith(b"\x89PNG")
  (ARTIFACTS / "serve_page.png").write_bytes(shot)

  # The server's error is shown on the page, naming the field (the form's own
  # validation, which would stop steps above the sampler's maximum, is off here).
  browser.eval("document.getElementById('form').noValidate = true")
  _set(browser, "model", "ddpm")
  _set(browser, "sampler", "ddim")
  _set(browser, "steps", "999")
  browser.click("#generate")
  status = _error_status(browser, "status")
  assert status.startswith("error 422: steps: must be in [1, 20]"), status

  _assert_no_js_errors(browser)


def test_api_docs_render_offline(browser, live_url):
  """/docs renders every operation of /openapi.json from the package's files alone."""
  browser.call("Network.enable")
  browser.events.clear()
  browser.call("Page.navigate", url=f"{live_url}/docs")
  browser.wait_for("document.body && document.body.dataset.ready === '1'", timeout=60)
  operations = browser.eval("[...document.querySelectorAll('.operation h2')]"
                            ".map(h => h.textContent)")
  assert {"GET /health", "GET /models", "POST /generate"} <= set(operations), operations
  fields = browser.eval("[...document.getElementById('post-/generate')"
                        ".querySelectorAll('td code')].map(c => c.textContent)")
  assert {"model", "num_images", "seed", "step_size"} <= set(fields), fields
  urls = [e["params"]["request"]["url"] for e in browser.events
          if e.get("method") == "Network.requestWillBeSent"]
  assert urls and all(u.startswith(live_url) for u in urls), urls
  browser.call("Network.disable")


def _drag(devtools: DevTools, selector: str, path: list[tuple[float, float]]) -> None:
  """Presses the mouse at path[0] (fractions of the element's box), moves along, releases."""
  box = devtools.eval(f"(() => {{ const e = document.querySelector({selector!r}); "
                      "e.scrollIntoView({block: 'center'}); const r = e"
                      ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
  points = [(box[0] + fx * box[2], box[1] + fy * box[3]) for fx, fy in path]
  devtools.call("Input.dispatchMouseEvent", type="mousePressed", x=points[0][0], y=points[0][1],
                button="left", clickCount=1)
  for x, y in points[1:]:
    devtools.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left",
                  buttons=1)
  devtools.call("Input.dispatchMouseEvent", type="mouseReleased", x=points[-1][0],
                y=points[-1][1], button="left", clickCount=1)


def _clear_status(devtools: DevTools) -> None:
  devtools.eval("document.getElementById('image-status').textContent = ''")


# The image-task status once an operation has finished (its buttons enabled again).
_DONE = ("(() => { const s = document.getElementById('image-status').textContent; "
         "return !document.getElementById('inpaint').disabled && !s.endsWith('…') && s; })()")


def test_page_inpaints_denoises_and_scores_a_drawn_image(browser, live_url):
  """Draw on the canvas, drag a box, and run /inpaint, /denoise and /energy from the page."""
  browser.events.clear()
  browser.call("Page.navigate", url=f"{live_url}/")
  browser.wait_for("document.body && document.body.dataset.imagesReady === '1'", timeout=120)
  assert browser.eval("document.getElementById('images').hidden") is False
  assert browser.eval("[...document.getElementById('image-model').options]"
                      ".map(o => o.value)") == ["ebm"]
  _drag(browser, "#canvas", [(0.3, 0.2), (0.5, 0.5), (0.7, 0.8)])  # a pen stroke
  lit = browser.eval("(() => { const d = document.getElementById('canvas').getContext('2d')"
                     ".getImageData(0, 0, 28, 28).data; let n = 0;"
                     " for (let i = 0; i < d.length; i += 4) n += d[i] > 0; return n; })()")
  assert lit > 30, lit  # a stroke joining the three points, not three dots
  browser.eval("document.querySelector('input[name=tool][value=box]').click()")
  centre = lambda row, col: ((col + 0.5) / 28, (row + 0.5) / 28)  # noqa: E731
  _drag(browser, "#canvas", [centre(2, 2), centre(8, 8), centre(16, 14)])  # rows 2..16, cols 2..14
  box = browser.eval("['top', 'left', 'height', 'width'].map(k => "
                     "Number(document.getElementById('box-' + k).value))")
  assert box == [2, 2, 15, 13], box

  _set(browser, "inpaint-steps", "1")
  _clear_status(browser)
  browser.click("#inpaint")
  status = browser.wait_for(_DONE, timeout=180)
  assert status.startswith("inpaint: 1 Langevin steps"), status
  size = browser.eval("(() => { const g = document.getElementById('image-result'); "
                      "return [g.naturalWidth, g.naturalHeight, g.dataset.state]; })()")
  assert size == [28, 28, "loaded"], size

  _clear_status(browser)
  browser.click("#energy")
  energy = browser.wait_for("(() => { const t = document.getElementById('energy-table'); "
                            "return !t.hidden && t.textContent; })()", timeout=180)
  assert energy.startswith("E(x)") and "OOD score" in energy, energy

  _set(browser, "denoise-steps", "1")
  _clear_status(browser)
  browser.click("#denoise")
  status = browser.wait_for(_DONE, timeout=180)
  assert status.startswith("denoise: 1 Langevin steps") and "σ 0.3" in status, status

  if browser.eval("!document.getElementById('examples-row').hidden"):
    browser.click("#examples img")
    browser.wait_for("document.querySelector('#examples img.picked') !== null")
  ARTIFACTS.mkdir(exist_ok=True)
  shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
  (ARTIFACTS / "serve_page_images.png").write_bytes(shot)

  # The server's refusal is shown, naming the field.
  _set(browser, "box-top", "20")
  _clear_status(browser)
  browser.click("#inpaint")
  status = _error_status(browser, "image-status")
  assert status.startswith("error 422: height: top + height = 35 exceeds"), status
  _assert_no_js_errors(browser)
