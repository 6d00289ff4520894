"""The guard: owns the worker process, turns its failures into recoveries, and logs every transition.

Policy (see shared/design/cuda-recovery.md):
- out of memory -> the worker has freed what it could; retry on it at the next smaller pixel budget,
  then token cap (guard.oom_pixel_steps / oom_token_steps), starting below the model's own budget;
- sticky CUDA error, worker death, hang past the deadline -> fresh worker, retry once; a request that
  fails twice is returned as an error (poison request);
- no kernel image for this GPU, GPU lost, or guard.fatal_limit sticky errors within guard.fatal_window_s
  -> the CPU profile (config_cpu_fallback.yaml) for good;
- ordinary errors -> the caller gets the worker's exception type and one-line message; the worker stays.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Literal

from PIL import Image
from pydantic import BaseModel, Field

from models.contract import PageResult, RunOptions, TokenCallback
from utils.config import Settings
from utils.engine import gpu, preflight
from utils.engine.worker import Outcome, WorkerProcess

EVENT_LOG_SIZE = 500
EventKind = Literal["preflight", "oom", "cuda_fatal", "unsupported_arch", "gpu_lost", "hang", "worker_died"]
# Outcome kind -> event kind.
EVENT_KINDS = {"oom": "oom", "fatal": "cuda_fatal", "unsupported_arch": "unsupported_arch",
               "gpu_lost": "gpu_lost", "hang": "hang", "died": "worker_died"}


class RecoveryEvent(BaseModel):
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    kind: EventKind
    action: str
    model: str | None = None
    profile: str
    detail: str = ""


class RequestFailed(RuntimeError):
    """The request could not be answered even after recovery; the message says why."""


class SystemInfo(BaseModel):
    preflight: preflight.PreflightResult
    profile: str
    device: str
    fallback_reason: str | None = None
    worker_pid: int | None = None
    worker_state: str
    resident_models: list[str] = Field(default_factory=list)


def _model_budget(options: dict, key: str, task: str) -> int | None:
    """A model option like max_pixels / max_new_tokens: one number, or one per task."""
    value = options.get(key)
    if isinstance(value, dict):
        value = value.get(task)
    return value if isinstance(value, int) else None


def _next_step(steps: list[int], current: int | None) -> int | None:
    smaller = [step for step in steps if current is None or step < current]
    return max(smaller) if smaller else None


class Guard:
    def __init__(self, settings: Settings, fallback: Settings):
        self._configured = settings
        self._fallback = fallback
        self.settings = settings
        self._preflight: preflight.PreflightResult | None = None
        self._fallback_reason: str | None = None
        self._profile_lock = threading.Lock()
        self._worker: WorkerProcess | None = None
        self._last_worker: WorkerProcess | None = None  # what the System page shows after a death
        self._events: deque[RecoveryEvent] = deque(maxlen=EVENT_LOG_SIZE)
        self._fatal_times: deque[float] = deque()
        self._closed = False

    # ---- profile ------------------------------------------------------------------------------

    def ensure_profile(self) -> None:
        """The preflight probe decides the starting profile, once."""
        with self._profile_lock:
            if self._preflight is not None:
                return
            result = preflight.run(self._configured)
            self._preflight = result
            if result.cuda_usable or self._configured.profile.device == "cpu":
                return
            self._switch_to_cpu(result.reason)
            if result.gpu_present:  # a GPU that cannot be used is news; no GPU at all is not
                self._log("preflight", "start on the CPU profile", None, f"{result.reason}. {result.fix or ''}".strip(),
                          profile=self._configured.profile.name)

    @property
    def profile_name(self) -> str:
        self.ensure_profile()
        return self.settings.profile.name

    def _on_fallback(self) -> bool:
        return self.settings is self._fallback

    def _switch_to_cpu(self, reason: str) -> None:
        self.settings = self._fallback
        self._fallback_reason = reason

    def _gpu_lost(self) -> bool:
        """NVML no longer shows the GPU the preflight used (it does not need a CUDA context)."""
        if self._preflight is None or not self._preflight.gpu_present or self._on_fallback():
            return False
        present = gpu.readings()
        if self._preflight.device_uuid:
            return not any(r.uuid and self._preflight.device_uuid in r.uuid for r in present)
        return not present

    # ---- events -------------------------------------------------------------------------------

    def _log(self, kind: str, action: str, model: str | None, detail: str, profile: str | None = None) -> RecoveryEvent:
        event = RecoveryEvent(kind=kind, action=action, model=model, detail=detail,
                              profile=profile or self.settings.profile.name)
        self._events.append(event)
        return event

    def events(self) -> list[RecoveryEvent]:
        return list(self._events)

    def _fatal_limit_reached(self) -> bool:
        guard = self.settings.guard
        now = time.monotonic()
        self._fatal_times.append(now)
        while self._fatal_times and now - self._fatal_times[0] > guard.fatal_window_s:
            self._fatal_times.popleft()
        return len(self._fatal_times) >= guard.fatal_limit

    # ---- worker -------------------------------------------------------------------------------

    def _running_worker(self) -> WorkerProcess:
        if self._worker is None or not self._worker.alive:
            if self._worker is not None:
                self._worker.stop()  # reap a worker that died while idle
            # Injected faults (utils/engine/fault_injection.py) the earlier workers left; None: not read yet.
            faults_left = self._last_worker.faults_left if self._last_worker else None
            self._worker = WorkerProcess(self.settings, faults_left)
            self._last_worker = self._worker
        return self._worker

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    @property
    def resident_models(self) -> list[str]:
        return list(self._worker.resident) if self._worker is not None else []

    def set_local_path(self, model: str, path: str | None) -> None:
        """Load `model` from this snapshot folder from now on, in either profile; the worker restarts
        because it holds its own copy of the settings."""
        def changed(settings: Settings) -> Settings:
            settings = settings.model_copy(deep=True)
            settings.model(model).local_path = path
            return settings

        on_fallback = self._on_fallback()
        self._configured, self._fallback = changed(self._configured), changed(self._fallback)
        self.settings = self._fallback if on_fallback else self._configured
        self._stop_worker()

    # ---- requests -----------------------------------------------------------------------------

    def _smaller(self, model: str, task: str, options: RunOptions) -> RunOptions | None:
        """The next rung down, below the request's or else the model's own budget: pixel budget first
        (it frees the most), then the token cap."""
        guard, defaults = self.settings.guard, self.settings.model(model).options
        pixels = _next_step(guard.oom_pixel_steps, options.max_pixels or _model_budget(defaults, "max_pixels", task))
        if pixels is not None:
            return options.model_copy(update={"max_pixels": pixels})
        tokens = _next_step(guard.oom_token_steps,
                            options.max_new_tokens or _model_budget(defaults, "max_new_tokens", task))
        if tokens is not None:
            return options.model_copy(update={"max_new_tokens": tokens})
        return None

    def _detail(self, outcome: Outcome) -> str:
        if outcome.kind == "hang":
            return f"no answer within the deadline; worker killed (exit code {outcome.exitcode})"
        if outcome.kind == "died":
            return f"worker exited with code {outcome.exitcode}"
        reply = outcome.reply
        code = f" (CUDA error {reply.code})" if reply.code is not None else ""
        detail = f"{reply.error_type.rpartition(':')[2]}{code}: {reply.message}"
        if outcome.kind == "unsupported_arch":
            info = self._preflight
            detail += " " + preflight.build_hint(info.capability if info else None,
                                                 info.torch_version if info else None, info.arch_list if info else [])
        return detail

    def run(self, model: str, image: Image.Image, task: str, options: RunOptions | None,
            on_token: TokenCallback | None) -> PageResult:
        if self._closed:
            raise RuntimeError("the model loader is closed")
        self.ensure_profile()
        options = options or RunOptions()
        failures = 0
        recovered: list[RecoveryEvent] = []
        streamed = False

        def forward(text: str) -> None:
            nonlocal streamed
            streamed = True
            on_token(text)

        while True:
            worker = self._running_worker()
            guard = self.settings.guard
            timeout = self.settings.model(model).timeout_s or (
                guard.request_timeout_s + (0 if model in worker.resident else guard.load_timeout_s))
            # A retry streams only if nothing was streamed yet: the caller must not see the text twice.
            outcome = worker.request(model, image, task, options, forward if on_token and not streamed else None,
                                     timeout)
            if outcome.kind not in ("ok", "error"):
                event, options, failed = self._recover(model, task, options, outcome, failures)
                recovered.append(event)
                failures += failed
            if outcome.callback_error is not None:
                raise outcome.callback_error
            if outcome.kind == "ok":
                result = outcome.reply.result
                result.warnings.extend(f"recovered from {e.kind}: {e.action}" for e in recovered)
                return result
            if outcome.kind == "error":
                raise outcome.reply.exception()
            if options is None:
                raise RequestFailed(f"{model}: {recovered[-1].detail} ({recovered[-1].action})")

    def _recover(self, model: str, task: str, options: RunOptions, outcome: Outcome,
                 failures: int) -> tuple[RecoveryEvent, RunOptions | None, bool]:
        """One failed attempt -> its event, the options to retry with (None: give up), and whether it
        counts towards the two attempts a request gets (a profile switch or a smaller budget does not)."""
        profile = self.settings.profile.name
        detail = self._detail(outcome)
        kind = outcome.kind
        if kind == "oom":
            smaller = self._smaller(model, task, options)
            if smaller is None:
                return self._log("oom", "return the error: already at the smallest budget", model, detail), None, True
            budget = f"max_pixels={smaller.max_pixels}, max_new_tokens={smaller.max_new_tokens}"
            return self._log("oom", f"retry on the same worker with {budget}", model, detail), smaller, False
        self._stop_worker()  # it has exited or been killed already; this closes its pipe
        if kind in ("fatal", "died") and self._gpu_lost():
            kind, detail = "gpu_lost", f"{detail}; NVML no longer shows the GPU"
        switch_reason = None
        if kind in ("unsupported_arch", "gpu_lost"):
            switch_reason = detail
        elif kind == "fatal" and self._fatal_limit_reached():
            guard = self.settings.guard
            switch_reason = f"{guard.fatal_limit} sticky CUDA errors within {guard.fatal_window_s:g} s"
        if switch_reason is not None and not self._on_fallback():
            self._switch_to_cpu(switch_reason)
            action = f"switch to the CPU profile ({self.settings.profile.name}) for good and retry"
            return self._log(EVENT_KINDS[kind], action, model, detail, profile), options, False
        if failures >= 1:
            return self._log(EVENT_KINDS[kind], "return the error: failed on two fresh workers (poison request)",
                             model, detail, profile), None, True
        return self._log(EVENT_KINDS[kind], "respawn the worker and retry once", model, detail, profile), options, True

    # ---- state --------------------------------------------------------------------------------

    def system_info(self) -> SystemInfo:
        self.ensure_profile()
        worker = self._last_worker
        if worker is None:
            state, pid = "not started", None
        elif worker.alive:
            state, pid = "running", worker.pid
        else:
            state, pid = f"exited (code {worker.exitcode})", worker.pid
        return SystemInfo(preflight=self._preflight, profile=self.settings.profile.name,
                          device=self.settings.profile.device, fallback_reason=self._fallback_reason,
                          worker_pid=pid, worker_state=state, resident_models=self.resident_models)

    def healthy(self) -> bool:
        """False only once closed: a dead worker is replaced at the next request."""
        return not self._closed

    def close(self) -> None:
        self._closed = True
        self._stop_worker()
