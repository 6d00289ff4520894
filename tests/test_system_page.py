"""The System page and the sidebar's status, driven headless through AppTest on a machine without a GPU."""
from __future__ import annotations

import threading
import time

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from pages.ui import common
from utils.engine import gpu, machine, preflight

NO_NVML = "NVML unavailable: NVML Shared Library Not Found"


@pytest.fixture
def fresh_loader(monkeypatch):
    """The app's cached loader is made anew for this test, on a machine that has no NVIDIA GPU,
    and dropped afterwards so other tests get one made under their own conditions."""
    monkeypatch.setattr(gpu, "snapshot", lambda: gpu.NvmlSnapshot(note=NO_NVML))
    common._cached_loader.clear()
    yield
    common._cached_loader.clear()


def texts(at: AppTest) -> list[str]:
    elements = [*at.markdown, *at.caption, *at.info, *at.warning, *at.error, *at.success, *at.subheader]
    return [str(e.value) for e in elements] + [f"{m.label}: {m.value}" for m in at.metric]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_the_system_page_without_a_gpu_tells_a_cpu_user_what_they_need(app_test, fresh_loader, ru_en_png):
    at = app_test()
    at.file_uploader[0].upload("invoice.png", ru_en_png, "image/png").run()
    next(b for b in at.button if b.label.startswith("Run")).click().run()
    assert "Invoice number 4521" in at.text_area[0].value
    at.switch_page("pages/system.py").run()
    assert not at.exception, at.exception

    assert metric(at, "Profile") == "cpu"  # the CPU profile, not a "fallback": there was never a GPU
    shown = texts(at)
    assert not any("fallback" in t.lower() for t in shown), shown
    assert not any("NVML" in t for t in shown), shown
    assert sum("No NVIDIA GPU" in t for t in shown) == 1, shown
    assert "GPU monitor" not in shown

    assert metric(at, "CPU cores").startswith(str(psutil.cpu_count()))
    assert metric(at, "Memory free").endswith(" GiB")
    versions = dict(zip(at.dataframe[0].value["engine / library"], at.dataframe[0].value["version"]))
    assert versions["Tesseract (engine)"] == machine.tesseract_version() and versions["Tesseract (engine)"][0] == "5"
    for library in ("RapidOCR", "PyTorch", "Transformers"):
        assert versions[library] and versions[library] != "not installed"

    workers = at.dataframe[1].value.set_index("worker")
    engines = workers.loc["CPU engines"]
    assert engines["state"] == "running" and engines["resident models"] == "tesseract"
    assert psutil.pid_exists(int(engines["process id"])) and float(engines["memory (MiB)"].replace(",", "")) > 10
    assert workers.loc["models"]["state"] == "not started"
    assert "Profile: **cpu**" in [c.value for c in at.sidebar.caption]


def test_the_first_paint_does_not_wait_for_the_gpu_check(app_test, fresh_loader, monkeypatch):
    release = threading.Event()

    def slow_preflight(settings):
        release.wait(60)
        return preflight.PreflightResult(cuda_usable=False, reason="no NVIDIA GPU", device_setting="auto")

    monkeypatch.setattr(preflight, "run", slow_preflight)
    try:
        started = time.monotonic()
        at = app_test()
        assert time.monotonic() - started < 30  # first paint with the GPU check still running
        assert "Profile: **checking GPU…**" in [c.value for c in at.sidebar.caption]
        at.switch_page("pages/system.py").run()
        assert not at.exception
        assert metric(at, "Profile") == "checking GPU…"
        assert "Checking the GPU…" in [i.value for i in at.info]
    finally:
        release.set()
    common._cached_loader().wait_for_preflight(30)
    at.run()
    assert metric(at, "Profile") == "cpu" and "Profile: **cpu**" in [c.value for c in at.sidebar.caption]
    assert "No NVIDIA GPU: every model runs on the CPU." in [i.value for i in at.info]
