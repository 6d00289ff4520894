"""UI glue shared by the pages: the cached loader, uploads, page images, box overlays.

No model logic here: everything goes through utils.engine.loader.Loader.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from PIL import Image, ImageDraw

from models.contract import Block
from pages.ui.shell import require_app_shell as require_app_shell  # the pages import it from here
from utils import local_settings
from utils.config import cached_settings
from utils.documents.reader import ACCEPTED_SUFFIXES, Document, DocumentError, open_document
from utils.engine.loader import Loader, ModelStatus

TOKEN_REDRAW_S = 0.1  # streamed tokens redraw the page at most ten times a second
DISPLAY_WIDTH = 1000  # px of a page sent to the browser (a half-width column, sharp enough to read), never the scan
THUMB_HEIGHT = 120  # px of a page thumbnail
THUMB_DPI = 24  # a PDF page is rendered this small for its thumbnail, not rendered full and shrunk
BOX_GAP = 2  # px between a box's outline and the pixels it encloses, so no letter is drawn over
_log = logging.getLogger(__name__)

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


def _loader_is_healthy(loader: Loader) -> bool:
    healthy = getattr(loader, "healthy", None)
    return healthy() if callable(healthy) else True


def apply_local_settings(loader: Loader) -> list[str]:
    """The snapshot folders saved from the UI (data/local_settings.json), applied to a new loader.
    Returns one line for each that cannot be applied (the folder is gone, the model was removed)."""
    try:
        saved = local_settings.load()
    except local_settings.LocalSettingsError as exc:
        return [str(exc)]
    if not saved.model_paths:
        return []
    from models.vlm.weights import weights_problem  # the VLM package, only when a folder is saved

    problems = []
    for model, folder in saved.model_paths.items():
        if model not in loader.settings.models:
            problems.append(f"{model}: a local folder is saved for it, but config.yaml has no such model")
            continue
        problem = weights_problem(Path(folder))
        if problem:
            problems.append(f"{model}: the saved local folder cannot be used ({problem})")
            continue
        loader.set_model_path(model, folder)
    return problems


_startup_notes: list[str] = []  # local settings the loader of this server could not apply when it started


@st.cache_resource(show_spinner="Starting the OCR engine…", validate=_loader_is_healthy,
                   on_release=lambda loader: loader.close())
def _cached_loader() -> Loader:
    loader = Loader(cached_settings())
    _startup_notes[:] = apply_local_settings(loader)
    for note in _startup_notes:
        _log.warning(note)
    return loader


def get_loader() -> Loader:
    """One Loader per server process: models stay loaded across reruns and sessions."""
    with _loader_lock:
        return _cached_loader()


def startup_notes() -> list[str]:
    get_loader()
    return list(_startup_notes)


@st.cache_data(ttl=30, show_spinner=False)
def model_catalog() -> list[ModelStatus]:
    return get_loader().catalog()


@st.cache_data(ttl=30, show_spinner=False)
def model_status(name: str) -> ModelStatus:
    """One model's status: what a page needs, without checking every model (the sidebar does that)."""
    return get_loader().status(name)


@st.cache_data(ttl=30, show_spinner=False)
def default_model() -> str:
    loader = get_loader()
    return loader.default_model() or next(iter(loader.settings.models))


def current_model() -> str:
    """The model every page uses, in a plain session key (not a widget's) so it survives page switches;
    the sidebar changes it."""
    if "model" not in st.session_state:
        st.session_state["model"] = default_model()
    return st.session_state["model"]


def refresh_models() -> None:
    """After a change that makes a model (un)available: check again at the next look."""
    model_catalog.clear()
    model_status.clear()
    default_model.clear()


def model_label(status: ModelStatus) -> str:
    state = "ready" if status.availability.available else status.availability.status
    return f"{status.label} — {state}"


@st.cache_resource(max_entries=16, show_spinner=False)
def _open_cached(file_id: str, name: str, _data: bytes) -> Document:
    return open_document(name, _data, cached_settings().documents)


