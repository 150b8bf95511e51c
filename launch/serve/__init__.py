"""The HTTP server: `app` (FastAPI routes), `models` (loaded models, request
plans, compiled programs), `queue` (the batcher), `uploads` (checks of the
PNG uploads of the image endpoints), `load` (a load test of a running
server), `static/` (the web page)."""
