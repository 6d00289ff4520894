"""UI glue shared by the pages: the cached loader, uploads, page images, box overlays.

No model logic here: everything goes through utils.engine.loader.Loader.
"""
from __future__ import annotations

import hashlib
import threading

import streamlit as st
from PIL import Image, ImageDraw

from models.contract import Block
from utils.config import cached_settings
from utils.documents.reader import ACCEPTED_SUFFIXES, Document, DocumentError, open_document
from utils.engine.loader import Loader, ModelStatus

UPLOAD_TYPES = ACCEPTED_SUFFIXES
TASK_LABELS = {"text": "Plain text", "markdown": "Markdown", "layout": "Layout (boxes + categories)",
               "prompt": "Free prompt"}
_loader_lock = threading.Lock()

CATEGORY_COLOURS = {
    "Line": (31, 119, 180), "Text": (31, 119, 180), "Title": (214, 39, 40), "Section-header": (255, 127, 14),
    "Table": (44, 160, 44), "Picture": (148, 103, 189), "Formula": (140, 86, 75), "List-item": (23, 190, 207),
    "Caption": (188, 189, 34), "Footnote": (127, 127, 127), "Page-header": (227, 119, 194),
    "Page-footer": (227, 119, 194),
}


def require_app_shell(page_path: str) -> None:
    """Send a page opened by its own URL through app.py first.

    On a fresh server Streamlit runs a URL such as /system in its legacy pages/ mode, without
    app.py (no sidebar, no model choice); app.py then switches back to the page asked for.
    """
    if "model" not in st.session_state:
        st.session_state["return_to"] = page_path
        st.switch_page("app.py")


def _loader_is_healthy(loader: Loader) -> bool:
    healthy = getattr(loader, "healthy", None)
    return healthy() if callable(healthy) else True


@st.cache_resource(show_spinner="Starting the OCR engine…", validate=_loader_is_healthy,
                   on_release=lambda loader: loader.close())
def _cached_loader() -> Loader:
    return Loader(cached_settings())


def get_loader() -> Loader:
    """One Loader per server process: models stay loaded across reruns and sessions."""
    with _loader_lock:
        return _cached_loader()


@st.cache_data(ttl=30, show_spinner=False)
def model_catalog() -> list[ModelStatus]:
    return get_loader().catalog()


def model_label(status: ModelStatus) -> str:
    state = "ready" if status.availability.available else status.availability.status
    return f"{status.label} — {state}"


@st.cache_resource(max_entries=16, show_spinner=False)
def _open_cached(name: str, digest: str, _data: bytes) -> Document:
    return open_document(name, _data, cached_settings().documents)


def open_upload(uploaded) -> Document | None:
    """A validated Document, or None after showing a one-line error; nothing else on the page is lost."""
    data = uploaded.getvalue()
    try:
        return _open_cached(uploaded.name, hashlib.sha256(data).hexdigest(), data)
    except DocumentError as exc:
        st.error(str(exc))
        return None


def document_key(document: Document) -> str:
    return f"{document.name}:{document.digest[:16]}"


@st.cache_data(max_entries=64, show_spinner="Rendering page…")
def _render_cached(key: str, index: int, _document: Document) -> Image.Image:
    return _document.render(index)


def page_image(document: Document, index: int) -> Image.Image | None:
    try:
        return _render_cached(document_key(document), index, document)
    except DocumentError as exc:
        st.error(str(exc))
        return None


def draw_boxes(image: Image.Image, blocks: list[Block]) -> Image.Image:
    """The page with each block's box outlined in its category's colour."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 600))
    for block in blocks:
        colour = CATEGORY_COLOURS.get(block.category, (31, 119, 180))
        draw.rectangle(block.bbox, outline=colour, width=width)
    return canvas