def open_upload(uploaded) -> Document | None:
    """A validated Document, or None after showing a one-line error (pages with their own uploader)."""
    try:
        return open_document_cached(uploaded.file_id, uploaded.name, uploaded.getvalue())
    except DocumentError as exc:
        st.error(str(exc))
        return None


def open_document_cached(file_id: str, name: str, data: bytes) -> Document:
    """A validated Document, or DocumentError in one line.

    Keyed by the upload's file_id, so the bytes are read and hashed once per upload, not on every
    rerun; the Document is immutable, so every rerun and session can share the cached one.
    """
    document = _open_cached(file_id, name, data)
    _ = document.digest  # hashed once, here, not in the middle of a later rerun
    return document


def page_image(document: Document, index: int) -> Image.Image | None:
    """The page at full size, rendered once (pages that draw on it themselves). Only that page is kept
    (one per session): a long document is never held in memory as pixels."""
    key = (document.digest, document.dpi, index)
    shown = st.session_state.get("_full_page")
    if shown is not None and shown[0] == key:
        return shown[1]
    try:
        image = document.render(index).image
    except DocumentError as exc:
        st.error(str(exc))
        return None
    st.session_state["_full_page"] = (key, image)
    return image


@dataclasses.dataclass(frozen=True)
class PageView:
    """A page as the browser gets it: at most DISPLAY_WIDTH wide; `size` is the page's own size, the
    one result boxes are measured in."""

    image: Image.Image
    size: tuple[int, int]

    @functools.cached_property
    def jpeg(self) -> bytes:
        return jpeg(self.image)


def shrink(image: Image.Image) -> PageView:
    small = image.convert("RGB")
    if image.width > DISPLAY_WIDTH:
        height = max(1, round(image.height * DISPLAY_WIDTH / image.width))
        small = small.resize((DISPLAY_WIDTH, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return PageView(small, image.size)


def page_view(document: Document, index: int) -> PageView | None:
    """The page on screen, rendered and shrunk once. Only that page is kept (one per session): a long
    document is never held in memory as pixels, nor sent to the browser at scan resolution."""
    key = (document.digest, document.dpi, index)
    shown = st.session_state.get("_shown_page")
    if shown is not None and shown[0] == key:
        return shown[1]
    try:
        view = shrink(document.render(index, keep=True).image)  # kept: Run is the likely next click
    except DocumentError as exc:
        st.error(str(exc))
        return None
    st.session_state["_shown_page"] = (key, view)
    return view


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    """What st.image is given: a JPEG encoded once here (Streamlit would encode at quality 100, 2-3x
    the bytes for a page of text)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(digest: str, index: int, _document: Document) -> bytes | None:
    """A small JPEG of one page (None: the page cannot be rendered; its error shows elsewhere)."""
    small = _document.at_dpi(THUMB_DPI) if _document.kind == "pdf" else _document
    try:
        image = small.render(index).image
    except DocumentError:
        return None
    image = image.convert("RGB")
    image.thumbnail((THUMB_HEIGHT * 2, THUMB_HEIGHT))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


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
    """The page with each block's box outlined in its category's colour, the outline drawn just outside
    the box so it never covers the first or last letter."""
    canvas = image.convert("RGB")  # a new image: the page itself is never drawn on
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 600))
    outside = BOX_GAP + width  # PIL draws an outline inwards from the rectangle it is given
    for block in blocks:
        colour = CATEGORY_COLOURS.get(block.category, (31, 119, 180))
        x1, y1, x2, y2 = block.bbox
        draw.rectangle((x1 - outside, y1 - outside, x2 + outside, y2 + outside), outline=colour, width=width)
    return canvas


def display_page(view: PageView, blocks: list[Block]) -> bytes:
    """The page as the browser gets it, with its boxes: a JPEG at most DISPLAY_WIDTH wide."""
    scale = view.image.width / view.size[0]
    if not blocks:
        return jpeg(view.image)
    scaled = [block.model_copy(update={"bbox": tuple(v * scale for v in block.bbox)}) for block in blocks]
    return jpeg(draw_boxes(view.image, scaled))
