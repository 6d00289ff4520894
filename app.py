"""ChatVLMLLM: interactive document OCR. Navigation and the sidebar; pages hold the rest."""
from __future__ import annotations

import streamlit as st

from pages.common import get_loader, model_catalog, model_label
from utils.config import ConfigError

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
        else:
            st.error(f"{availability.status}: {availability.reason}")
            if availability.fix:
                st.code(availability.fix, language="bash")
        with st.expander("All models"):
            for status in catalog:
                st.markdown(f"{model_label(status)} `{status.name}` — {status.availability.status}")


try:
    sidebar()
except ConfigError as exc:
    st.error(f"Configuration error: {exc}")
    st.stop()

navigation = st.navigation([
    st.Page("pages/ocr.py", title="OCR", icon="📄", url_path="ocr", default=True),
])
navigation.run()
