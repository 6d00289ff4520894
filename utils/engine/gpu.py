"""GPU readings through NVML (nvidia-ml-py). Never initialises CUDA, so any process may call it.

No library, no driver, no GPU or a reading the card does not support all end quietly: an empty list,
or a None field, and a one-line note saying why.
"""
from __future__ import annotations

from pydantic import BaseModel

MIB = 1024 * 1024


class GpuReading(BaseModel):
    index: int
    name: str
    uuid: str | None = None
    capability: str | None = None  # "8.9"
    memory_used_mb: float | None = None
    memory_free_mb: float | None = None
    memory_total_mb: float | None = None
    utilization_pct: float | None = None
    temperature_c: float | None = None


class NvmlSnapshot(BaseModel):
    readings: list[GpuReading] = []
    driver: str | None = None
    note: str = ""  # why there are no readings, when there are none


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reading(nvml, index: int) -> GpuReading | None:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except nvml.NVMLError:  # a lost or inaccessible GPU has no handle: it is not there for us
        return None

    def field(read):
        try:
            return read()
        except nvml.NVMLError:  # "not supported" on this card or in this container
            return None

    memory = field(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    capability = field(lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
    utilization = field(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    uuid = field(lambda: nvml.nvmlDeviceGetUUID(handle))
    return GpuReading(
        index=index,
        name=_text(field(lambda: nvml.nvmlDeviceGetName(handle)) or f"GPU {index}"),
        uuid=_text(uuid) if uuid else None,
        capability=f"{capability[0]}.{capability[1]}" if capability else None,
        memory_used_mb=round(memory.used / MIB, 1) if memory else None,
        memory_free_mb=round(memory.free / MIB, 1) if memory else None,
        memory_total_mb=round(memory.total / MIB, 1) if memory else None,
        utilization_pct=float(utilization.gpu) if utilization else None,
        temperature_c=field(lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
    )


def snapshot() -> NvmlSnapshot:
    try:
        import pynvml as nvml
    except ImportError:
        return NvmlSnapshot(note="nvidia-ml-py is not installed")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:  # no driver / no library: a machine without an NVIDIA GPU
        return NvmlSnapshot(note=f"NVML unavailable: {exc}")
    try:
        try:
            count = nvml.nvmlDeviceGetCount()
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError as exc:
            return NvmlSnapshot(note=f"NVML unavailable: {exc}")
        readings = [r for r in (_reading(nvml, i) for i in range(count)) if r is not None]
        return NvmlSnapshot(readings=readings, driver=driver, note="" if readings else "no NVIDIA GPU found")
    finally:
        nvml.nvmlShutdown()


def readings() -> list[GpuReading]:
    return snapshot().readings
