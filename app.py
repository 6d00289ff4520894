"""ChatVLMLLM: interactive document OCR. Navigation and the sidebar; pages hold the rest.

The page is drawn before the sidebar, and the sidebar's modules are imported after the page: on a
fresh server the first page shows without waiting for the engine's imports or for the check of every
model (a VLM's check imports the Hugging Face libraries).
"""
from __future__ import annotations

import streamlit as st

from pages.ui.shell import enter_shell, follow_pending

# A material icon, not an emoji: Streamlit validates an emoji icon against its emoji table, an import
# that costs the first page ~0.1 s.
st.set_page_config(page_title="ChatVLMLLM OCR", page_icon=":material/description:", layout="wide")


def _picked() -> None:
    st.session_state["model"] = st.session_state["sidebar_model"]


def sidebar() -> None:
    catalog = model_catalog()
    by_name = {s.name: s for s in catalog}
    if st.session_state.get("model") not in by_name:
        st.session_state["model"] = default_model() if default_model() in by_name else catalog[0].name
    with st.sidebar:
        st.header("Model")
        st.session_state["sidebar_model"] = st.session_state["model"]
        name = st.selectbox("Model", list(by_name), key="sidebar_model", on_change=_picked,
                            format_func=lambda n: model_label(by_name[n]), label_visibility="collapsed")
        for note in startup_notes():
            st.warning(note)
        availability = by_name[name].availability
        if availability.available:
            st.caption(f"Ready · {availability.reason}")
            health_caption(name)
        else:
            st.error(f"{availability.status}: {availability.reason}")
            if availability.fix:
                st.code(availability.fix, language="bash")
            weights_controls(by_name[name])
        with st.expander("All models"):
            for status in catalog:
                st.markdown(f"`{status.name}` {model_label(status)}")
        guard_status()


def guard_status() -> None:
    loader = get_loader()
    if loader.checking_gpu:
        await_preflight()
        return
    info = loader.system_info()
    st.caption(f"Profile: **{info.profile}**" + (" · fallback after a GPU fault" if info.fell_back else ""))
    events = loader.recovery_events()
    if events:
        last = events[-1]
        st.warning(f"{len(events)} recovery event(s); last: {last.kind} → {last.action}", icon=":material/warning:")
    if info.preflight is not None and info.preflight.gpu_present:
        gpu_monitor()


@st.fragment(run_every=1)
def await_preflight() -> None:
    """The GPU check runs in the background; the app is drawn again once it is done."""
    if get_loader().checking_gpu:
        st.caption(f"Profile: **{CHECKING}**")
    else:
        st.rerun()


@st.fragment(run_every=5)
def gpu_monitor() -> None:
    for card in gpu.readings():
        used, total = card.memory_used_mb, card.memory_total_mb
        if used is not None and total:
            st.progress(min(used / total, 1.0), text=f"{card.name}: {used / 1024:.1f} / {total / 1024:.1f} GiB")
        extras = [f"{card.utilization_pct:.0f}% busy" if card.utilization_pct is not None else None,
                  f"{card.temperature_c:.0f} °C" if card.temperature_c is not None else None]
        if any(extras):
            st.caption(" · ".join(e for e in extras if e))


enter_shell()
navigation = st.navigation([
    st.Page("pages/ocr.py", title="OCR", icon=":material/description:", url_path="ocr", default=True),
    st.Page("pages/chat.py", title="Chat", icon=":material/chat:", url_path="chat"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page("pages/batch.py", title="Batch", icon=":material/stacks:", url_path="batch"),
    st.Page("pages/history.py", title="History", icon=":material/history:", url_path="history"),
    st.Page("pages/extract.py", title="Extract", icon=":material/table_view:", url_path="extract"),
    st.Page("pages/system.py", title="System", icon=":material/monitor_heart:", url_path="system"),
])
return_to = st.session_state.pop("return_to", None)
if return_to:
    st.switch_page(return_to)
navigation.run()

from pages.ui.common import default_model, get_loader, model_catalog, model_label, startup_notes  # noqa: E402
from pages.ui.model_setup import weights_controls  # noqa: E402
from pages.ui.servers import health_caption  # noqa: E402
from utils.config import ConfigError  # noqa: E402
from utils.engine import gpu  # noqa: E402
from utils.engine.loader import CHECKING  # noqa: E402

try:
    sidebar()
except ConfigError as exc:
    st.sidebar.error(f"Configuration error: {exc}")
follow_pending()
