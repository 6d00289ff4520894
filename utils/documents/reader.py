"""Bytes in, validated page images out, one page at a time.

Every failure of reading a file becomes one DocumentError naming the file and saying what is wrong
(damaged, truncated, or a feature this install cannot read). A page that cannot be rendered fails on
its own: the document opens, its other pages render.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from utils.config import DocumentLimits

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff", "WEBP": "webp", "BMP": "bmp", "GIF": "gif",
                 "MPO": "jpeg"}
EXTENSIONS = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
    ".webp": "webp", ".bmp": "bmp", ".gif": "gif", ".pdf": "pdf",
}
ACCEPTED_SUFFIXES = sorted(s.lstrip(".") for s in EXTENSIONS)
# What the first bytes say, when Pillow cannot identify the file: names the format in the message.
MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
         (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"), (b"GIF87a", "gif"), (b"GIF89a", "gif"), (b"BM", "bmp"))
PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
# PDFium, like other readers, finds the header within the first 1024 bytes; what precedes it is ignored.
PDF_HEADER_WINDOW = 1024
# Pillow's words for a feature it (or the libraries it was built with) cannot decode.
UNSUPPORTED = re.compile(r"unsupported|not supported|not configured|no decoder|decoder \S+ not available|"
                         r"unknown (?:\w+ )?mode|not implemented|cannot handle", re.IGNORECASE)
# TIFF codecs that libtiff either has in both directions or not at all: a failing encode proves a missing decoder.
PROBED_TIFF_CODECS = ("webp", "zstd", "lzma", "jpeg", "tiff_lzw", "tiff_adobe_deflate")
PDF_ERRORS = {  # PDFium's load error codes, in the words the user reads
    2: "the file cannot be read as a PDF",
    3: "the PDF is damaged: its structure cannot be read",
    5: "the PDF uses an encryption scheme this install does not support",
    6: "the PDF is damaged: a page or its content cannot be read",
}
# The per-page pixel limit from config is checked on the header, before any decoding, so PIL's own
# process-wide guard (which raises at open, before we can name the page) is turned off.
Image.MAX_IMAGE_PIXELS = None


# PDFium is not thread-safe, not even across documents (pypdfium2's documentation), and pages are
# rendered from several threads: batch jobs, pages sent to a model server at once, the HTTP API.
PDFIUM_LOCK = threading.Lock()


class DocumentError(ValueError):
    """One line, naming the file, saying what is wrong with it."""


def _sniff(data: bytes) -> str | None:
    if data.find(b"%PDF-", 0, PDF_HEADER_WINDOW) >= 0:
        return "pdf"
    try:
        with Image.open(io.BytesIO(data)) as img:
            return IMAGE_FORMATS.get(img.format or "")
    except Exception:  # anything Pillow raises on unknown bytes means: not an image it can identify
        pass
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((kind for magic, kind in MAGIC if data.startswith(magic)), None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _why_unidentified(data: bytes, kind: str) -> str:
    """The reason Pillow's own reader for `kind` gives for refusing these bytes (Image.open hides it)."""
    factory = Image.OPEN.get(PIL_NAMES[kind], (None, None))[0]
    if factory is None:
        return "no reader for it"
    try:
        factory(io.BytesIO(data), "").close()
    except Exception as exc:
        cause = exc.__cause__
        # Pillow looks the TIFF compression up in a table; a KeyError means a scheme it has no decoder for.
        if kind == "tiff" and isinstance(cause, KeyError) and cause.args and isinstance(cause.args[0], int) \
                and cause.args[0] not in TiffImagePlugin.COMPRESSION_INFO:
            return f"unsupported compression scheme {cause.args[0]}"
        return _short(exc)
    return "cannot be identified"


@cache
def _tiff_codec_missing(compression: str) -> bool:
    if compression not in PROBED_TIFF_CODECS:
        return False
    try:
        Image.new("L", (8, 8)).save(io.BytesIO(), "TIFF", compression=compression)
    except Exception:
        return True
    return False


