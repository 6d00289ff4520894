"""The single door through which the UI and the CLI run a model on a page."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from PIL import Image

from models.base import Availability, RunOptions, TokenCallback, adapter_class
from utils.adapter_pool import AdapterPool, ModelUnavailable
from utils.config import ConfigError, Settings, cached_settings
from utils.result import PageResult

__all__ = ["Loader", "ModelStatus", "ModelUnavailable", "ConfigError"]


@dataclass(frozen=True)
class ModelStatus:
    name: str
    label: str
    tasks: tuple[str, ...]
    availability: Availability


class Loader:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or cached_settings()
        self._pool = AdapterPool(self.settings)
        self._lock = threading.Lock()  # one inference at a time: one model resident, one device

    def status(self, name: str) -> ModelStatus:
        spec = self.settings.model(name)
        try:
            availability = adapter_class(spec).availability(spec)
        except Exception as exc:  # a broken install must show as a status, not take the page down
            availability = Availability(available=False, status="error", reason=f"{type(exc).__name__}: {exc}")
        return ModelStatus(name, spec.label, tuple(spec.tasks), availability)

    def catalog(self) -> list[ModelStatus]:
        return [self.status(name) for name in self.settings.models]

    def default_model(self) -> str | None:
        for name in self.settings.default_models:
            if self.status(name).availability.available:
                return name
        return None

    def run(self, model: str, image: Image.Image, task: str = "text", options: RunOptions | None = None,
            on_token: TokenCallback | None = None, page: int | None = None,
            source: str | None = None) -> PageResult:
        with self._lock:
            result = self._pool.run(model, image, task, options, on_token)
        result.page = page
        result.source = source
        return result

    @property
    def resident_models(self) -> list[str]:
        return self._pool.resident

    def close(self) -> None:
        with self._lock:
            self._pool.close()
