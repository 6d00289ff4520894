"""One page result as every page shows it: a one-line summary, warnings, the page with its boxes, and
the text (editable: an edit is kept as a correction), markdown and JSON, with a copy button.

Only the open tab is drawn: a long markdown or a JSON with hundreds of boxes costs the browser time on
every result otherwise. The tab chosen stays open for the next result of the same page kind.
"""
from __future__ import annotations

import html
import json
from collections.abc import Callable

import streamlit as st

from models.contract import PageResult
from pages.ui.common import PageView, display_page
from utils.documents.export import result_json

TEXT_LABEL = "Recognised text"
TABS = ("Text", "Markdown", "JSON")


def summary_line(result: PageResult, wall_seconds: float | None = None) -> str:
    """Device, profile, timings and counts in one line: long values never cut off like metric tiles."""
    parts = [result.device + (f" ({result.dtype})" if result.dtype else ""), f"profile {result.profile}",
             f"inference {result.seconds:.2f} s"]
    if wall_seconds is not None and wall_seconds > result.seconds + 0.05:
        parts.append(f"{wall_seconds:.2f} s with the worker round trip")
    parts.append(f"load {result.load_seconds:.2f} s" if result.load_seconds is not None else "model already loaded")
    if result.tokens:
        rate = result.tokens_per_second
        parts.append(f"{result.tokens} tokens" + (f" at {rate:.1f} tokens/s" if rate else ""))
    parts.append(f"{len(result.blocks)} boxes")
    return " · ".join(parts)


def copy_button(key: str, label: str = "Copy text") -> None:
    """Copies what the text box of `key` holds now (edits included) to the clipboard."""
    button_id = f"copy-{key}"
    script = f"""
(() => {{
  const button = document.getElementById({json.dumps(button_id)});
  if (!button || button.dataset.ready) return;
  button.dataset.ready = "1";
  button.addEventListener("click", () => {{
    const box = document.querySelector({json.dumps(f".st-key-{key} textarea")});
    if (!box) return;
    const done = () => {{
      button.textContent = "✓ Copied";
      setTimeout(() => {{ button.textContent = {json.dumps(label)}; }}, 1500);
    }};
    if (navigator.clipboard && window.isSecureContext) {{
      navigator.clipboard.writeText(box.value).then(done);
    }} else {{  // plain http on another host: the older way
      box.select();
      document.execCommand("copy");
      done();
    }}
  }});
}})();
"""
    st.html(f'<button id="{html.escape(button_id)}" class="copy-text" type="button" '
            'style="border:1px solid rgba(49,51,63,.2);border-radius:.5rem;background:transparent;'
            f'padding:.25rem .75rem;cursor:pointer;font:inherit">{html.escape(label)}</button>'
            f"<script>{script}</script>", unsafe_allow_javascript=True)


def _tabs(group: str, key: str):
    chosen = f"_tab_{group}"
    if st.session_state.get(chosen) not in TABS:
        st.session_state[chosen] = TABS[0]
    st.session_state[key] = st.session_state[chosen]

    def picked() -> None:
        st.session_state[chosen] = st.session_state[key]

    return st.tabs(TABS, key=key, on_change=picked)


def show_result(result: PageResult, view: PageView | None, key: str, *, group: str, correction: str | None = None,
                on_correct: Callable[[str], None] | None = None, prompt: str | None = None,
                wall_seconds: float | None = None, missing_image: str = "") -> None:
    """`on_correct(text)` is called when the user edits the text (None: the text is read-only); `group`
    names the page kind whose open tab is remembered ("ocr", "history", ...)."""
    st.caption(summary_line(result, wall_seconds))
    if result.truncated:
        st.warning("Output truncated: the model hit its token limit or a repetition stop.")
    for warning in result.warnings:
        st.warning(warning)
    left, right = st.columns([1, 1])
    with left:
        page = (result.page or 0) + 1
        if view is not None:
            st.image(display_page(view, result.blocks), width="stretch",
                     caption=f"Page {page} with {len(result.blocks)} boxes")
        elif missing_image:
            st.info(missing_image)
    with right:
        text_tab, md_tab, json_tab = _tabs(group, f"{key}_tabs")
        if text_tab.open:
            with text_tab:
                _text_box(result, key, correction, on_correct)
        if md_tab.open:
            with md_tab:
                st.markdown(result.markdown or result.text)
        if json_tab.open:
            with json_tab:
                st.json(result_json(result, correction=correction, prompt=prompt), expanded=1)


def _text_box(result: PageResult, key: str, correction: str | None,
              on_correct: Callable[[str], None] | None) -> None:
    box = f"{key}_text"
    shown = correction if correction is not None else result.text
    if st.session_state.get(f"{box}_shows") != shown:  # a new result, a restored correction or an undo
        st.session_state[box] = shown
        st.session_state[f"{box}_shows"] = shown

    def edited() -> None:
        text = st.session_state[box]
        st.session_state[f"{box}_shows"] = text
        if on_correct is not None:
            on_correct(text)

    st.text_area(TEXT_LABEL, key=box, height=480, on_change=edited, disabled=on_correct is None)
    left, right = st.columns([1, 3], vertical_alignment="center")
    with left:
        copy_button(box)
    if correction is not None:
        right.caption("✎ Corrected by you: the TXT and MD downloads give this text; the JSON keeps the "
                      "recognised text and the correction.")
        if on_correct is not None:
            right.button("Undo the correction", key=f"{key}_undo", on_click=on_correct, args=(result.text,))
    elif on_correct is not None:
        right.caption("Edit the text to correct it: the correction is kept with the result, and the downloads "
                      "give it.")
