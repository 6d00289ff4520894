"""The recovery policy: what the guard does after a failed attempt, as a pure function.

`decide(failure, state, limits)` looks at nothing but its arguments and returns the action with its
event kind and text, and the state after it; the guard (utils/engine/guard.py) carries the action out.
The policy (see shared/design/cuda-recovery.md):
- out of memory -> retry on the same worker at the next smaller budget (pixels first, then tokens);
  at the smallest budget the error is returned;
- sticky CUDA error, worker death, hang past the deadline -> a fresh worker retries once; a request
  that fails on two fresh workers is returned as an error (poison request);
- no kernel image for this GPU, GPU lost, or `fatal_limit` sticky errors within `fatal_window_s`
  -> the CPU profile for good, then retry (this attempt does not count as one of the two).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

FailureKind = Literal["oom", "fatal", "unsupported_arch", "gpu_lost", "hang", "died"]
EventKind = Literal["preflight", "oom", "cuda_fatal", "unsupported_arch", "gpu_lost", "hang", "worker_died"]
EVENT_KINDS: dict[str, EventKind] = {
    "oom": "oom", "fatal": "cuda_fatal", "unsupported_arch": "unsupported_arch", "gpu_lost": "gpu_lost",
    "hang": "hang", "died": "worker_died"}


class Step(StrEnum):
    RETRY_SMALLER = "retry_smaller"  # same worker, smaller budget
    RESPAWN = "respawn"  # fresh worker, same request
    SWITCH_TO_CPU = "switch_to_cpu"  # CPU profile for good, fresh worker, same request
    GIVE_UP = "give_up"  # the caller gets RequestFailed


@dataclass(frozen=True)
class Budget:
    """A request's own pixel budget and token cap (None: the model's default)."""

    max_pixels: int | None = None
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    detail: str  # what happened, one line: the event's detail
    at: float = 0.0  # monotonic seconds, for the sticky-error window


@dataclass(frozen=True)
class Limits:
    fatal_limit: int
    fatal_window_s: float


@dataclass(frozen=True)
class State:
    failures: int = 0  # attempts of this request that failed on a fresh worker
    on_cpu_profile: bool = False
    gpu_lost: bool = False  # NVML no longer lists the GPU the preflight found
    smaller: Budget | None = None  # this request's next budget down; None: already the smallest
    fatal_times: tuple[float, ...] = field(default=())  # recent sticky CUDA errors, oldest first


@dataclass(frozen=True)
class Action:
    step: Step
    event: EventKind
    text: str  # the event's action, as the recovery log shows it
    detail: str
    budget: Budget | None = None  # RETRY_SMALLER: the budget to retry with
    cpu_reason: str | None = None  # SWITCH_TO_CPU: why the GPU is given up


@dataclass(frozen=True)
class Decision:
    action: Action
    state: State  # the state after the action


def _next_step(steps: Sequence[int], current: int | None) -> int | None:
    smaller = [step for step in steps if current is None or step < current]
    return max(smaller) if smaller else None


def smaller_budget(requested: Budget, model_default: Budget, pixel_steps: Sequence[int],
                   token_steps: Sequence[int]) -> Budget | None:
    """The next rung down, below the request's or else the model's own budget: the pixel budget first
    (it frees the most), then the token cap. None: nothing smaller is configured."""
    pixels = _next_step(pixel_steps, requested.max_pixels or model_default.max_pixels)
    if pixels is not None:
        return replace(requested, max_pixels=pixels)
    tokens = _next_step(token_steps, requested.max_new_tokens or model_default.max_new_tokens)
    if tokens is not None:
        return replace(requested, max_new_tokens=tokens)
    return None


def decide(failure: Failure, state: State, limits: Limits) -> Decision:
    kind, detail = failure.kind, failure.detail
    if kind == "oom":
        if state.smaller is None:
            action = Action(Step.GIVE_UP, "oom", "return the error: already at the smallest budget", detail)
            return Decision(action, replace(state, failures=state.failures + 1))
        budget = f"max_pixels={state.smaller.max_pixels}, max_new_tokens={state.smaller.max_new_tokens}"
        action = Action(Step.RETRY_SMALLER, "oom", f"retry on the same worker with {budget}", detail,
                        budget=state.smaller)
        return Decision(action, state)
    if kind in ("fatal", "died") and state.gpu_lost:
        kind, detail = "gpu_lost", f"{detail}; NVML no longer shows the GPU"
    fatal_times = state.fatal_times
    cpu_reason = None
    if kind in ("unsupported_arch", "gpu_lost"):
        cpu_reason = detail
    elif kind == "fatal":
        fatal_times = (*(t for t in fatal_times if failure.at - t <= limits.fatal_window_s), failure.at)
        if len(fatal_times) >= limits.fatal_limit:
            cpu_reason = f"{limits.fatal_limit} sticky CUDA errors within {limits.fatal_window_s:g} s"
    event = EVENT_KINDS[kind]
    state = replace(state, fatal_times=fatal_times)
    if cpu_reason is not None and not state.on_cpu_profile:
        action = Action(Step.SWITCH_TO_CPU, event, "switch to the CPU profile for good and retry", detail,
                        cpu_reason=cpu_reason)
        return Decision(action, replace(state, on_cpu_profile=True))
    if state.failures >= 1:
        action = Action(Step.GIVE_UP, event, "return the error: failed on two fresh workers (poison request)",
                        detail)
    else:
        action = Action(Step.RESPAWN, event, "respawn the worker and retry once", detail)
    return Decision(action, replace(state, failures=state.failures + 1))
