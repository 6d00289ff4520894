"""ChatVLMLLM: interactive document OCR. Navigation and the sidebar; pages hold the rest."""
from __future__ import annotations

import streamlit as st

from pages.ui.common import get_loader, model_catalog, model_label
from pages.ui.model_setup import weights_controls
from pages.ui.servers import health_caption
from utils.config import ConfigError
from utils.engine import gpu
from utils.engine.loader import CHECKING

st.set_page_config(page_title="ChatVLMLLM OCR", page_icon="📄", layout="wide")


def sidebar() -> None:
    catalog = model_catalog()
    by_name = {s.name: s for s in catalog}
    current = st.session_state.get("model")
    if current not in by_name:
        current = get_loader().default_model() or catalog[0].name
    with st.sidebar:
        st.header("Model")
        # Kept in a plain session key (not the widget's) so every page sees it and it survives page switches.
        name = st.selectbox("Model", list(by_name), index=list(by_name).index(current),
                            format_func=lambda n: model_label(by_name[n]), label_visibility="collapsed")
        st.session_state["model"] = name
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


try:
    sidebar()
except ConfigError as exc:
    st.error(f"Configuration error: {exc}")
    st.stop()

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
