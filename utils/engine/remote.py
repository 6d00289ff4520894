"""Models on an OpenAI-compatible server (`backend: openai`), run from this process.

Their adapters hold an HTTP client, not weights, and never touch a GPU here, so they do not go
through the worker process and its one-request-at-a-time lock: requests from several threads run
at once, up to the server's concurrency limit, and the client retries what the server fails.
A server nobody can connect to makes the model unavailable (ModelUnavailable), like missing weights.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from PIL import Image

from models.base import ModelAdapter
from models.contract import CHAT, PageResult, RunOptions, TokenCallback
from models.registry import adapter_class
from models.vlm.server import ServerError, ServerHealth, ServerUnreachable
from utils.config import Settings
from utils.engine.pool import ModelUnavailable

HEALTH_MAX_AGE_S = 15.0  # the sidebar asks on every rerun; a server is asked at most this often


class RemoteModels:
    def __init__(self) -> None:
        self._adapters: dict[str, ModelAdapter] = {}
        self._lock = threading.Lock()
        self._health: dict[str, tuple[float, ServerHealth]] = {}

    def _adapter(self, settings: Settings, name: str) -> ModelAdapter:
        with self._lock:
            adapter = self._adapters.get(name)
            if adapter is None:
                spec = settings.model(name)
                cls = adapter_class(spec)
                availability = cls.availability(spec)
                if not availability.available:
                    fix = f" To fix: {availability.fix}" if availability.fix else ""
                    raise ModelUnavailable(f"{name} is {availability.status}: {availability.reason}.{fix}")
                adapter = cls(name, spec, settings.profile)
                try:
                    adapter.load()  # makes the client; nothing is sent yet
                except ServerError as exc:
                    raise ModelUnavailable(f"{name}: {exc}") from None
                self._adapters[name] = adapter
            return adapter

    def run(self, settings: Settings, name: str, image: Image.Image, task: str, options: RunOptions | None,
            on_token: TokenCallback | None) -> PageResult:
        spec = settings.model(name)
        if task not in spec.tasks:
            raise ValueError(f"{name} does not do '{task}'; it supports: {', '.join(spec.tasks)}")
        adapter = self._adapter(settings, name)
        try:
            return adapter.run(image, task, options or RunOptions(), on_token)
        except ServerUnreachable as exc:  # no page of this run could succeed
            raise ModelUnavailable(f"{name}: {exc}") from None

    def chat(self, settings: Settings, name: str, images: Sequence[Image.Image], options: RunOptions,
             on_token: TokenCallback | None) -> PageResult:
        """One chat turn on the server; a model whose entry does not list the task "chat" refuses."""
        spec = settings.model(name)
        if CHAT not in spec.tasks:
            raise ValueError(f"{name} cannot chat: its entry's tasks are {', '.join(spec.tasks)}")
        adapter = self._adapter(settings, name)
        try:
            return adapter.chat(images, options, on_token)
        except ServerUnreachable as exc:
            raise ModelUnavailable(f"{name}: {exc}") from None

    def health(self, settings: Settings, name: str, max_age_s: float = HEALTH_MAX_AGE_S) -> ServerHealth:
        """Reachable, model listed, latency: asked again once the last answer is older than max_age_s."""
        cached = self._health.get(name)
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        health = self._adapter(settings, name).health()  # type: ignore[attr-defined]
        self._health[name] = (time.monotonic(), health)
        return health

    def close(self) -> None:
        with self._lock:
            adapters, self._adapters = list(self._adapters.values()), {}
        for adapter in adapters:
            adapter.close()
