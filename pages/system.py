"""System page: the profile in use, the worker, the GPU preflight, live GPU readings and the recovery log."""
from __future__ import annotations

import streamlit as st

from pages.ui.common import get_loader, require_app_shell
from utils.engine import gpu
from utils.engine.guard import RecoveryEvent, SystemInfo


def overview(info: SystemInfo) -> None:
    left, middle, right = st.columns(3)
    left.metric("Profile", info.profile, help="cpu_fallback = config.yaml overlaid with config_cpu_fallback.yaml")
    middle.metric("Device", info.device)
    right.metric("Worker", info.worker_state, help=f"process id {info.worker_pid}" if info.worker_pid else None)
    st.caption(f"Resident models: {', '.join(info.resident_models) or 'none'}")
    if info.fallback_reason and info.fallback_reason != info.preflight.reason:
        st.info(f"Running on the CPU profile: {info.fallback_reason}")


def preflight(info: SystemInfo) -> None:
    probe = info.preflight
    st.subheader("GPU preflight")
    (st.success if probe.cuda_usable else st.warning if probe.gpu_present else st.info)(probe.reason)
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


@st.fragment(run_every="5s")
def gpu_monitor() -> None:
    st.subheader("GPU monitor")
    snapshot = gpu.snapshot()
    if not snapshot.readings:
        st.caption(f"No GPU readings: {snapshot.note}")
        return
    for reading in snapshot.readings:
        st.markdown(f"**GPU {reading.index}: {reading.name}**"
                    + (f" · compute {reading.capability}" if reading.capability else ""))
        memory, load, heat = st.columns(3)
        if reading.memory_total_mb:
            memory.metric("VRAM used", f"{reading.memory_used_mb:,.0f} / {reading.memory_total_mb:,.0f} MiB")
            memory.progress(min(reading.memory_used_mb / reading.memory_total_mb, 1.0))
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
    preflight(info)
    gpu_monitor()
    recovery_log(loader.recovery_events())


main()
