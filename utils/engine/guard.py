"""The guard: owns the worker processes, carries out the recovery policy, and logs every transition.

Two lanes, each one worker process with a first-come-first-served queue in front of it: the classic
CPU engines (Tesseract, RapidOCR: kept resident together) and the models that may use the GPU
(guard.max_resident_models at a time). A Tesseract page never waits behind a VLM page; a caller that
must wait is told how many requests are ahead of it.

What to do after a failed attempt is decided by the pure policy in utils/engine/recovery.py (retry
smaller, respawn, switch to the CPU profile, give up); this module only carries the actions out.
Ordinary errors (bad input, unsupported task, model unavailable) reach the caller as the worker's own
exception type and one-line message; the worker stays.

The GPU preflight runs in a background thread from the moment the guard is created, so nothing that
only shows the status waits for it; requests do. Injected faults (utils/engine/fault_injection.py)
are chosen here and sent with the request.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import cast

from PIL import Image
from pydantic import BaseModel, Field

from models.contract import PageResult, RunOptions, TokenCallback
from models.registry import adapter_class
from utils.config import Settings
from utils.engine import gpu, preflight
from utils.engine.fault_injection import FaultPlan
from utils.engine.recovery import (
    Action,
    Budget,
    EventKind,
    Failure,
    FailureKind,
    Limits,
    State,
    Step,
    decide,
    smaller_budget,
)
from utils.engine.worker import Outcome, WorkerProcess
from utils.messages import one_line

EVENT_LOG_SIZE = 500
CHECKING = "checking GPU…"  # the profile's name until the preflight has decided it
ENGINES, MODELS = "CPU engines", "models"  # the lanes

# Told the number of requests ahead of the caller's whenever it changes, and 0 when its turn comes.
WaitCallback = Callable[[int], None]


class RecoveryEvent(BaseModel):
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    kind: EventKind
    action: str
    model: str | None = None
    profile: str
    detail: str = ""


class RequestFailed(RuntimeError):
    """The request could not be answered even after recovery; the message says why."""


class WorkerInfo(BaseModel):
    lane: str
    pid: int | None = None
    state: str
    resident_models: list[str] = Field(default_factory=list)
    requests: int = 0  # in this lane now: the one running and those waiting


class SystemInfo(BaseModel):
    preflight: preflight.PreflightResult | None  # None while the GPU is being checked
    profile: str
    device: str
    fallback_reason: str | None = None  # why the CPU profile is in use
    fell_back: bool = False  # a GPU fault or an unusable GPU caused it, not simply the lack of a GPU
    workers: list[WorkerInfo]
    last_lane: str | None = None  # the lane of the latest request
    fault_injection: str | None = None  # OCR_FAULT_INJECT's kind, when set
    faults_left: int = 0  # requests it will still fault

    def last_worker(self) -> WorkerInfo | None:
        """The worker that took the latest request."""
        return next((w for w in self.workers if w.lane == self.last_lane), None)

    @property
    def worker_pid(self) -> int | None:
        last = self.last_worker()
        return last.pid if last else None

    @property
    def worker_state(self) -> str:
        last = self.last_worker()
        return last.state if last else "not started"

    @property
    def resident_models(self) -> list[str]:
        return [name for worker in self.workers for name in worker.resident_models]


def _model_budget(options: dict, key: str, task: str) -> int | None:
    """A model option like max_pixels / max_new_tokens: one number, or one per task."""
    value = options.get(key)
    if isinstance(value, dict):
        value = value.get(task)
    return value if isinstance(value, int) else None


class Lane:
    """One worker process and the queue of requests in front of it, served in order of arrival."""

    def __init__(self, name: str, max_resident: int):
        self.name = name
        self.max_resident = max_resident
        self.worker: WorkerProcess | None = None
        self.last_worker: WorkerProcess | None = None  # what the System page shows after a death
        self._changed = threading.Condition()
        self._queue: deque[object] = deque()

    @property
    def requests(self) -> int:
        return len(self._queue)

    @contextmanager
    def turn(self, on_wait: WaitCallback | None) -> Iterator[None]:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
        try:
            self._wait_for(ticket, on_wait)
            yield
        finally:
            with self._changed:
                self._queue.remove(ticket)
                self._changed.notify_all()

    def _wait_for(self, ticket: object, on_wait: WaitCallback | None) -> None:
        told = 0
        while True:
            with self._changed:
                ahead = self._queue.index(ticket)
                if ahead and ahead == told:
                    self._changed.wait()
                    continue
            if ahead != told and on_wait is not None:
                on_wait(ahead)  # outside the lock: a slow caller must not hold up the queue
            told = ahead
            if not ahead:
                return

    def info(self) -> WorkerInfo:
        worker = self.last_worker
        if worker is None:
            state, pid = "not started", None
        elif worker.alive:
            state, pid = "running", worker.pid
        else:
            state, pid = f"exited (code {worker.exitcode})", worker.pid
        resident = list(self.worker.resident) if self.worker is not None else []
        return WorkerInfo(lane=self.name, pid=pid, state=state, resident_models=resident, requests=self.requests)


class Guard:
    def __init__(self, settings: Settings, fallback: Settings):
        self._configured = settings
        self._fallback = fallback
        self.settings = settings
        self._state = threading.Lock()  # the profile and the sticky-error times, shared by the lanes
        self._preflight: preflight.PreflightResult | None = None
        self._preflight_done = threading.Event()
        self._fallback_reason: str | None = None
        self._fell_back = False
        self._events: deque[RecoveryEvent] = deque(maxlen=EVENT_LOG_SIZE)
        self._fatal_times: tuple[float, ...] = ()
        self._faults = FaultPlan()
        engines = sum(adapter_class(spec).cpu_engine for spec in settings.models.values())
        self._lanes = {ENGINES: Lane(ENGINES, max(engines, 1)),
                       MODELS: Lane(MODELS, settings.guard.max_resident_models)}
        self._last_lane: str | None = None
        self._closed = False
        threading.Thread(target=self._run_preflight, name="gpu-preflight", daemon=True).start()

    # ---- profile ------------------------------------------------------------------------------

    def _run_preflight(self) -> None:
        try:
            result = preflight.run(self._configured)
        except Exception as exc:  # without an answer the GPU is not trusted; the app must still start
            result = preflight.PreflightResult(cuda_usable=False, reason=f"GPU preflight failed: {one_line(exc)}",
                                               device_setting=self._configured.profile.device)
        with self._state:
            self._preflight = result
            if not result.cuda_usable and self._configured.profile.device != "cpu":
                # A GPU that cannot be used is a fallback, and news; no GPU at all is simply the CPU profile.
                self._switch_to_cpu(result.reason, fell_back=result.gpu_present)
                if result.gpu_present:
                    self._log("preflight", "start on the CPU profile", None,
                              f"{result.reason}. {result.fix or ''}".strip(), profile=self._configured.profile.name)
        self._preflight_done.set()

    def wait_for_preflight(self, timeout: float | None = None) -> preflight.PreflightResult | None:
        """The preflight's result once it is there; None if `timeout` seconds passed first."""
        self._preflight_done.wait(timeout)
        return self._preflight

    @property
    def checking_gpu(self) -> bool:
        return not self._preflight_done.is_set()

    @property
    def profile_name(self) -> str:
        """Never waits: CHECKING until the preflight has decided the profile."""
        return CHECKING if self.checking_gpu else self.settings.profile.name

    def _on_fallback(self) -> bool:
        return self.settings is self._fallback

    def _switch_to_cpu(self, reason: str, fell_back: bool) -> None:
        self.settings = self._fallback
        self._fallback_reason = reason
        self._fell_back = fell_back

    def _gpu_lost(self) -> bool:
        """NVML no longer shows the GPU the preflight used (it does not need a CUDA context)."""
        if self._preflight is None or not self._preflight.gpu_present or self._on_fallback():
            return False
        present = gpu.readings()
        if self._preflight.device_uuid:
            return not any(r.uuid and self._preflight.device_uuid in r.uuid for r in present)
        return not present

    # ---- events -------------------------------------------------------------------------------

    def _log(self, kind: EventKind, action: str, model: str | None, detail: str,
             profile: str | None = None) -> RecoveryEvent:
        event = RecoveryEvent(kind=kind, action=action, model=model, detail=detail,
                              profile=profile or self.settings.profile.name)
        self._events.append(event)
        return event

    def events(self) -> list[RecoveryEvent]:
        return list(self._events)

    # ---- workers ------------------------------------------------------------------------------

    def _lane_for(self, model: str) -> Lane:
        return self._lanes[ENGINES if adapter_class(self.settings.model(model)).cpu_engine else MODELS]

    def _running_worker(self, lane: Lane) -> WorkerProcess:
        worker = lane.worker
        if worker is not None and (not worker.alive or worker.settings is not self.settings):
            self._stop_worker(lane)  # died while idle, or made for another profile or snapshot folder
        if lane.worker is None:
            lane.worker = lane.last_worker = WorkerProcess(self.settings, lane.max_resident)
        return lane.worker

    @staticmethod
    def _stop_worker(lane: Lane) -> None:
        if lane.worker is not None:
            lane.worker.stop()
            lane.worker = None

    @property
    def resident_models(self) -> list[str]:
        return [name for lane in self._lanes.values() if lane.worker for name in lane.worker.resident]

    def requests_ahead(self, model: str) -> int:
        """How many requests a request for `model` made now would wait behind."""
        return self._lane_for(model).requests

    def set_local_path(self, model: str, path: str | None) -> None:
        """Load `model` from this snapshot folder from now on, in either profile; the workers restart
        because each holds its own copy of the settings."""
        def changed(settings: Settings) -> Settings:
            settings = settings.model_copy(deep=True)
            settings.model(model).local_path = path
            return settings

        self._preflight_done.wait()  # the preflight may still switch the profile
        with self._state:
            on_fallback = self._on_fallback()
            self._configured, self._fallback = changed(self._configured), changed(self._fallback)
            self.settings = self._fallback if on_fallback else self._configured
        for lane in self._lanes.values():
            with lane.turn(None):
                self._stop_worker(lane)

    # ---- requests -----------------------------------------------------------------------------

    def run(self, model: str, image: Image.Image | Sequence[Image.Image], task: str, options: RunOptions | None,
            on_token: TokenCallback | None, on_wait: WaitCallback | None = None) -> PageResult:
        """`image`: the page, or for task "chat" the list of pages the conversation is about."""
        images = list(image) if isinstance(image, Sequence) else [image]
        if self._closed:
            raise RuntimeError("the model loader is closed")
        lane = self._lane_for(model)
        self._preflight_done.wait()
        with lane.turn(on_wait):
            if self._closed:
                raise RuntimeError("the model loader is closed")
            self._last_lane = lane.name
            return self._serve(lane, model, images, task, options or RunOptions(), on_token)

    def _serve(self, lane: Lane, model: str, images: list[Image.Image], task: str, options: RunOptions,
               on_token: TokenCallback | None) -> PageResult:
        failures = 0
        recovered: list[RecoveryEvent] = []
        streamed = False

        def forward(text: str) -> None:
            nonlocal streamed
            streamed = True
            assert on_token is not None
            on_token(text)

        while True:
            fault = self._faults.take()  # first: a bad OCR_FAULT_INJECT fails the request before a worker starts
            worker = self._running_worker(lane)
            guard = self.settings.guard
            timeout = self.settings.model(model).timeout_s or (
                guard.request_timeout_s + (0 if model in worker.resident else guard.load_timeout_s))
            # A retry streams only if nothing was streamed yet: the caller must not see the text twice.
            outcome = worker.request(model, images, task, options, forward if on_token and not streamed else None,
                                     timeout, fault)
            action = None
            if outcome.kind not in ("ok", "error"):
                event, action, failures = self._recover(lane, model, task, options, outcome, failures)
                recovered.append(event)
            if outcome.callback_error is not None:
                raise outcome.callback_error
            if action is None:  # the worker answered
                assert outcome.reply is not None
                if outcome.reply.result is None:
                    raise outcome.reply.exception()
                result = outcome.reply.result
                result.warnings.extend(f"recovered from {e.kind}: {e.action}" for e in recovered)
                return result
            if action.step is Step.GIVE_UP:
                raise RequestFailed(f"{model}: {event.detail} ({event.action})")
            if action.budget is not None:
                options = options.model_copy(update={"max_pixels": action.budget.max_pixels,
                                                     "max_new_tokens": action.budget.max_new_tokens})

    def _recover(self, lane: Lane, model: str, task: str, options: RunOptions, outcome: Outcome,
                 failures: int) -> tuple[RecoveryEvent, Action, int]:
        """Asks the policy what one failed attempt calls for and does it, but for the retry itself:
        the event, the action, and the request's failures so far."""
        profile = self.settings.profile.name
        guard, defaults = self.settings.guard, self.settings.model(model).options
        smaller = smaller_budget(Budget(options.max_pixels, options.max_new_tokens),
                                 Budget(_model_budget(defaults, "max_pixels", task),
                                        _model_budget(defaults, "max_new_tokens", task)),
                                 guard.oom_pixel_steps, guard.oom_token_steps)
        failure = Failure(cast(FailureKind, outcome.kind), self._detail(outcome), time.monotonic())
        with self._state:
            state = State(failures=failures, on_cpu_profile=self._on_fallback(), gpu_lost=self._gpu_lost(),
                          smaller=smaller, fatal_times=self._fatal_times)
            decision = decide(failure, state, Limits(guard.fatal_limit, guard.fatal_window_s))
            action = decision.action
            self._fatal_times = decision.state.fatal_times
            if action.step is Step.SWITCH_TO_CPU:
                self._switch_to_cpu(action.cpu_reason or action.detail, fell_back=True)
        worker = lane.worker
        if action.step in (Step.RESPAWN, Step.SWITCH_TO_CPU) or (worker is not None and not worker.alive):
            self._stop_worker(lane)  # it has exited or been killed already; this closes its pipe
        event = self._log(action.event, action.text, model, action.detail, profile)
        return event, action, decision.state.failures

    def _detail(self, outcome: Outcome) -> str:
        if outcome.kind == "hang":
            return f"no answer within the deadline; worker killed (exit code {outcome.exitcode})"
        if outcome.kind == "died" or outcome.reply is None:
            return f"worker exited with code {outcome.exitcode}"
        reply = outcome.reply
        code = f" (CUDA error {reply.code})" if reply.code is not None else ""
        detail = f"{reply.error_type.rpartition(':')[2]}{code}: {reply.message}"
        if outcome.kind == "unsupported_arch":
            info = self._preflight
            detail += " " + preflight.build_hint(info.capability if info else None,
                                                 info.torch_version if info else None, info.arch_list if info else [])
        return detail

    # ---- state --------------------------------------------------------------------------------

    def system_info(self) -> SystemInfo:
        """Never waits for the preflight: `preflight` is None while it runs."""
        checking = self.checking_gpu
        return SystemInfo(preflight=None if checking else self._preflight, profile=self.profile_name,
                          device=self.settings.profile.device, fallback_reason=self._fallback_reason,
                          fell_back=self._fell_back, workers=[lane.info() for lane in self._lanes.values()],
                          last_lane=self._last_lane, fault_injection=self._faults.kind, faults_left=self._faults.left)

    def healthy(self) -> bool:
        """False only once closed: a dead worker is replaced at the next request."""
        return not self._closed

    def close(self) -> None:
        """Requests already queued still end (with an error); the workers stop once each lane is free."""
        self._closed = True
        for lane in self._lanes.values():
            with lane.turn(None):
                self._stop_worker(lane)
