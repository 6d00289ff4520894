"""The single door through which the UI and the CLI run a model on a page.

Models run in a supervised worker process (utils/engine/guard.py); this process never touches CUDA.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from PIL import Image

from models.contract import Availability, PageResult, RunOptions, TokenCallback
from models.registry import adapter_class
from models.vlm.server import ServerHealth
from utils.config import CPU_FALLBACK_CONFIG, ConfigError, Settings, cached_settings, with_overlay
from utils.engine.guard import Guard, RecoveryEvent, RequestFailed, SystemInfo
from utils.engine.pool import ModelUnavailable
from utils.engine.remote import RemoteModels

__all__ = ["Loader", "ModelStatus", "ModelUnavailable", "ConfigError", "RequestFailed", "RecoveryEvent",
           "ServerHealth", "SystemInfo"]


@dataclass(frozen=True)
class ModelStatus:
    name: str
    label: str
    tasks: tuple[str, ...]
    availability: Availability


class Loader:
    """`fallback` is the CPU profile switched to when the GPU cannot be trusted; by default
    `settings` overlaid with config_cpu_fallback.yaml."""

    def __init__(self, settings: Settings | None = None, fallback: Settings | None = None):
        settings = settings or cached_settings()
        self._guard = Guard(settings, fallback or with_overlay(settings, CPU_FALLBACK_CONFIG))
        self._lock = threading.Lock()  # one inference at a time: one worker, one device
        self._remote = RemoteModels()  # models on a server: concurrent, outside the worker
        # A server's GPU is not this machine's: the CPU profile's smaller budgets never apply to it.
        self._served_settings = settings

    @property
    def settings(self) -> Settings:
        """The settings of the profile in use (the CPU profile after a fallback)."""
        return self._guard.settings

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
        """Raises the worker's own exception type for bad input, RequestFailed when recovery gave up.
        A model on a server (`backend: openai`) runs from this thread, at once with others."""
        if self._served_settings.model(model).backend == "openai":
            result = self._remote.run(self._served_settings, model, image, task, options, on_token)
        else:
            with self._lock:
                result = self._guard.run(model, image, task, options, on_token)
        result.page = page
        result.source = source
        return result

    def server_health(self, model: str) -> ServerHealth | None:
        """For a model on a server: reachable, model listed, latency (asked at most every 15 s).
        None for a model that runs here. Raises ModelUnavailable when its client cannot be made
        (say, the API key's environment variable is not set)."""
        if self._served_settings.model(model).backend != "openai":
            return None
        return self._remote.health(self._served_settings, model)

    def set_model_path(self, model: str, path: str | None) -> None:
        """Load `model` from a local snapshot folder (None: back to the Hugging Face cache)."""
        with self._lock:
            self._guard.set_local_path(model, path)

    @property
    def resident_models(self) -> list[str]:
        return self._guard.resident_models

    @property
    def profile_name(self) -> str:
        return self._guard.profile_name

    def recovery_events(self) -> list[RecoveryEvent]:
        return self._guard.events()

    def system_info(self) -> SystemInfo:
        return self._guard.system_info()

    def healthy(self) -> bool:
        return self._guard.healthy()

    def close(self) -> None:
        self._remote.close()
        with self._lock:
            self._guard.close()
