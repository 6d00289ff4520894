"""The app's own HTTP API (FastAPI), beside the UI, on the same loader and page runner."""
