"""GPU monitor: NVML readings, quiet without a library, a driver, a GPU or a supported reading."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from tests.conftest import ROOT
from utils.engine import gpu


class NVMLError(Exception):
    pass


class NotSupported(NVMLError):
    pass


class GpuIsLost(NVMLError):
    pass


def fake_nvml(devices: list[dict], init_error: Exception | None = None) -> SimpleNamespace:
    """A stand-in for the pynvml module: each device dict gives its readings; an exception value raises."""
    calls = {"shutdown": 0}

    def value(handle, key):
        item = devices[handle][key]
        if isinstance(item, Exception):
            raise item
        return item

    def init():
        if init_error:
            raise init_error

    def handle_by_index(index):
        if devices[index].get("lost"):
            raise GpuIsLost("GPU is lost")
        return index

    return SimpleNamespace(
        NVMLError=NVMLError, NVML_TEMPERATURE_GPU=0, calls=calls,
        nvmlInit=init, nvmlShutdown=lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: len(devices), nvmlSystemGetDriverVersion=lambda: "580.65",
        nvmlDeviceGetHandleByIndex=handle_by_index,
        nvmlDeviceGetName=lambda h: value(h, "name"),
        nvmlDeviceGetUUID=lambda h: value(h, "uuid"),
        nvmlDeviceGetCudaComputeCapability=lambda h: value(h, "capability"),
        nvmlDeviceGetMemoryInfo=lambda h: value(h, "memory"),
        nvmlDeviceGetUtilizationRates=lambda h: value(h, "utilization"),
        nvmlDeviceGetTemperature=lambda h, sensor: value(h, "temperature"),
    )


RTX = {
    "name": b"NVIDIA GeForce RTX 4090", "uuid": "GPU-1234", "capability": (8, 9),
    "memory": SimpleNamespace(used=2 * gpu.MIB * 1024, free=22 * gpu.MIB * 1024, total=24 * gpu.MIB * 1024),
    "utilization": SimpleNamespace(gpu=37), "temperature": 61,
}


def test_readings_from_nvml(monkeypatch):
    nvml = fake_nvml([RTX])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    snap = gpu.snapshot()
    [reading] = snap.readings
    assert reading.name == "NVIDIA GeForce RTX 4090" and reading.capability == "8.9" and reading.uuid == "GPU-1234"
    assert (reading.memory_used_mb, reading.memory_total_mb, reading.memory_free_mb) == (2048, 24576, 22528)
    assert (reading.utilization_pct, reading.temperature_c) == (37, 61)
    assert snap.driver == "580.65" and snap.note == "" and nvml.calls["shutdown"] == 1


def test_unsupported_readings_are_none(monkeypatch):
    device = dict(RTX, utilization=NotSupported("Not Supported"), temperature=NotSupported("Not Supported"))
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([device]))
    [reading] = gpu.readings()
    assert reading.utilization_pct is None and reading.temperature_c is None
    assert reading.memory_total_mb == 24576


def test_a_lost_gpu_is_left_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([dict(RTX, lost=True), dict(RTX, uuid="GPU-5678")]))
    assert [r.uuid for r in gpu.readings()] == ["GPU-5678"]


def test_no_driver_is_quiet(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([], init_error=NVMLError("Driver Not Loaded")))
    snap = gpu.snapshot()
    assert snap.readings == [] and "Driver Not Loaded" in snap.note


def test_no_gpu_is_quiet(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([]))
    assert gpu.snapshot().note == "no NVIDIA GPU found"


def test_missing_library_is_quiet(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    snap = gpu.snapshot()
    assert snap.readings == [] and "not installed" in snap.note


def test_the_real_library_on_this_machine_never_imports_torch():
    code = "import sys; from utils.engine import gpu; gpu.snapshot(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
