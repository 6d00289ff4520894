"""The recovery policy as a table: (failure, state) -> action, event, text and the state after it."""
from __future__ import annotations

import pytest

from utils.engine.recovery import Budget, Failure, Limits, State, Step, decide, smaller_budget

LIMITS = Limits(fatal_limit=3, fatal_window_s=600)
SMALLER = Budget(max_pixels=501_760, max_new_tokens=None)
NVML_NOTE = "; NVML no longer shows the GPU"

# id, failure kind, state before, expected step, event kind, text starts with, failures after, on CPU after
CASES = [
    ("oom retries smaller", "oom", State(smaller=SMALLER),
     Step.RETRY_SMALLER, "oom", "retry on the same worker with max_pixels=501760, max_new_tokens=None", 0, False),
    ("oom after a respawn still retries smaller", "oom", State(failures=1, smaller=SMALLER),
     Step.RETRY_SMALLER, "oom", "retry on the same worker", 1, False),
    ("oom at the smallest budget gives up", "oom", State(),
     Step.GIVE_UP, "oom", "return the error: already at the smallest budget", 1, False),
    ("oom on the CPU profile is no reason to switch", "oom", State(on_cpu_profile=True, smaller=SMALLER),
     Step.RETRY_SMALLER, "oom", "retry on the same worker", 0, True),
    ("sticky error respawns", "fatal", State(),
     Step.RESPAWN, "cuda_fatal", "respawn the worker and retry once", 1, False),
    ("sticky error twice is a poison request", "fatal", State(failures=1),
     Step.GIVE_UP, "cuda_fatal", "return the error: failed on two fresh workers (poison request)", 2, False),
    ("hang respawns", "hang", State(),
     Step.RESPAWN, "hang", "respawn the worker and retry once", 1, False),
    ("hang twice gives up", "hang", State(failures=1),
     Step.GIVE_UP, "hang", "return the error: failed on two fresh workers", 2, False),
    ("dead worker respawns", "died", State(),
     Step.RESPAWN, "worker_died", "respawn the worker and retry once", 1, False),
    ("dead worker twice gives up", "died", State(failures=1),
     Step.GIVE_UP, "worker_died", "return the error", 2, False),
    ("no kernel image switches to the CPU", "unsupported_arch", State(),
     Step.SWITCH_TO_CPU, "unsupported_arch", "switch to the CPU profile for good and retry", 0, True),
    ("no kernel image after a respawn still switches", "unsupported_arch", State(failures=1),
     Step.SWITCH_TO_CPU, "unsupported_arch", "switch to the CPU profile", 1, True),
    ("no kernel image on the CPU profile respawns", "unsupported_arch", State(on_cpu_profile=True),
     Step.RESPAWN, "unsupported_arch", "respawn the worker", 1, True),
    ("GPU gone (CUDA 100) switches", "gpu_lost", State(),
     Step.SWITCH_TO_CPU, "gpu_lost", "switch to the CPU profile", 0, True),
    ("sticky error with the GPU gone from NVML switches", "fatal", State(gpu_lost=True),
     Step.SWITCH_TO_CPU, "gpu_lost", "switch to the CPU profile", 0, True),
    ("dead worker with the GPU gone from NVML switches", "died", State(gpu_lost=True),
     Step.SWITCH_TO_CPU, "gpu_lost", "switch to the CPU profile", 0, True),
    ("a hang says nothing about the GPU", "hang", State(gpu_lost=True),
     Step.RESPAWN, "hang", "respawn the worker", 1, False),
    ("the third sticky error in the window switches", "fatal", State(fatal_times=(500.0, 900.0)),
     Step.SWITCH_TO_CPU, "cuda_fatal", "switch to the CPU profile", 0, True),
    ("sticky errors outside the window do not count", "fatal", State(fatal_times=(100.0, 300.0)),
     Step.RESPAWN, "cuda_fatal", "respawn the worker", 1, False),
    ("the limit on the CPU profile is a respawn", "fatal", State(on_cpu_profile=True, fatal_times=(500.0, 900.0)),
     Step.RESPAWN, "cuda_fatal", "respawn the worker", 1, True),
]


