"""The guard end to end: real supervisor, real worker process, tesseract, faults injected inside the worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable
from multiprocessing import Pipe

import psutil
import pytest
from PIL import Image

from models.contract import PageResult, RunOptions
from tests.conftest import ROOT, render_text_page
from utils.config import Settings, cached_settings
from utils.engine import fault_injection, gpu, preflight
from utils.engine.guard import RequestFailed
from utils.engine.loader import Loader
from utils.engine.pool import ModelUnavailable
from utils.engine.protocol import Reply, classify, receive_images, send_images
from utils.engine.worker import Outcome, _serve, await_reply

LINES = ["Invoice number 4521 dated 12 March 2024", "Total amount due: 1 250 roubles"]


@pytest.fixture(scope="module")
def scan() -> Image.Image:
    return render_text_page(LINES)


def _guard_deadlines_only(settings: Settings) -> dict:
    # Per-model deadlines (config.yaml timeout_s) would override the low guard deadlines under test.
    return {name: spec.model_copy(update={"timeout_s": None}) for name, spec in settings.models.items()}


def guarded_settings(**guard) -> tuple[Settings, Settings]:
    """Starts on a configured CPU profile (no CUDA probe); the fallback keeps the same low deadlines."""
    base = cached_settings()
    guard = base.guard.model_copy(update={"request_timeout_s": 3, "load_timeout_s": 30, **guard})
    settings = base.model_copy(update={"guard": guard, "profile": base.profile.model_copy(update={"device": "cpu"}),
                                       "models": _guard_deadlines_only(base)})
    fallback = cached_settings("cpu_fallback")
    return settings, fallback.model_copy(update={"guard": guard, "models": _guard_deadlines_only(fallback)})


def _is_worker(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
        return process.status() == psutil.STATUS_ZOMBIE or "utils.engine.worker" in command
    except psutil.ZombieProcess:  # an unreaped child: exactly what must not be left behind
        return True
    except psutil.NoSuchProcess:
        return False


def worker_processes() -> list[psutil.Process]:
    """Our worker processes, and any zombie child. Only direct children: a browser test's server and
    chromium, alive for the whole session, start processes of their own."""
    return [p for p in psutil.Process().children() if _is_worker(p)]


@pytest.fixture
def make_loader(monkeypatch):
    loaders: list[Loader] = []
    before = {p.pid for p in worker_processes()}  # e.g. the cached loader of an AppTest page test

    def make(fault: str | None = None, edit: Callable[[Settings], None] | None = None, **guard) -> Loader:
        """`edit` changes both profiles' settings before the loader starts."""
        # The guard reads the variable when it is created.
        if fault:
            monkeypatch.setenv(fault_injection.ENV, fault)
        else:
            monkeypatch.delenv(fault_injection.ENV, raising=False)
        profiles = guarded_settings(**guard)
        if edit is not None:
            profiles = tuple(profile.model_copy(deep=True) for profile in profiles)
            for profile in profiles:
                edit(profile)
        loader = Loader(*profiles)
        loaders.append(loader)
        return loader

    yield make
    for loader in loaders:
        loader.close()
    assert [p for p in worker_processes() if p.pid not in before] == []


def kinds(loader: Loader) -> list[str]:
    return [event.kind for event in loader.recovery_events()]


def assert_read(result: PageResult) -> None:
    assert "4521" in result.text and "Total" in result.text


def test_pages_run_in_a_worker_process(make_loader, scan):
    loader = make_loader()
    result = loader.run("tesseract", scan, page=0, source="scan.png")
    assert_read(result)
    assert (result.profile, result.page, result.source) == ("default", 0, "scan.png")
    info = loader.system_info()
    assert info.worker_state == "running" and info.worker_pid not in (None, os.getpid())
    assert info.profile == loader.profile_name == "default"
    assert info.preflight.cuda_usable is False and "cpu" in info.preflight.reason
    assert loader.resident_models == info.resident_models == ["tesseract"]
    assert loader.recovery_events() == [] and result.warnings == []