def _image_error(name: str, kind: str, exc: BaseException, img: Image.Image | None, where: str, stage: str,
                 data: bytes | None = None) -> DocumentError:
    """What is wrong, in one line: "not supported" for what this install cannot decode, else "damaged".

    `where` is "" or "page N: "; `stage` is "header" (identifying the image or seeking to its frame)
    or "data" (decoding the pixels); `data`, when the header could not be identified, lets
    Pillow's reader for this format say why.
    """
    detail = _short(exc)
    if isinstance(exc, UnidentifiedImageError) and data is not None:
        detail = _why_unidentified(data, kind)
    compression = img.info.get("compression") if img is not None and kind == "tiff" else None
    if isinstance(compression, str) and _tiff_codec_missing(compression):
        return DocumentError(f"{name}: {where}the TIFF uses {compression} compression, which this install cannot "
                             "decode (not supported); save it with another compression")
    if UNSUPPORTED.search(detail):
        return DocumentError(f"{name}: {where}this {kind.upper()} variant is not supported by this install "
                             f"({detail}); convert it to PNG and try again")
    if stage == "header":
        return DocumentError(f"{name}: {where}the {kind.upper()} header is damaged ({detail})")
    return DocumentError(f"{name}: {where}the image data is damaged or truncated ({detail})")


def _parse_selection(spec: str | None, page_count: int) -> tuple[list[int], list[int]]:
    """(chosen 0-based indices, 1-based numbers past the last page)."""
    if spec is None or not spec.strip() or spec.strip().lower() == "all":
        return list(range(page_count)), []
    chosen: list[int] = []
    past_end: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d*))?", part)
        if not match:
            raise ValueError(f"page selection '{spec}': '{part}' is not a page number or range like 2-5")
        start = int(match.group(1))
        end = start if match.group(2) is None else (int(match.group(2)) if match.group(2) else page_count)
        if start < 1 or end < start:
            raise ValueError(f"page selection '{spec}': '{part}' is not a valid range (pages start at 1)")
        if start > page_count:
            past_end.append(start)
        for number in range(start, min(end, page_count) + 1):
            if number - 1 not in chosen:
                chosen.append(number - 1)
    if not chosen:
        last = max(past_end)
        raise ValueError(f"page selection '{spec}': page {last} is past the last page ({page_count})")
    return chosen, past_end


def parse_page_selection(spec: str | None, page_count: int) -> list[int]:
    """'1-3,7' -> [0, 1, 2, 6] (0-based). Empty or None selects every page.

    Pages past the end are skipped (one selection can serve documents of different lengths);
    a selection that leaves no page at all is an error.
    """
    return _parse_selection(spec, page_count)[0]


