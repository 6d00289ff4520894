"""UI glue for the results store: the store of this server, and one page result shown as the OCR page
shows it (metrics, warnings, the page with its boxes, text / markdown / JSON), for History and Batch."""
from __future__ import annotations

import sqlite3

import streamlit as st
from PIL import Image

from models.contract import PageResult, RunOptions
from pages.ui.common import draw_boxes
from utils.config import cached_settings
from utils.documents.reader import Document
from utils.engine.runner import PageOutcome
from utils.messages import one_line
from utils.store import SchemaError, Store, StoredResult, store_path


@st.cache_resource(show_spinner=False)
def _store(path: str) -> Store:  # keyed by the path: a test pointing OCR_STORE_DB elsewhere gets its own
    return Store.from_settings(cached_settings())


def get_store() -> Store:
    """One Store per database path (OCR_STORE_DB or store.path), shared by every session of the server."""
    return _store(str(store_path(cached_settings())))


def keep(outcome: PageOutcome, document: Document, options: RunOptions) -> None:
    """Write a page's result to the store before it is shown. A store that cannot be written (a full
    disk, a locked file) is a warning: the result is still shown and the run goes on."""
    if outcome.result is None:
        return
    try:
        get_store().save(outcome.key, outcome.result, document, options=options)
    except (sqlite3.Error, OSError, SchemaError) as exc:
        st.warning(f"{document.name}, page {outcome.page + 1}: not saved to History ({one_line(exc)})")


@st.cache_data(max_entries=32, show_spinner="Rendering page…")
def stored_page_image(path: str, result_id: int) -> Image.Image | None:
    store = get_store()
    stored = store.get(result_id)
    return store.page_image(stored) if stored is not None else None


def show_page_result(result: PageResult, image: Image.Image | None, key: str, missing_image: str = "") -> None:
    cols = st.columns(5)
    cols[0].metric("Device", f"{result.device}" + (f" · {result.dtype}" if result.dtype else ""))
    cols[1].metric("Profile", result.profile)
    cols[2].metric("Inference", f"{result.seconds:.2f} s")
    cols[3].metric("Load", f"{result.load_seconds:.2f} s" if result.load_seconds is not None else "cached")
    cols[4].metric("Blocks", len(result.blocks))
    for warning in result.warnings:
        st.warning(warning)
    left, right = st.columns([1, 1])
    with left:
        if image is not None:
            page = (result.page or 0) + 1
            st.image(draw_boxes(image, result.blocks), caption=f"Page {page} with {len(result.blocks)} boxes",
                     width="stretch")
        elif missing_image:
            st.info(missing_image)
    with right:
        text_tab, md_tab, json_tab = st.tabs(["Text", "Markdown", "JSON"])
        with text_tab:
            st.text_area("Recognised text", result.text, height=520, key=f"{key}_text")
        with md_tab:
            st.markdown(result.markdown or result.text)
        with json_tab:
            st.json(result.model_dump(mode="json"), expanded=1)


def result_label(stored: StoredResult) -> str:
    return f"{stored.document_name}, page {stored.key.page + 1} · {stored.key.model} · {stored.key.task}"
