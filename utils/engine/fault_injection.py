"""Faults for tests, raised inside the worker where the adapter would run: OCR_FAULT_INJECT=kind[:N].

The raised errors carry the types, codes and messages of the real ones, so the whole supervisor path
runs without a GPU. N (default 1) counts faulted requests across respawns: the worker reports each
fault it takes before acting on it, and the guard hands the remaining count to the next worker,
so `device_assert:1` faults exactly one request and its retry on a fresh worker succeeds.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

ENV = "OCR_FAULT_INJECT"
_SEARCH = ("\nSearch for `{name}' in https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html "
           "for more information.\nCUDA kernel errors might be asynchronously reported at some other API call, "
           "so the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
           "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")
# kind -> (CUDA error code, message) exactly as torch reports them.
CUDA_ERRORS = {
    "device_assert": (710, "CUDA error: device-side assert triggered" + _SEARCH.format(name="cudaErrorAssert")),
    "illegal_address": (700, "CUDA error: an illegal memory access was encountered"
                        + _SEARCH.format(name="cudaErrorIllegalAddress")),
    "no_kernel_image": (209, "CUDA error: no kernel image is available for execution on the device"
                        + _SEARCH.format(name="cudaErrorNoKernelImageForDevice")),
}
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which 1.05 GiB "
    "is free. Including non-PyTorch memory, this process has 22.49 GiB memory in use. Of the allocated memory "
    "21.87 GiB is allocated by PyTorch, and 205.35 MiB is reserved by PyTorch but unallocated. If reserved but "
    "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
    "fragmentation.  See documentation for Memory Management  "
    "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
KINDS = ("oom", *CUDA_ERRORS, "worker_kill", "hang")


def parse(value: str) -> tuple[str, int]:
    """'device_assert:5' -> ('device_assert', 5); a bare kind faults one request."""
    kind, _, count = value.strip().partition(":")
    if kind not in KINDS or (count and not count.isdigit()):
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(KINDS)}, optionally followed by :N")
    return kind, int(count) if count else 1


def _cuda_error(code: int, message: str) -> RuntimeError:
    try:
        import torch
    except ImportError:  # no torch: the guard still classifies the error by its message
        return RuntimeError(message)
    error_class = getattr(torch, "AcceleratorError", None)
    if error_class is None:  # torch before 2.8 raised a plain RuntimeError without a code
        return RuntimeError(message)
    error = error_class(message)
    error.error_code = code
    return error


def _out_of_memory() -> Exception:
    try:
        import torch
    except ImportError:
        return RuntimeError(OOM_MESSAGE)
    return torch.OutOfMemoryError(OOM_MESSAGE)


class FaultInjector:
    """Reads OCR_FAULT_INJECT in the worker. `faults_left` is what earlier workers left (None: none has
    read the variable yet); `on_take(left)` is told of each fault before it is acted on."""

    def __init__(self, faults_left: int | None, on_take: Callable[[int], None]):
        self._on_take = on_take
        self._kind: str | None = None
        self._error: ValueError | None = None
        value = os.environ.get(ENV, "").strip()
        try:
            self._kind, count = parse(value) if value else (None, 0)
        except ValueError as exc:
            self._error, count = exc, 0
        self._left = count if faults_left is None else faults_left

    def maybe_fault(self) -> None:
        if self._error is not None:
            raise ValueError(str(self._error))
        if self._kind is None or self._left <= 0:
            return
        self._left -= 1
        self._on_take(self._left)  # before acting: a killed or hung worker cannot report afterwards
        if self._kind == "oom":
            raise _out_of_memory()
        if self._kind in CUDA_ERRORS:
            raise _cuda_error(*CUDA_ERRORS[self._kind])
        if self._kind == "worker_kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self._kind == "hang":
            threading.Event().wait()  # for good: the guard's deadline kills this process