def _background_for(rgba: Image.Image) -> tuple[int, int, int, int]:
    """White under dark content, black under light content (white text on a transparent background
    would vanish on white). Decided from the visible pixels, weighted by their opacity, on a sample."""
    step = max(1, int((rgba.width * rgba.height / 1_000_000) ** 0.5))
    sample = np.asarray(rgba, dtype=np.float32)[::step, ::step]
    alpha = sample[..., 3] / 255.0
    weight = float(alpha.sum())
    if weight == 0:
        return (255, 255, 255, 255)
    luminance = sample[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    mean = float((luminance * alpha).sum()) / weight
    return (0, 0, 0, 255) if mean > 127.5 else (255, 255, 255, 255)


def normalize_image(img: Image.Image) -> Image.Image:
    """EXIF orientation applied; 16-bit, CMYK, palette and alpha turned into plain 8-bit RGB.

    Transparency is composited on white, or on black when the visible content is light.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:  # a colour key marks the transparent pixels
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        lowest_alpha, _ = rgba.getchannel("A").getextrema()
        if isinstance(lowest_alpha, (int, float)) and lowest_alpha < 255:
            rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, _background_for(rgba)), rgba)
        img = rgba
    return img.convert("RGB") if img.mode != "RGB" else img


@dataclass(frozen=True)
class RenderedPage:
    """One page's pixels and what the reader has to say about this page."""

    index: int  # 0-based
    image: Image.Image = field(repr=False)
    warnings: tuple[str, ...] = ()

class _RecentPages:
    """Pages rendered for the screen, within a byte budget, so that running the page shown (or running
    it with several models in turn) does not decode it again. Bounded: memory stays flat."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._pages: OrderedDict[tuple, RenderedPage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(page: RenderedPage) -> int:
        return page.image.width * page.image.height * len(page.image.getbands())

    def get(self, key: tuple) -> RenderedPage | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def put(self, key: tuple, page: RenderedPage) -> None:
        size = self._size(page)
        if size > self.budget:
            return
        with self._lock:
            old = self._pages.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._pages[key] = page
            self._bytes += size
            while self._bytes > self.budget:
                _, dropped = self._pages.popitem(last=False)
                self._bytes -= self._size(dropped)


RECENT_PAGES = _RecentPages(64 * 2**20)  # two A4 pages at 300 dpi



@dataclass(frozen=True)
class PageSelection:
    indices: list[int]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    """A validated document, immutable so caches can share it. Pages are rendered on demand, one at
    a time, so a long PDF is never held in memory as pixels."""

    name: str
    kind: str
    data: bytes = field(repr=False)
    page_count: int
    limits: DocumentLimits
    dpi: int
    notes: tuple[str, ...] = ()  # what the reader found about the document as a whole

    @cached_property
    def digest(self) -> str:
        """Content hash, computed once: identifies the document in caches and kept results."""
        return hashlib.sha256(self.data).hexdigest()

    def at_dpi(self, dpi: int) -> Document:
        """The same document rendered at another resolution (a PDF's pages; images keep their pixels).
        The content hash goes with it: the bytes are the same, and hashing a large file again is slow."""
        other = dataclasses.replace(self, dpi=dpi)
        if "digest" in self.__dict__:
            other.__dict__["digest"] = self.__dict__["digest"]
        return other

    def render(self, index: int, *, keep: bool = False) -> RenderedPage:
        """The page's pixels; the caller owns the image it gets. `keep`: also keep a copy among the
        RECENT_PAGES, for a page about to be run after it is shown (the run then does not decode it again)."""
        if not 0 <= index < self.page_count:
            raise DocumentError(f"{self.name}: page {index + 1} does not exist (document has {self.page_count})")
        key = (self.digest, self.dpi if self.kind == "pdf" else 0, self.limits.max_page_pixels, index)
        kept = RECENT_PAGES.get(key)
        if kept is not None:
            return dataclasses.replace(kept, image=kept.image.copy())
        page = _render_pdf_page(self, index) if self.kind == "pdf" else _render_image_page(self, index)
        if keep:
            RECENT_PAGES.put(key, dataclasses.replace(page, image=page.image.copy()))
        return page

    def select(self, spec: str | None) -> PageSelection:
        """The pages a selection like "1-3,7" names, with a warning for pages past the end."""
        try:
            indices, past_end = _parse_selection(spec, self.page_count)
        except ValueError as exc:
            raise DocumentError(f"{self.name}: {exc}") from None
        warnings: tuple[str, ...] = ()
        if past_end:
            warnings = (f"the document has {self.page_count} page(s); skipped page(s) "
                        f"{', '.join(map(str, past_end))} of the selection",)
        return PageSelection(indices, warnings)


def _check_pixels(name: str, width: int, height: int, limits: DocumentLimits, page: int) -> None:
    if width * height > limits.max_page_pixels:
        raise DocumentError(
            f"{name}: page {page} is {width}x{height} px, over the limit of "
            f"{limits.max_page_pixels:,} pixels per page")
    if width < 1 or height < 1:
        raise DocumentError(f"{name}: page {page} has no pixels")


def _render_image_page(doc: Document, index: int) -> RenderedPage:
    where = f"page {index + 1}: " if doc.page_count > 1 else ""
    img: Image.Image | None = None
    stage = "header"
    try:
        with Image.open(io.BytesIO(doc.data)) as img:
            if index:
                img.seek(index)
            _check_pixels(doc.name, img.width, img.height, doc.limits, index + 1)
            stage = "data"
            img.load()
            return RenderedPage(index, normalize_image(img))
    except DocumentError:
        raise
    except Exception as exc:  # whatever the decoder raises, the user reads what is wrong with the file
        raise _image_error(doc.name, doc.kind, exc, img, where, stage) from None


def _points(box: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def _without_pdfium_suffix(exc: BaseException) -> str:
    # pypdfium2 appends "(PDFium: <last error>)", which is stale or "Success" outside document loading.
    return re.sub(r"\s*\(PDFium: [^)]*\)\.?", "", _short(exc)).rstrip(".") or type(exc).__name__


def _render_pdf_page(doc: Document, index: int) -> RenderedPage:
    with PDFIUM_LOCK:
        return _render_pdf_page_unlocked(doc, index)


def _render_pdf_page_unlocked(doc: Document, index: int) -> RenderedPage:
    import pypdfium2 as pdfium

    page_name = f"{doc.name}: page {index + 1}"
    try:
        pdf = pdfium.PdfDocument(doc.data)
    except Exception as exc:
        raise DocumentError(f"{page_name}: the PDF could not be opened again ({_without_pdfium_suffix(exc)})") from None
    try:
        try:
            page = pdf[index]
        except Exception:
            raise DocumentError(f"{page_name}: the page is damaged and cannot be loaded") from None
        width_pt, height_pt = page.get_size()
        if width_pt <= 0 or height_pt <= 0:
            raise DocumentError(f"{page_name}: its crop box {_points(page.get_cropbox())} lies outside its media box "
                                f"{_points(page.get_mediabox())}, so the page shows nothing")
        scale = doc.dpi / 72.0
        pixels = width_pt * height_pt * scale * scale
        warnings: tuple[str, ...] = ()
        if pixels > doc.limits.max_page_pixels:
            # A huge page is rendered smaller rather than refused: the text is still wanted.
            scale *= (doc.limits.max_page_pixels / pixels) ** 0.5 * 0.99  # pdfium rounds sizes up
            warnings = (f"page {index + 1} rendered at {scale * 72:.0f} dpi to stay under the pixel limit",)
        bitmap = page.render(scale=scale, fill_color=(255, 255, 255, 255))
        return RenderedPage(index, normalize_image(bitmap.to_pil()), warnings)
    except DocumentError:
        raise
    except Exception as exc:  # the renderer's own failure, in one line, for this page only
        raise DocumentError(f"{page_name}: the page could not be rendered ({_without_pdfium_suffix(exc)})") from None
    finally:
        pdf.close()


def _open_pdf(name: str, data: bytes) -> int:
    with PDFIUM_LOCK:
        return _open_pdf_unlocked(name, data)


def _open_pdf_unlocked(name: str, data: bytes) -> int:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = exc.err_code
        # PDFium's last-error code can be stale from an earlier document: believe "password" only when
        # the file has an encryption dictionary.
        if code == pdfium.raw.FPDF_ERR_PASSWORD and b"/Encrypt" in data:
            raise DocumentError(f"{name}: the PDF is encrypted with a password; save an unprotected copy and "
                                "try again") from None
        # PDFium refuses a page tree with no pages without an error code; say what it really is.
        if re.search(rb"/Count\s*0\b", data) and not re.search(rb"/Count\s*[1-9]", data):
            raise DocumentError(f"{name}: the PDF has no pages") from None
        reason = PDF_ERRORS.get(code or 0, "the PDF is damaged and cannot be opened")
        raise DocumentError(f"{name}: {reason}") from None
    except Exception as exc:
        raise DocumentError(f"{name}: the PDF cannot be opened ({_without_pdfium_suffix(exc)})") from None
    try:
        count = len(pdf)
    finally:
        pdf.close()
    if count == 0:
        raise DocumentError(f"{name}: the PDF has no pages")
    return count


def _tiff_page_count(img: Image.Image, cap: int) -> int:
    """Frames of a TIFF, counting one whose header is broken: it fails as a page of its own, the
    frames after it still count. Two broken frames in a row end the count (the chain is lost)."""
    count, failed_before = 1, False
    while count <= cap:
        try:
            img.seek(count)
            failed_before = False
        except EOFError:
            break
        except Exception:
            if failed_before:
                count -= 1
                break
            failed_before = True
        count += 1
    return count


def _open_image(name: str, data: bytes, kind: str, limits: DocumentLimits) -> tuple[int, tuple[str, ...]]:
    """(page count, notes on the document)."""
    img: Image.Image | None = None
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(name, img.width, img.height, limits, 1)
            if kind == "tiff":  # every frame of a TIFF is a page
                return _tiff_page_count(img, limits.max_pages), ()
            frames = getattr(img, "n_frames", 1)
            if getattr(img, "is_animated", False) and frames > 1:
                # Frames of an animation are not pages: often partial updates of one picture, and many.
                return 1, (f"animated {kind.upper()} with {frames} frames: only the first frame is read",)
            return 1, ()
    except DocumentError:
        raise
    except Exception as exc:
        raise _image_error(name, kind, exc, img, "", "header", data) from None


def open_document(name: str, data: bytes, limits: DocumentLimits | None = None, dpi: int | None = None) -> Document:
    """Validate bytes as a supported document; raises DocumentError with a one-line message."""
    limits = limits or DocumentLimits()
    name = Path(name).name or "upload"
    if not data:
        raise DocumentError(f"{name}: the file is empty")
    size_mb = len(data) / (1024 * 1024)
    if size_mb > limits.max_file_mb:
        raise DocumentError(f"{name}: the file is {size_mb:.1f} MB, over the limit of {limits.max_file_mb:g} MB")
    suffix = Path(name).suffix.lower()
    claimed = EXTENSIONS.get(suffix)
    if suffix and claimed is None:
        raise DocumentError(f"{name}: '{suffix}' files are not supported; use one of: {', '.join(ACCEPTED_SUFFIXES)}")
    actual = _sniff(data)
    if actual is None:
        if claimed == "pdf":
            raise DocumentError(f"{name}: the file is not a valid PDF")
        if claimed:
            raise DocumentError(f"{name}: the image data is damaged or not a {claimed.upper()} image")
        raise DocumentError(f"{name}: not a supported image or PDF")
    if claimed and claimed != actual:
        raise DocumentError(f"{name}: the name says {claimed.upper()} but the content is {actual.upper()}; "
                            "rename or re-export it")
    notes: tuple[str, ...] = ()
    if actual == "pdf":
        count = _open_pdf(name, data)
    else:
        count, notes = _open_image(name, data, actual, limits)
    if count > limits.max_pages:
        raise DocumentError(f"{name}: {count} pages, over the limit of {limits.max_pages} pages per document")
    doc = Document(name=name, kind=actual, data=data, page_count=count, limits=limits,
                   dpi=dpi or limits.pdf_dpi, notes=notes)
    if count == 1 and actual != "pdf":
        # A one-page image is decoded now, so truncated data is reported at upload, not mid-run; the
        # pages of a multi-page TIFF fail on their own.
        doc.render(0)
    return doc


def open_path(path: str | Path, limits: DocumentLimits | None = None, dpi: int | None = None) -> Document:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(f"{path.name}: no such file") from None
    except IsADirectoryError:
        raise DocumentError(f"{path.name}: is a directory, not a file") from None
    except OSError as exc:
        raise DocumentError(f"{path.name}: cannot be read ({exc.strerror or _short(exc)})") from None
    return open_document(path.name, data, limits, dpi)
