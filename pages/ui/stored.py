"""UI glue for the results store: the store of this server, and one stored page result shown as the OCR
page shows it, for History and Batch."""
from __future__ import annotations

import streamlit as st

from models.contract import PageResult
from pages.ui.common import PageView, shrink
from pages.ui.result_view import show_result
from utils.config import cached_settings
from utils.messages import one_line
from utils.store import Store, StoredResult, store_path


@st.cache_resource(show_spinner=False)
def _store(path: str) -> Store:  # keyed by the path: a test pointing OCR_STORE_DB elsewhere gets its own
    return Store.from_settings(cached_settings())


def get_store() -> Store:
    """One Store per database path (OCR_STORE_DB or store.path), shared by every session of the server."""
    return _store(str(store_path(cached_settings())))


@st.cache_data(max_entries=32, show_spinner="Rendering page…")
def stored_page_view(path: str, result_id: int) -> PageView | None:
    store = get_store()
    stored = store.get(result_id)
    image = store.page_image(stored) if stored is not None else None
    return shrink(image) if image is not None else None


def show_page_result(result: PageResult, view: PageView | None, key: str, missing_image: str = "") -> None:
    show_result(result, view, key, group="stored", missing_image=missing_image)


def show_stored(store: Store, stored: StoredResult, view: PageView | None, key: str,
                missing_image: str = "") -> None:
    """A stored result, its text editable: an edit is kept as the result's correction."""
    def correct(text: str) -> None:
        try:
            store.correct(stored.id, text)
        except Exception as exc:  # the result stays as it was; the user reads why in one line
            st.toast(f"The correction could not be saved: {one_line(exc)}")

    prompt = stored.options.prompt if stored.key.task == "prompt" else None
    show_result(stored.result, view, key, group="stored", correction=stored.correction, on_correct=correct,
                prompt=prompt, missing_image=missing_image)


def result_label(stored: StoredResult) -> str:
    return f"{stored.document_name}, page {stored.key.page + 1} · {stored.key.model} · {stored.key.task}"