@pytest.mark.parametrize("kind, state, step, event, text, failures, on_cpu", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_policy_table(kind, state, step, event, text, failures, on_cpu):
    decision = decide(Failure(kind, "what happened", at=1000.0), state, LIMITS)
    action = decision.action
    assert (action.step, action.event) == (step, event)
    assert action.text.startswith(text)
    assert (decision.state.failures, decision.state.on_cpu_profile) == (failures, on_cpu)
    assert (action.budget is not None) == (step is Step.RETRY_SMALLER)
    assert (action.cpu_reason is not None) == (step is Step.SWITCH_TO_CPU)
    assert action.detail == "what happened" + (NVML_NOTE if event == "gpu_lost" and kind != "gpu_lost" else "")


@pytest.mark.parametrize("times, at, limit, window, kept, switch", [
    ((), 10.0, 3, 600, (10.0,), False),
    ((5.0,), 10.0, 2, 600, (5.0, 10.0), True),
    ((5.0, 8.0), 700.0, 3, 600, (700.0,), False),       # both older than the window
    ((100.0, 650.0), 700.0, 3, 600, (100.0, 650.0, 700.0), True),  # exactly at the edge still counts
    ((), 10.0, 1, 600, (10.0,), True),
])
def test_sticky_error_window(times, at, limit, window, kept, switch):
    decision = decide(Failure("fatal", "CUDA error 710", at=at), State(fatal_times=times), Limits(limit, window))
    assert decision.state.fatal_times == kept
    assert (decision.action.step is Step.SWITCH_TO_CPU) == switch
    if switch:
        assert decision.action.cpu_reason == f"{limit} sticky CUDA errors within {window:g} s"


def test_only_sticky_errors_enter_the_window():
    for kind in ("oom", "hang", "died", "unsupported_arch"):
        assert decide(Failure(kind, "x", at=5.0), State(fatal_times=(1.0,), smaller=SMALLER),
                      LIMITS).state.fatal_times == (1.0,)


def test_the_switch_reason_of_an_unusable_gpu_is_its_detail():
    decision = decide(Failure("fatal", "CUDA error 700", at=1.0), State(gpu_lost=True), LIMITS)
    assert decision.action.cpu_reason == "CUDA error 700" + NVML_NOTE


PIXELS, TOKENS = [1_003_520, 501_760, 250_880], [2048, 1024, 512]


@pytest.mark.parametrize("requested, default, expected", [
    (Budget(), Budget(), Budget(1_003_520, None)),                         # no budget at all: the largest step
    (Budget(), Budget(1_605_632, 4096), Budget(1_003_520, None)),          # below the model's own budget
    (Budget(501_760, None), Budget(1_605_632, 4096), Budget(250_880, None)),
    (Budget(250_880, None), Budget(1_605_632, 4096), Budget(250_880, 2048)),  # pixels exhausted: tokens
    (Budget(250_880, 2048), Budget(), Budget(250_880, 1024)),
    (Budget(250_880, 512), Budget(), None),                                 # nothing smaller
    (Budget(), Budget(200_000, 300), None),                                 # the model is below every step
    (Budget(2_000_000, None), Budget(200_000, None), Budget(1_003_520, None)),  # the request's budget wins
])
def test_smaller_budget(requested, default, expected):
    assert smaller_budget(requested, default, PIXELS, TOKENS) == expected


def test_decide_changes_nothing_it_is_given():
    state = State(failures=0, fatal_times=(1.0,))
    first = decide(Failure("fatal", "x", at=2.0), state, LIMITS)
    second = decide(Failure("fatal", "x", at=2.0), state, LIMITS)
    assert first == second and state == State(failures=0, fatal_times=(1.0,))