def test_the_worker_does_not_run_the_callers_main_script(make_loader, scan, monkeypatch, tmp_path):
    """Streamlit installs the page script as __main__; a worker must not execute it again."""
    script = tmp_path / "app.py"
    script.write_text("raise SystemExit(3)\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert_read(make_loader().run("tesseract", scan))


def test_ordinary_errors_come_back_as_themselves_and_the_worker_stays(make_loader, scan):
    loader = make_loader()
    loader.run("tesseract", scan)
    pid = loader.system_info().worker_pid
    with pytest.raises(ValueError, match="does not do 'markdown'"):
        loader.run("tesseract", scan, task="markdown")
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        loader.run("nope", scan)
    assert loader.system_info().worker_pid == pid and loader.recovery_events() == []


def test_unavailable_model_raises_model_unavailable(monkeypatch, scan):
    settings, fallback = guarded_settings()
    settings = settings.model_copy(deep=True)
    settings.models["tesseract"].options["languages"] = "zzz"
    monkeypatch.delenv(fault_injection.ENV, raising=False)
    loader = Loader(settings, fallback)
    try:
        with pytest.raises(ModelUnavailable, match="zzz"):
            loader.run("tesseract", scan)
    finally:
        loader.close()


def test_out_of_memory_retries_smaller_on_the_same_worker(make_loader, scan):
    loader = make_loader("oom:2")
    result = loader.run("tesseract", scan)
    assert_read(result)
    events = loader.recovery_events()
    assert kinds(loader) == ["oom", "oom"]
    assert "max_pixels=1003520" in events[0].action and "max_pixels=501760" in events[1].action
    assert "OutOfMemoryError: CUDA out of memory" in events[0].detail
    assert "same worker" in events[0].action and len(result.warnings) == 2


def test_out_of_memory_at_the_smallest_budget_is_an_error(make_loader, scan):
    loader = make_loader("oom:3", oom_pixel_steps=[1000], oom_token_steps=[100])
    with pytest.raises(RequestFailed, match="smallest budget"):
        loader.run("tesseract", scan)
    events = loader.recovery_events()
    assert ["max_pixels=1000" in events[0].action, "max_new_tokens=100" in events[1].action] == [True, True]
    assert "smallest budget" in events[2].action


@pytest.mark.parametrize("fault, code", [("device_assert", 710), ("illegal_address", 700)])
def test_sticky_cuda_error_respawns_the_worker_and_retries(make_loader, scan, fault, code):
    before = {p.pid for p in worker_processes()}
    loader = make_loader(fault)
    assert_read(loader.run("tesseract", scan))  # the fault hits this request's first attempt
    pid = loader.system_info().worker_pid
    assert_read(loader.run("tesseract", scan))
    [event] = loader.recovery_events()
    assert (event.kind, event.model, event.profile) == ("cuda_fatal", "tesseract", "default")
    assert f"CUDA error {code}" in event.detail and event.action == "respawn the worker and retry once"
    assert loader.system_info().worker_pid == pid  # the respawned worker serves on
    assert [p.pid for p in worker_processes() if p.pid not in before] == [pid]  # the faulted one is gone


def test_no_kernel_image_switches_to_the_cpu_profile_for_good(make_loader, scan):
    loader = make_loader("no_kernel_image")
    result = loader.run("tesseract", scan)
    assert_read(result)
    assert result.profile == loader.profile_name == "cpu"
    [event] = loader.recovery_events()
    assert event.kind == "unsupported_arch" and event.profile == "default"
    assert "CPU profile" in event.action and "PyTorch build" in event.detail
    assert loader.run("tesseract", scan).profile == "cpu"
    assert loader.system_info().fallback_reason


def test_killed_worker_is_respawned(make_loader, scan):
    loader = make_loader("worker_kill")
    assert_read(loader.run("tesseract", scan))
    [event] = loader.recovery_events()
    assert event.kind == "worker_died" and "-9" in event.detail
    dumped = event.model_dump(mode="json")
    assert set(dumped) == {"time", "kind", "action", "model", "profile", "detail"}
    assert isinstance(dumped["time"], str)


def test_hung_worker_is_killed_at_the_deadline(make_loader, scan):
    loader = make_loader("hang", request_timeout_s=2, load_timeout_s=3)
    started = time.monotonic()
    assert_read(loader.run("tesseract", scan))
    assert 5 <= time.monotonic() - started < 20
    [event] = loader.recovery_events()
    assert event.kind == "hang" and "killed" in event.detail


def test_a_model_deadline_overrides_the_guard_deadline(monkeypatch, scan):
    monkeypatch.setenv(fault_injection.ENV, "hang")
    settings, fallback = guarded_settings(request_timeout_s=600, load_timeout_s=600)
    for profile in (settings, fallback):
        profile.model("tesseract").timeout_s = 2
    loader = Loader(settings, fallback)
    try:
        started = time.monotonic()
        assert_read(loader.run("tesseract", scan))
        assert time.monotonic() - started < 30
        assert kinds(loader) == ["hang"]
    finally:
        loader.close()


def test_poison_request_is_returned_as_an_error(make_loader, scan):
    loader = make_loader("device_assert:5")
    with pytest.raises(RequestFailed, match="poison request"):
        loader.run("tesseract", scan)
    assert kinds(loader) == ["cuda_fatal", "cuda_fatal"]
    assert loader.recovery_events()[-1].action.startswith("return the error")
    assert loader.healthy()


def test_repeated_fatal_errors_switch_to_the_cpu_profile(make_loader, scan):
    loader = make_loader("device_assert", fatal_limit=1)
    result = loader.run("tesseract", scan)
    assert_read(result)
    assert result.profile == "cpu"
    [event] = loader.recovery_events()
    assert event.kind == "cuda_fatal" and "CPU profile" in event.action


def test_lost_gpu_switches_to_the_cpu_profile(make_loader, scan, monkeypatch):
    """A sticky error after which NVML no longer lists the GPU the preflight found."""
    on_gpu = preflight.PreflightResult(cuda_usable=True, reason="CUDA ready", device_setting="auto",
                                       gpu_present=True, device_uuid="5f1c")
    monkeypatch.setattr(preflight, "run", lambda settings: on_gpu)
    monkeypatch.setattr(gpu, "readings", lambda: [])
    loader = make_loader("illegal_address")
    result = loader.run("tesseract", scan)
    assert_read(result)
    assert result.profile == "cpu"
    [event] = loader.recovery_events()
    assert event.kind == "gpu_lost" and "NVML no longer shows the GPU" in event.detail


def test_an_interrupted_request_ends_its_worker(make_loader, scan):
    """Ctrl-C while waiting: the worker is killed, so its late answer cannot reach the next request."""
    loader = make_loader("hang", request_timeout_s=60)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loader.run("tesseract", scan)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert loader.system_info().worker_state == "exited (code -9)"
    assert_read(loader.run("tesseract", scan))
    assert loader.recovery_events() == []


def test_close_terminates_the_worker(make_loader, scan):
    loader = make_loader()
    loader.run("tesseract", scan)
    pid = loader.system_info().worker_pid
    loader.close()
    assert not psutil.pid_exists(pid)
    assert not loader.healthy()
    with pytest.raises(RuntimeError, match="closed"):
        loader.run("tesseract", scan)


@pytest.mark.parametrize("fault", [None, "hang"], ids=["idle", "stuck in a request"])
def test_worker_exits_when_its_parent_dies(fault):
    script = textwrap.dedent("""
        import os, signal, sys, threading, time
        from PIL import Image
        from utils.engine.loader import Loader
        from utils.config import cached_settings
        if __name__ == "__main__":
            settings = cached_settings()
            settings = settings.model_copy(update={"profile": settings.profile.model_copy(update={"device": "cpu"})})
            loader = Loader(settings)
            threading.Thread(target=loader.run, args=("tesseract", Image.new("L", (200, 100), 255)),
                             daemon=True).start()
            time.sleep(3)
            print(loader.system_info().worker_pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {k: v for k, v in os.environ.items() if k != fault_injection.ENV}
    if fault:
        env[fault_injection.ENV] = fault
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    pid = int(done.stdout.strip())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:  # exited; reaping is init's business
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        psutil.Process(pid).kill()
        pytest.fail("the worker outlived its parent")


class StreamingPool:
    resident = ["fake"]

    def run(self, model, image, task, options, on_token):
        for word in ("one ", "two ", "three"):
            on_token(word)
        return PageResult(model=model, task=task, text="one two three", width=image.width)


def test_streamed_tokens_reach_the_caller_as_they_arrive(monkeypatch):
    monkeypatch.delenv(fault_injection.ENV, raising=False)
    parent, child = Pipe()
    worker = threading.Thread(target=_serve, args=(child, StreamingPool()))
    worker.start()
    fields = dict(model="fake", task="text", options=RunOptions(), stream=True)
    try:
        tokens: list[str] = []
        send_images(parent, fields, [Image.new("RGB", (30, 20))])
        outcome = Outcome("hang")
        await_reply(parent, 10, tokens.append, outcome)
        assert tokens == ["one ", "two ", "three"]
        assert outcome.kind == "ok" and outcome.reply.result.width == 30

        def stop(_text):  # like Streamlit stopping a script mid-stream
            raise KeyboardInterrupt

        send_images(parent, fields, [Image.new("RGB", (30, 20))])
        outcome = Outcome("hang")
        await_reply(parent, 10, stop, outcome)
        assert outcome.kind == "ok" and isinstance(outcome.callback_error, KeyboardInterrupt)
    finally:
        parent.send(None)
        worker.join(5)


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "RGBA", "I;16", "P"])
def test_pages_cross_the_pipe_unchanged(mode):
    image = Image.effect_noise((37, 23), 60).convert("L").convert(mode)
    parent, child = Pipe()
    send_images(parent, dict(model="m", task="text", options=RunOptions(), stream=False), [image])
    copy, = receive_images(child, child.recv())
    assert (copy.mode, copy.size, copy.tobytes()) == (image.mode, image.size, image.tobytes())
    assert copy.getpalette() == image.getpalette()


def test_a_chat_carries_all_its_pages_across_the_pipe():
    images = [Image.new("RGB", (30, 20), "red"), Image.effect_noise((11, 7), 60).convert("P"), Image.new("L", (5, 9))]
    parent, child = Pipe()
    send_images(parent, dict(model="m", task="chat", options=RunOptions(prompt="q"), stream=False), images)
    copies = receive_images(child, child.recv())
    assert [(c.mode, c.size, c.tobytes(), c.getpalette()) for c in copies] == [
        (i.mode, i.size, i.tobytes(), i.getpalette()) for i in images]


def test_errors_are_classified_by_code_then_message():
    torch = pytest.importorskip("torch")

    def accelerator(code, message):
        error = torch.AcceleratorError(message)
        error.error_code = code
        return error

    assert classify(accelerator(710, "CUDA error: device-side assert triggered")) == ("fatal", 710)
    assert classify(accelerator(719, "CUDA error: unspecified launch failure")) == ("fatal", 719)
    assert classify(accelerator(209, "CUDA error: no kernel image is available")) == ("unsupported_arch", 209)
    assert classify(accelerator(100, "CUDA error: no CUDA-capable device is detected")) == ("gpu_lost", 100)
    assert classify(accelerator(2, "CUDA error: out of memory")) == ("oom", 2)
    assert classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) == ("oom", None)
    assert classify(RuntimeError("CUDA error: an illegal memory access was encountered")) == ("fatal", None)
    assert classify(ValueError("bad page")) == ("error", None)


def test_exception_types_are_rebuilt_only_from_modules_the_parent_has():
    assert isinstance(Reply("error", error_type="builtins:ValueError", message="m").exception(), ValueError)
    unknown = Reply("error", error_type="transformers.errors:GenerationError", message="m").exception()
    assert type(unknown) is RuntimeError and str(unknown) == "GenerationError: m"


def test_fault_specs():
    assert fault_injection.parse("device_assert:5") == ("device_assert", 5)
    assert fault_injection.parse("hang") == ("hang", 1)
    with pytest.raises(ValueError, match="expected one of oom, device_assert"):
        fault_injection.parse("meltdown")


def test_bad_fault_spec_is_a_clear_error(make_loader, scan):
    loader = make_loader("meltdown")
    with pytest.raises(ValueError, match="OCR_FAULT_INJECT='meltdown'"):
        loader.run("tesseract", scan)
    assert [w.state for w in loader.system_info().workers] == ["not started"] * 2  # decided by the parent


def test_a_local_model_path_applies_to_both_profiles_and_restarts_the_worker(scan):
    loader = Loader(cached_settings())
    try:
        loader.run("tesseract", scan, "text")
        before = loader.system_info().worker_pid
        loader.set_model_path("qwen_vl_2b", "/models/qwen2")
        assert loader.settings.model("qwen_vl_2b").local_path == "/models/qwen2"
        assert cached_settings().model("qwen_vl_2b").local_path is None  # the shared settings are untouched
        assert loader.resident_models == []
        loader.run("tesseract", scan, "text")
        assert loader.system_info().worker_pid != before
    finally:
        loader.close()


def test_the_fault_count_spans_requests_and_respawns(make_loader, scan):
    """The parent counts: `device_assert:3` faults the first request twice (poison) and the next once."""
    loader = make_loader("device_assert:3")
    assert loader.system_info().faults_left == 3
    with pytest.raises(RequestFailed, match="poison request"):
        loader.run("tesseract", scan)
    assert loader.system_info().faults_left == 1
    assert_read(loader.run("tesseract", scan))  # faulted once more, retried on a fresh worker
    assert_read(loader.run("tesseract", scan))
    assert kinds(loader) == ["cuda_fatal"] * 3
    assert loader.system_info().fault_injection == "device_assert" and loader.system_info().faults_left == 0


def _slow_vlm(folder) -> Callable[[Settings], None]:
    """A VLM that is not downloaded (its folder does not exist) and gives up on a hang after 8 s."""
    def edit(settings: Settings) -> None:
        spec = settings.model("qwen_vl_2b")
        spec.local_path, spec.timeout_s = str(folder / "missing"), 8
    return edit


def _in_thread(call) -> tuple[threading.Thread, dict]:
    done: dict = {}

    def target():
        try:
            done["result"] = call()
        except Exception as exc:
            done["error"] = exc
        done["at"] = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, done


def _until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_cpu_engine_does_not_wait_behind_a_gpu_model(make_loader, scan, tmp_path):
    """The first request (a VLM) hangs in the models worker; Tesseract pages still come back at once,
    and a second VLM request learns that one request is ahead of it."""
    loader = make_loader("hang", edit=_slow_vlm(tmp_path))
    hung, hung_done = _in_thread(lambda: loader.run("qwen_vl_2b", scan))
    _until(lambda: loader.system_info().faults_left == 0)  # the hang was sent with that request
    hung_since = time.monotonic()
    assert loader.requests_ahead("qwen_vl_2b") == 1 and loader.requests_ahead("tesseract") == 0

    told: list[int] = []
    queued, queued_done = _in_thread(lambda: loader.run("qwen_vl_2b", scan, on_wait=told.append))
    _until(lambda: told == [1])
    assert loader.requests_ahead("qwen_vl_2b") == 2

    for _ in range(2):
        started = time.monotonic()
        assert_read(loader.run("tesseract", scan))
        assert time.monotonic() - started < 8
    assert hung.is_alive() and queued.is_alive() and time.monotonic() - hung_since < 8

    hung.join(60)
    queued.join(60)
    assert isinstance(hung_done["error"], ModelUnavailable)  # retried on a fresh worker after the hang
    assert isinstance(queued_done["error"], ModelUnavailable)
    assert told == [1, 0] and queued_done["at"] >= hung_done["at"]
    assert kinds(loader) == ["hang"] and loader.recovery_events()[0].model == "qwen_vl_2b"
    workers = {w.lane: w for w in loader.system_info().workers}
    assert workers["CPU engines"].resident_models == ["tesseract"] and workers["CPU engines"].state == "running"
    assert workers["models"].pid != workers["CPU engines"].pid


def test_cpu_engines_stay_resident_together(make_loader, scan):
    loader = make_loader()
    loader.run("tesseract", scan)
    loader.run("rapidocr", scan)
    pid = loader.system_info().worker_pid
    assert sorted(loader.resident_models) == ["rapidocr", "tesseract"]
    result = loader.run("tesseract", scan)
    assert result.load_seconds is None and loader.system_info().worker_pid == pid  # no reload


def test_requests_for_one_worker_are_served_in_order(make_loader, scan):
    loader = make_loader()
    loader.run("tesseract", scan)  # started and loaded: the order below is the queue's, not start-up's
    finished: list[int] = []
    threads = []
    for index in range(4):
        thread = threading.Thread(target=lambda i=index: (loader.run("tesseract", scan), finished.append(i)))
        thread.start()
        threads.append(thread)
        _until(lambda n=index: loader.requests_ahead("tesseract") == n + 1)
    for thread in threads:
        thread.join(60)
    assert finished == [0, 1, 2, 3]
