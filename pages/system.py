"""System page: the profile in use, this machine, the worker processes, the GPU and the recovery log."""
from __future__ import annotations

import streamlit as st

from pages.ui.common import get_loader, require_app_shell
from pages.ui.servers import health_table
from utils.engine import gpu, machine
from utils.engine.guard import RecoveryEvent, SystemInfo
from utils.engine.preflight import PreflightResult

LIBRARY_LABELS = {"tesseract": "Tesseract (engine)", "tesserocr": "tesserocr", "rapidocr": "RapidOCR",
                  "onnxruntime": "ONNX Runtime", "torch": "PyTorch", "transformers": "Transformers"}


def overview(info: SystemInfo) -> None:
    running = [w for w in info.workers if w.pid is not None and w.state == "running"]
    left, middle, right = st.columns(3)
    left.metric("Profile", info.profile,
                help="cpu: config.yaml overlaid with config_cpu_fallback.yaml; default: config.yaml as it is")
    middle.metric("Device", info.device)
    right.metric("Workers running", f"{len(running)} of {len(info.workers)}")
    if info.fell_back:
        st.warning(f"Fell back to the CPU profile: {info.fallback_reason}", icon=":material/warning:")
    if info.fault_injection:
        st.warning(f"Fault injection is on (OCR_FAULT_INJECT={info.fault_injection}): "
                   f"{info.faults_left} more request(s) will be faulted.", icon=":material/science:")


def this_machine() -> None:
    st.subheader("This machine")
    facts = machine.snapshot()
    cores, memory, python = st.columns(3)
    physical = f" ({facts.physical_cores} physical)" if facts.physical_cores else ""
    cores.metric("CPU cores", f"{facts.cores or '?'}{physical}")
    memory.metric("Memory free", f"{facts.memory_available_mb / 1024:.1f} of {facts.memory_total_mb / 1024:.1f} GiB")
    python.metric("Python", facts.python)
    st.dataframe({"engine / library": [LIBRARY_LABELS.get(n, n) for n in facts.versions],
                  "version": [v or "not installed" for v in facts.versions.values()]}, hide_index=True)


def workers(info: SystemInfo) -> None:
    st.subheader("Worker processes")
    st.caption("Classic CPU engines and the GPU models run in separate workers, so a Tesseract page "
               "never waits behind a VLM page.")
    st.dataframe({
        "worker": [w.lane for w in info.workers],
        "process id": [str(w.pid) if w.pid else "—" for w in info.workers],
        "state": [w.state for w in info.workers],
        "resident models": [", ".join(w.resident_models) or "none" for w in info.workers],
        "requests": [w.requests for w in info.workers],
        "memory (MiB)": [_memory(w.pid, w.state) for w in info.workers],
    }, hide_index=True)


def _memory(pid: int | None, state: str) -> str:
    used = machine.process_memory_mb(pid) if state == "running" else None
    return f"{used:,.0f}" if used is not None else "—"


def gpu_section(probe: PreflightResult | None) -> None:
    st.subheader("GPU preflight")
    if probe is None:
        checking()
        return
    if not probe.gpu_present and probe.torch_version is None:  # no GPU, and CUDA was not probed
        st.info("No NVIDIA GPU: every model runs on the CPU." if probe.reason == "no NVIDIA GPU"
                else probe.reason[:1].upper() + probe.reason[1:])
        return
    (st.success if probe.cuda_usable else st.warning)(probe.reason)
    if probe.fix:
        st.markdown("To use the GPU:")
        st.code(probe.fix, language=None)
    memory = (f"{probe.memory_free_mb:,.0f} / {probe.memory_total_mb:,.0f}"
              if probe.memory_free_mb is not None and probe.memory_total_mb else None)
    facts = {
        "profile.device": probe.device_setting, "driver": probe.driver, "device": probe.device_name,
        "compute capability": probe.capability, "torch": probe.torch_version, "torch CUDA": probe.torch_cuda,
        "torch architectures": ", ".join(probe.arch_list) or None, "free / total memory (MiB)": memory,
        "checked": f"{probe.checked_at:%Y-%m-%d %H:%M:%S} UTC in {probe.seconds:.1f} s",
    }
    shown = {key: str(value) for key, value in facts.items() if value}
    st.table({"check": list(shown), "value": list(shown.values())})
    if probe.gpu_present:
        gpu_monitor()


@st.fragment(run_every="1s")
def checking() -> None:
    """Until the preflight is done; then the whole page is drawn again with its result."""
    if get_loader().checking_gpu:
        st.info("Checking the GPU…", icon=":material/hourglass_top:")
    else:
        st.rerun()


@st.fragment(run_every="5s")
def gpu_monitor() -> None:
    st.subheader("GPU monitor")
    snapshot = gpu.snapshot()
    if not snapshot.readings:
        st.caption(f"No GPU readings now: {snapshot.note}")
        return
    for reading in snapshot.readings:
        st.markdown(f"**GPU {reading.index}: {reading.name}**"
                    + (f" · compute {reading.capability}" if reading.capability else ""))
        memory, load, heat = st.columns(3)
        if reading.memory_total_mb:
            used = reading.memory_used_mb or 0.0
            memory.metric("VRAM used", f"{used:,.0f} / {reading.memory_total_mb:,.0f} MiB")
            memory.progress(min(used / reading.memory_total_mb, 1.0))
        else:
            memory.metric("VRAM used", "n/a")
        load.metric("Utilisation", f"{reading.utilization_pct:.0f} %" if reading.utilization_pct is not None else "n/a")
        heat.metric("Temperature", f"{reading.temperature_c:.0f} °C" if reading.temperature_c is not None else "n/a")
    st.caption(f"Driver {snapshot.driver} · refreshed every 5 s")


def recovery_log(events: list[RecoveryEvent]) -> None:
    st.subheader("Recovery events")
    if not events:
        st.caption("None: no fault since the app started.")
        return
    st.dataframe([e.model_dump(mode="json") for e in reversed(events)], hide_index=True, width="stretch",
                 column_order=("time", "kind", "action", "model", "profile", "detail"))


def main() -> None:
    require_app_shell("pages/system.py")
    st.title("System")
    loader = get_loader()
    info = loader.system_info()
    overview(info)
    this_machine()
    workers(info)
    health_table()
    gpu_section(info.preflight)
    recovery_log(loader.recovery_events())


main()
