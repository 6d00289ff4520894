"""UI glue shared by the pages: the cached loader, uploads, page images, box overlays.

No model logic here: everything goes through utils.engine.loader.Loader.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import streamlit as st
from PIL import Image, ImageDraw

from models.contract import Block
from utils.config import cached_settings
from utils.documents.reader import ACCEPTED_SUFFIXES, Document, DocumentError, open_document
from utils.engine.loader import Loader, ModelStatus

TOKEN_REDRAW_S = 0.1  # streamed tokens redraw the page at most ten times a second

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
def _open_cached(file_id: str, name: str, _data: bytes) -> Document:
    return open_document(name, _data, cached_settings().documents)


def open_upload(uploaded) -> Document | None:
    """A validated Document, or None after showing a one-line error; nothing else on the page is lost.

    Keyed by the upload's file_id, so the bytes are read and hashed once per upload, not on every
    rerun; the Document is immutable, so every rerun and session can share the cached one.
    """
    try:
        return _open_cached(uploaded.file_id, uploaded.name, uploaded.getvalue())
    except DocumentError as exc:
        st.error(str(exc))
        return None


def page_image(document: Document, index: int) -> Image.Image | None:
    """The page on screen, rendered once. Only that page is kept (one per session): a long document
    is never held in memory as pixels."""
    key = (document.digest, document.dpi, index)
    shown = st.session_state.get("_shown_page")
    if shown is not None and shown[0] == key:
        return shown[1]
    try:
        with st.spinner("Rendering page…"):
            image = document.render(index).image
    except DocumentError as exc:
        st.error(str(exc))
        return None
    st.session_state["_shown_page"] = (key, image)
    return image


class TokenView:
    """Streamed tokens drawn into a placeholder, at most once per TOKEN_REDRAW_S.

    A model streams many tokens a second; redrawing on each one floods the browser with messages.
    """

    def __init__(self, placeholder, tail: int, interval: float = TOKEN_REDRAW_S,
                 clock: Callable[[], float] = time.monotonic):
        self.placeholder = placeholder
        self.tail = tail
        self.interval = interval
        self.clock = clock
        self.draws = 0
        self.reset()

    def reset(self) -> None:
        """A new page: forget the previous page's tokens."""
        self._pieces: list[str] = []
        self._drawn_at = float("-inf")

    def __call__(self, piece: str) -> None:
        self._pieces.append(piece)
        now = self.clock()
        if now - self._drawn_at >= self.interval:
            self._drawn_at = now
            self.draws += 1
            self.placeholder.code("".join(self._pieces)[-self.tail:], language=None)


def draw_boxes(image: Image.Image, blocks: list[Block]) -> Image.Image:
    """The page with each block's box outlined in its category's colour."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 600))
    for block in blocks:
        colour = CATEGORY_COLOURS.get(block.category, (31, 119, 180))
        draw.rectangle(block.bbox, outline=colour, width=width)
    return canvas
