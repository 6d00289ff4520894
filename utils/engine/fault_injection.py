"""Faults for tests, raised inside the worker where the adapter would run: OCR_FAULT_INJECT=kind[:N].

The raised errors carry the types, codes and messages of the real ones, so the whole supervisor path
runs without a GPU. The parent decides (FaultPlan): it reads the variable once and sends the fault
with each of the first N requests it sends (default 1), whichever worker gets them, so the count
spans respawns and `device_assert:1` faults exactly one request while its retry on a fresh worker
succeeds. The worker only acts the fault out (act_out).
"""
from __future__ import annotations

import os
import signal
import threading

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


class FaultPlan:
    """Parent side: which request attempts get a fault. Thread-safe: several workers share one plan."""

    def __init__(self, value: str | None = None):
        """`value` is the variable's text; None reads it from the environment now."""
        value = (os.environ.get(ENV, "") if value is None else value).strip()
        self._lock = threading.Lock()
        self._error: str | None = None
        self.kind: str | None = None
        self.left = 0
        try:
            self.kind, self.left = parse(value) if value else (None, 0)
        except ValueError as exc:
            self._error = str(exc)

    def take(self) -> str | None:
        """The fault for the attempt about to be sent, if any; a bad spec is every request's error."""
        if self._error is not None:
            raise ValueError(self._error)
        with self._lock:
            if self.kind is None or self.left <= 0:
                return None
            self.left -= 1
            return self.kind


def act_out(kind: str) -> None:
    """Worker side: fail the way `kind` says, where the model would have run."""
    if kind == "oom":
        raise _out_of_memory()
    if kind in CUDA_ERRORS:
        raise _cuda_error(*CUDA_ERRORS[kind])
    if kind == "worker_kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        threading.Event().wait()  # for good: the guard's deadline kills this process
    raise ValueError(f"{ENV}: unknown fault kind {kind!r}")
