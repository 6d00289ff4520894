"""The single door through which the UI and the CLI run a model on a page.

Models run in supervised worker processes (utils/engine/guard.py); this process never touches CUDA.
Classic CPU engines and GPU models have a worker each, so a Tesseract page never queues behind a VLM.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from models.contract import CHAT, TASKS, Availability, PageResult, RunOptions, TokenCallback
from models.registry import ModelSpec, adapter_class
from models.vlm.server import ServerHealth
from utils.config import CPU_FALLBACK_CONFIG, ConfigError, Settings, cached_settings, with_overlay
from utils.engine.guard import CHECKING, Guard, RecoveryEvent, RequestFailed, SystemInfo, WaitCallback
from utils.engine.pool import ModelUnavailable
from utils.engine.preflight import PreflightResult
from utils.engine.remote import RemoteModels

__all__ = ["Loader", "ModelStatus", "ModelUnavailable", "ConfigError", "RequestFailed", "RecoveryEvent",
           "ServerHealth", "SystemInfo", "WaitCallback", "CHECKING"]


@dataclass(frozen=True)
class ModelStatus:
    name: str
    label: str
    tasks: tuple[str, ...]  # what it recognises a page as
    availability: Availability
    chats: bool = False  # it answers questions about pages (task "chat")


class Loader:
    """`fallback` is the CPU profile switched to when the GPU cannot be trusted; by default
    `settings` overlaid with config_cpu_fallback.yaml. The GPU preflight starts in the background here."""

    def __init__(self, settings: Settings | None = None, fallback: Settings | None = None):
        settings = settings or cached_settings()
        self._guard = Guard(settings, fallback or with_overlay(settings, CPU_FALLBACK_CONFIG))
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
        return ModelStatus(name, spec.label, tuple(t for t in spec.tasks if t in TASKS), availability,
                           chats=CHAT in spec.tasks)

    def check_languages(self, model: str, languages: str | None) -> None:
        """Refuse, in one line, languages a document asks of `model` that it cannot read (ValueError)."""
        if not languages:
            return
        offered = self.status(model).availability.languages
        if not offered:
            takers = [s.name for s in self.catalog() if s.availability.languages]
            raise ValueError(f"{model} reads a fixed set of languages; languages can be chosen for: "
                             f"{', '.join(takers) or 'no model here'}")
        unknown = [code for code in languages.split("+") if code not in offered]
        if unknown:
            raise ValueError(f"{model} has no language data for {', '.join(unknown)} (installed: {', '.join(offered)})")

    def catalog(self) -> list[ModelStatus]:
        return [self.status(name) for name in self.settings.models]

    def default_model(self) -> str | None:
        for name in self.settings.default_models:
            if self.status(name).availability.available:
                return name
        return None

    def run(self, model: str, image: Image.Image, task: str = "text", options: RunOptions | None = None,
            on_token: TokenCallback | None = None, page: int | None = None,
            source: str | None = None, *, on_wait: WaitCallback | None = None) -> PageResult:
        """Raises the worker's own exception type for bad input, RequestFailed when recovery gave up.

        Requests for the same worker run one at a time, in order of arrival; while this one waits,
        `on_wait(n)` is told the number of requests ahead of it whenever it changes, and 0 when it starts.
        A model on a server (`backend: openai`) runs from this thread, at once with others.
        """
        if self._served_settings.model(model).backend == "openai":
            result = self._remote.run(self._served_settings, model, image, task, options, on_token)
        else:
            result = self._guard.run(model, image, task, options, on_token, on_wait)
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

    def chat(self, model: str, images: Sequence[Image.Image], options: RunOptions,
             on_token: TokenCallback | None = None, *, on_wait: WaitCallback | None = None) -> PageResult:
        """One turn of a conversation about `images`: options.prompt is the question, options.history
        the turns before it. Same worker, queue and recovery as a page; a model on a server answers
        from this thread, like its pages."""
        if not images:
            raise ValueError("a chat needs at least one page image")
        if self._served_settings.model(model).backend == "openai":
            return self._remote.chat(self._served_settings, model, images, options, on_token)
        return self._guard.run(model, list(images), CHAT, options, on_token, on_wait)

    def spec(self, model: str) -> ModelSpec:
        """The entry a run of `model` uses now: the profile's (the CPU profile's after a fallback), but
        a served model's as configured, since the server's GPU is not this machine's."""
        if self._served_settings.model(model).backend == "openai":
            return self._served_settings.model(model)
        return self.settings.model(model)

    def set_model_path(self, model: str, path: str | None) -> None:
        """Load `model` from a local snapshot folder (None: back to the Hugging Face cache)."""
        self._guard.set_local_path(model, path)

    @property
    def resident_models(self) -> list[str]:
        return self._guard.resident_models

    def requests_ahead(self, model: str) -> int:
        """How many requests a request for `model` made now would wait behind (0: it would start at once)."""
        return self._guard.requests_ahead(model)

    @property
    def profile_name(self) -> str:
        """The profile in use; CHECKING while the GPU preflight runs (never waits for it)."""
        return self._guard.profile_name

    @property
    def checking_gpu(self) -> bool:
        return self._guard.checking_gpu

    def wait_for_preflight(self, timeout: float | None = None) -> PreflightResult | None:
        return self._guard.wait_for_preflight(timeout)

    def recovery_events(self) -> list[RecoveryEvent]:
        return self._guard.events()

    def system_info(self) -> SystemInfo:
        return self._guard.system_info()

    def healthy(self) -> bool:
        return self._guard.healthy()

    def close(self) -> None:
        self._remote.close()
        self._guard.close()
