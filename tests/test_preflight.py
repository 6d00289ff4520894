"""Preflight probe: starting profile, architecture check, the throwaway CUDA probe and its deadline."""
from __future__ import annotations

import threading
import time

import psutil
import pytest

from tests.conftest import render_text_page
from utils.config import cached_settings
from utils.engine import gpu, preflight
from utils.engine.loader import CHECKING, Loader

GPU = gpu.GpuReading(index=0, name="NVIDIA GeForce RTX 5090", uuid="GPU-1", capability="12.0")


def settings_with(device: str, **guard):
    base = cached_settings()
    return base.model_copy(update={"profile": base.profile.model_copy(update={"device": device}),
                                   "guard": base.guard.model_copy(update=guard)})


def children() -> set[int]:
    """Probe processes still alive (other children, e.g. a browser test's chromium, come and go)."""
    found = set()
    for process in psutil.Process().children():  # the probe is a direct child
        try:
            if process.status() == psutil.STATUS_ZOMBIE or "utils.engine.preflight" in " ".join(process.cmdline()):
                found.add(process.pid)
        except psutil.ZombieProcess:  # an unreaped probe: exactly what must not be left behind
            found.add(process.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_cpu_profile_skips_the_cuda_checks(monkeypatch):
    monkeypatch.setattr(preflight, "_probe_cuda", lambda timeout: pytest.fail("probe must not run"))
    result = preflight.run(settings_with("cpu"))
    assert not result.cuda_usable and "skipped" in result.reason and result.torch_version is None


def test_no_nvidia_gpu_means_cpu_quietly(monkeypatch):
    monkeypatch.setattr(gpu, "snapshot", lambda: gpu.NvmlSnapshot(note="NVML unavailable: library not found"))
    monkeypatch.setattr(preflight, "_probe_cuda", lambda timeout: pytest.fail("probe must not run"))
    result = preflight.run(settings_with("auto"))
    assert not result.cuda_usable and not result.gpu_present and "no NVIDIA GPU" in result.reason


def test_probe_runs_cuda_checks_in_a_throwaway_process():
    """Forced with device=cuda: without a GPU torch says so; with one the tiny kernel has run."""
    before = children()
    result = preflight.run(settings_with("cuda"))
    assert result.torch_version and result.seconds > 0
    if result.cuda_usable:
        assert result.capability and result.memory_total_mb and preflight.arch_supported(result.capability,
                                                                                         result.arch_list)
    else:
        assert "is_available() is False" in result.reason
    assert children() <= before


@pytest.mark.gpu
def test_probe_finds_a_working_gpu():
    result = preflight.run(settings_with("auto"))
    assert result.cuda_usable and result.gpu_present and result.device_name, result.reason


def test_probe_past_its_deadline_is_killed():
    before = children()
    result = preflight.run(settings_with("cuda", probe_timeout_s=0.2))
    assert not result.cuda_usable and "did not finish within 0.2 s" in result.reason
    assert children() <= before


@pytest.mark.parametrize("capability, arch_list, ok", [
    ("8.9", ["sm_80", "sm_86", "sm_90"], True),       # sm_86 cubins run on 8.9
    ("12.0", ["sm_80", "sm_86", "sm_90"], False),     # Blackwell needs its own kernels
    ("12.0", ["sm_90", "sm_100", "sm_120"], True),
    ("12.0", ["sm_80", "compute_90"], True),          # PTX is JIT-compiled for newer GPUs
    ("7.5", ["sm_80", "sm_90a"], False),
    ("9.0", ["sm_90a"], True),
])
def test_architecture_check(capability, arch_list, ok):
    assert preflight.arch_supported(capability, arch_list) is ok


def test_build_hint_names_the_torch_build():
    hint = preflight.build_hint("12.0", "2.6.0+cu124", ["sm_80", "sm_90"])
    assert "sm_120" in hint and "cu128" in hint and "2.6.0+cu124" in hint


def unusable_gpu(settings):
    return preflight.PreflightResult(cuda_usable=False, device_setting="auto", gpu_present=True, gpus=[GPU],
                                     reason="CUDA unusable: torch has no kernels for sm_120",
                                     fix=preflight.build_hint("12.0", "2.6.0+cu124", ["sm_90"]))


def test_unusable_gpu_starts_on_the_cpu_profile_with_an_event(monkeypatch):
    monkeypatch.setattr(preflight, "run", unusable_gpu)
    loader = Loader(settings_with("auto"))
    try:
        loader.wait_for_preflight()
        assert loader.profile_name == "cpu"
        [event] = loader.recovery_events()
        assert event.kind == "preflight" and "cu128" in event.detail
        info = loader.system_info()
        assert info.worker_state == "not started" and info.preflight.gpus[0].name == GPU.name
        assert info.fell_back and info.fallback_reason == "CUDA unusable: torch has no kernels for sm_120"
    finally:
        loader.close()


def test_no_gpu_starts_on_the_cpu_profile_without_an_event(monkeypatch):
    monkeypatch.setattr(gpu, "snapshot", lambda: gpu.NvmlSnapshot(note="no NVIDIA GPU found"))
    loader = Loader(settings_with("auto"))
    try:
        loader.wait_for_preflight()
        assert loader.profile_name == "cpu" and loader.recovery_events() == []
        assert loader.system_info().fallback_reason.startswith("no NVIDIA GPU")
        assert not loader.system_info().fell_back  # no GPU is simply the CPU profile, not a fallback
    finally:
        loader.close()


def test_the_preflight_runs_in_the_background_and_only_requests_wait_for_it(monkeypatch):
    release = threading.Event()

    def slow_preflight(settings):
        release.wait(60)  # a CUDA probe can take seconds
        return preflight.PreflightResult(cuda_usable=False, reason="no NVIDIA GPU", device_setting="auto")

    monkeypatch.setattr(preflight, "run", slow_preflight)
    started = time.monotonic()
    loader = Loader(settings_with("auto"))
    try:
        assert loader.profile_name == CHECKING == "checking GPU…" and loader.checking_gpu
        info = loader.system_info()
        assert info.preflight is None and info.profile == CHECKING and info.worker_state == "not started"
        assert loader.catalog() and loader.recovery_events() == []
        assert time.monotonic() - started < 2
        assert loader.wait_for_preflight(timeout=0.1) is None

        results: list = []
        page = render_text_page(["Total 42"])
        request = threading.Thread(target=lambda: results.append(loader.run("tesseract", page)))
        request.start()
        request.join(1.5)
        assert request.is_alive() and loader.system_info().worker_state == "not started"  # waiting for the GPU check
        release.set()
        request.join(60)
        assert "42" in results[0].text and results[0].profile == "cpu"
        assert loader.profile_name == "cpu" and loader.wait_for_preflight(0).reason == "no NVIDIA GPU"
    finally:
        release.set()
        loader.close()


def test_a_preflight_that_breaks_leaves_the_app_on_the_cpu(monkeypatch):
    def broken(settings):
        raise OSError("no such file: nvidia-smi")

    monkeypatch.setattr(preflight, "run", broken)
    loader = Loader(settings_with("auto"))
    try:
        result = loader.wait_for_preflight(30)
        assert result is not None and result.reason == "GPU preflight failed: no such file: nvidia-smi"
        assert loader.profile_name == "cpu"
    finally:
        loader.close()
