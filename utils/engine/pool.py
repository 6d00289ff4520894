"""Loaded adapters kept resident between pages; past `max_resident` the least recently used is freed."""
from __future__ import annotations

import gc
import time
from collections import OrderedDict
from collections.abc import Sequence

from PIL import Image

from models.base import ModelAdapter
from models.contract import CHAT, PageResult, RunOptions, TokenCallback
from models.registry import adapter_class
from utils.config import Settings


class ModelUnavailable(RuntimeError):
    """The model cannot run here; the message says why and what to do."""


class AdapterPool:
    def __init__(self, settings: Settings, max_resident: int | None = None):
        """`max_resident`: None keeps guard.max_resident_models."""
        self.settings = settings
        self.max_resident = max_resident or settings.guard.max_resident_models
        self._resident: OrderedDict[str, ModelAdapter] = OrderedDict()

    @property
    def resident(self) -> list[str]:
        return list(self._resident)

    def _acquire(self, name: str) -> tuple[ModelAdapter, float | None]:
        if name in self._resident:
            self._resident.move_to_end(name)
            return self._resident[name], None
        spec = self.settings.model(name)
        cls = adapter_class(spec)
        availability = cls.availability(spec)
        if not availability.available:
            fix = f" To fix: {availability.fix}" if availability.fix else ""
            raise ModelUnavailable(f"{name} is {availability.status}: {availability.reason}.{fix}")
        while len(self._resident) >= self.max_resident:
            self.release(next(iter(self._resident)))
        started = time.perf_counter()
        adapter = cls(name, spec, self.settings.profile)
        adapter.load()
        self._resident[name] = adapter
        return adapter, time.perf_counter() - started

    def run(self, name: str, image: Image.Image, task: str, options: RunOptions | None = None,
            on_token: TokenCallback | None = None) -> PageResult:
        spec = self.settings.model(name)
        if task not in spec.tasks:
            raise ValueError(f"{name} does not do '{task}'; it supports: {', '.join(spec.tasks)}")
        adapter, load_seconds = self._acquire(name)
        result = adapter.run(image, task, options or RunOptions(), on_token)
        result.load_seconds = load_seconds
        return result

    def chat(self, name: str, images: Sequence[Image.Image], options: RunOptions,
             on_token: TokenCallback | None = None) -> PageResult:
        """One turn of a conversation about `images` (task "chat")."""
        spec = self.settings.model(name)
        if CHAT not in spec.tasks:
            raise ValueError(f"{name} cannot chat; it supports: {', '.join(spec.tasks)}")
        adapter, load_seconds = self._acquire(name)
        result = adapter.chat(images, options, on_token)
        result.load_seconds = load_seconds
        return result

    def release(self, name: str) -> None:
        adapter = self._resident.pop(name, None)
        if adapter is not None:
            adapter.close()
            del adapter
            gc.collect()

    def close(self) -> None:
        for name in list(self._resident):
            self.release(name)
