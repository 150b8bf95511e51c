"""The HTTP server: `app` (FastAPI routes), `models` (loaded models, request
plans, compiled programs), `queue` (the batcher), `load` (a load test of a
running server), `static/` (the web page)."""
