"""Bytes in, validated page images out. Every bad input becomes one DocumentError naming the file."""
from __future__ import annotations

import hashlib
import io
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from utils.config import DocumentLimits

IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "MPO": "jpeg"}
EXTENSIONS = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
    ".webp": "webp", ".bmp": "bmp", ".gif": "gif", ".pdf": "pdf",
}
ACCEPTED_SUFFIXES = sorted(s.lstrip(".") for s in EXTENSIONS)
# The per-page pixel limit from config is checked on the header, before any decoding, so PIL's own
# process-wide guard (which raises at open, before we can name the page) is turned off.
Image.MAX_IMAGE_PIXELS = None


# PDFium is not thread-safe, not even across documents (pypdfium2's documentation): pages are
# rendered from several threads (batch jobs, pages sent to a model server at once, the HTTP API).
PDFIUM_LOCK = threading.Lock()


class DocumentError(ValueError):
    """One line, naming the file, saying what is wrong with it."""


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"%PDF-"):
        return "pdf"
    try:
        with Image.open(io.BytesIO(data)) as img:
            return IMAGE_FORMATS.get(img.format or "")
    except (UnidentifiedImageError, OSError, ValueError):
        return None


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


def normalize_image(img: Image.Image) -> Image.Image:
    """EXIF orientation applied; 16-bit, CMYK, palette and alpha turned into plain 8-bit RGB on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


@dataclass
class Document:
    """A validated document. Pages are rendered on demand so a long PDF is not held in memory."""

    name: str
    kind: str
    data: bytes = field(repr=False)
    page_count: int
    limits: DocumentLimits
    dpi: int
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def digest(self) -> str:
        """Content hash, computed once: identifies the document in caches and kept results."""
        return hashlib.sha256(self.data).hexdigest()

    def render(self, index: int) -> Image.Image:
        if not 0 <= index < self.page_count:
            raise DocumentError(f"{self.name}: page {index + 1} does not exist (document has {self.page_count})")
        if self.kind == "pdf":
            return _render_pdf_page(self, index)
        return _render_image_page(self, index)

    def pages(self, selection: str | None = None) -> list[tuple[int, Image.Image]]:
        try:
            indices, past_end = _parse_selection(selection, self.page_count)
        except ValueError as exc:
            raise DocumentError(f"{self.name}: {exc}") from None
        if past_end:
            self.warnings.append(f"the document has {self.page_count} page(s); skipped page(s) "
                                 f"{', '.join(map(str, past_end))} of the selection")
        return [(i, self.render(i)) for i in indices]


def _check_pixels(name: str, width: int, height: int, limits: DocumentLimits, page: int) -> None:
    if width * height > limits.max_page_pixels:
        raise DocumentError(
            f"{name}: page {page} is {width}x{height} px, over the limit of "
            f"{limits.max_page_pixels:,} pixels per page")
    if width < 1 or height < 1:
        raise DocumentError(f"{name}: page {page} has no pixels")


def _render_image_page(doc: Document, index: int) -> Image.Image:
    try:
        with Image.open(io.BytesIO(doc.data)) as img:
            frames = ImageSequence.Iterator(img)
            frame = frames[index]
            _check_pixels(doc.name, frame.width, frame.height, doc.limits, index + 1)
            frame.load()
            return normalize_image(frame.copy())
    except DocumentError:
        raise
    except (OSError, ValueError, SyntaxError, IndexError) as exc:
        raise DocumentError(f"{doc.name}: the image data is damaged or truncated ({_short(exc)})") from None


def _render_pdf_page(doc: Document, index: int) -> Image.Image:
    import pypdfium2 as pdfium

    try:
        with PDFIUM_LOCK:
            pdf = pdfium.PdfDocument(doc.data)
            try:
                page = pdf[index]
                width_pt, height_pt = page.get_size()
                scale = doc.dpi / 72.0
                pixels = width_pt * height_pt * scale * scale
                if pixels > doc.limits.max_page_pixels:
                    # A huge page is rendered smaller rather than refused: the text is still wanted.
                    scale *= (doc.limits.max_page_pixels / pixels) ** 0.5 * 0.99  # pdfium rounds sizes up
                    note = f"page {index + 1} rendered at {scale * 72:.0f} dpi to stay under the pixel limit"
                    if note not in doc.warnings:
                        doc.warnings.append(note)
                bitmap = page.render(scale=scale, fill_color=(255, 255, 255, 255))
                image = bitmap.to_pil()
            finally:
                pdf.close()
    except pdfium.PdfiumError as exc:
        raise DocumentError(f"{doc.name}: page {index + 1} of the PDF could not be rendered ({_short(exc)})") from None
    return normalize_image(image)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _open_pdf(name: str, data: bytes, limits: DocumentLimits) -> int:
    import pypdfium2 as pdfium

    try:
        with PDFIUM_LOCK:
            pdf = pdfium.PdfDocument(data)
            try:
                count = len(pdf)
            finally:
                pdf.close()
    except pdfium.PdfiumError as exc:
        # PDFium's last-error code can be stale from an earlier document, so read the file itself.
        if b"/Encrypt" in data:
            raise DocumentError(f"{name}: the PDF is encrypted with a password; save an unprotected copy and try again") from None
        # PDFium refuses a page tree with no pages without an error code; say what it really is.
        if re.search(rb"/Count\s*0\b", data) and not re.search(rb"/Count\s*[1-9]", data):
            raise DocumentError(f"{name}: the PDF has no pages") from None
        raise DocumentError(f"{name}: the PDF is damaged and cannot be opened ({_short(exc)})") from None
    if count == 0:
        raise DocumentError(f"{name}: the PDF has no pages")
    return count


def _open_image(name: str, data: bytes, kind: str, limits: DocumentLimits) -> int:
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(name, img.width, img.height, limits, 1)
            # GIF: the first frame is the page; TIFF: every frame is a page.
            count = getattr(img, "n_frames", 1) if kind == "tiff" else 1
            img.verify()
    except DocumentError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DocumentError(f"{name}: the image data is damaged or truncated ({_short(exc)})") from None
    return count


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
        raise DocumentError(f"{name}: the name says {claimed.upper()} but the content is {actual.upper()}; rename or re-export it")
    if actual == "pdf":
        count = _open_pdf(name, data, limits)
    else:
        count = _open_image(name, data, actual, limits)
    if count > limits.max_pages:
        raise DocumentError(f"{name}: {count} pages, over the limit of {limits.max_pages} pages per document")
    doc = Document(name=name, kind=actual, data=data, page_count=count, limits=limits,
                   dpi=dpi or limits.pdf_dpi)
    if actual != "pdf":
        doc.render(0)  # decode once now so truncated image data is reported at upload, not mid-run
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
        raise DocumentError(f"{path.name}: cannot be read ({exc.strerror})") from None
    return open_document(path.name, data, limits, dpi)
