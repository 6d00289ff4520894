"""A diagnostic adapter that makes the GPU fail for real, so the guard's recovery can be shown on a
real device-side assert and a real out-of-memory error (docs: /work/shared/design/cuda-recovery.md,
point 5). benchmarks/gpu_check.py registers it in its own settings; config.yaml never lists it.

- device_assert: indexes a 10-element CUDA tensor with arange(20): "CUDA error: device-side assert
  triggered" (710), which leaves the worker's CUDA context unusable. It faults once (a marker file
  records it), so the guard's retry on a fresh worker succeeds.
- oom: caps this process's CUDA memory with set_per_process_memory_fraction and allocates
  max_pixels x bytes_per_pixel bytes: over the cap at the configured budget, within it at the guard's
  next smaller pixel step, so the retry on the same worker succeeds.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from models.base import ModelAdapter
from models.contract import Availability, PageResult, RunOptions, TokenCallback
from models.registry import ModelSpec

MIB = 1024 * 1024


class GpuFaultOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fault: Literal["device_assert", "oom"]
    marker: str | None = Field(None, description="device_assert: faults only while this file does not exist")
    max_pixels: int = Field(2_000_000, gt=0, description="oom: the budget the guard lowers after the error")
    bytes_per_pixel: int = Field(512, gt=0)
    memory_cap_mb: int = Field(768, gt=0, description="oom: this process's CUDA memory cap while allocating")


class GpuFaultAdapter(ModelAdapter[GpuFaultOptions]):
    Options = GpuFaultOptions
    supported_tasks = ("text",)

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        if importlib.util.find_spec("torch") is None:
            return Availability(available=False, status="not installed", reason="torch is missing",
                                fix="pip install -r requirements.txt")
        return Availability(available=True, status="ready", reason="needs a CUDA GPU when run")

    def load(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("the GPU fault check needs a CUDA GPU")
        self.device = "cuda"

    def run(self, image: Image.Image, task: str, options: RunOptions,
            on_token: TokenCallback | None = None) -> PageResult:
        started = time.perf_counter()
        if self.options.fault == "device_assert":
            detail = self._device_assert()
        else:
            detail = self._out_of_memory(options.max_pixels or self.options.max_pixels)
        return self.result(task, text=detail, seconds=time.perf_counter() - started)

    def _device_assert(self) -> str:
        import torch

        marker = Path(self.options.marker) if self.options.marker else None
        if marker is not None and marker.exists():
            return "no fault: it was taken by an earlier worker"
        if marker is not None:
            marker.touch()  # before faulting: the worker does not outlive the fault
        values = torch.zeros(10, device="cuda")
        index = torch.arange(20, device="cuda")
        values[index].sum().item()  # the kernel asserts on the out-of-range index; item() waits for it
        return "no fault"

    def _out_of_memory(self, max_pixels: int) -> str:
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        wanted = max_pixels * self.options.bytes_per_pixel
        torch.cuda.set_per_process_memory_fraction(min(1.0, self.options.memory_cap_mb * MIB / total))
        try:
            block = torch.empty(wanted, dtype=torch.uint8, device="cuda")
            del block
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)  # the next model in this worker gets the whole card
            torch.cuda.empty_cache()
        return f"allocated {wanted / MIB:.0f} MiB at a budget of {max_pixels} px"


ADAPTER = GpuFaultAdapter
