"""Searchable PDF: each page image with an invisible text layer at the recognised line boxes.

The text layer is drawn by OCRmyPDF's fpdf2 renderer (the one its own pipeline uses): each line's
text is set in invisible text mode (Tr 3) on a baseline inside the line box and stretched (Tz) to
the box's width, so selecting or searching lands on the right place of the image above it. Our
results are turned into OCRmyPDF's engine-neutral element tree (page > line > word), one page at a
time, and the page image is placed over the text ("sandwich"), as OCRmyPDF does.

Boxes come from the result's blocks, in page pixels. A block holding several lines (a layout block)
is cut into equal bands, one per line; a result with text but no boxes (a VLM's plain text) gets its
lines spread down the page, so search still finds the page even though selection is approximate.
"""
from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from models.contract import PageResult
from utils.documents.reader import PDFIUM_LOCK, Document

DEFAULT_DPI = 200.0
JPEG_QUALITY = 88
# Text without boxes is laid out in bands of this many pixels at most, inside this margin (page fraction).
UNBOXED_LINE_PX = 60
UNBOXED_MARGIN = 0.05


@dataclass(frozen=True)
class PdfPage:
    """One page of the PDF: the page image the result's boxes refer to, and its resolution."""

    image: Image.Image
    result: PageResult
    dpi: float = DEFAULT_DPI


Box = tuple[float, float, float, float]


def text_lines(result: PageResult, width: int, height: int) -> list[tuple[Box, str]]:
    """(box in page pixels, text) per line, in reading order."""
    lines: list[tuple[Box, str]] = []
    for block in result.blocks:
        parts = [part.strip() for part in block.text.splitlines() if part.strip()]
        if not parts:
            continue
        x1, y1, x2, y2 = (float(v) for v in block.bbox)
        x1, x2 = max(0.0, min(x1, x2)), min(float(width), max(x1, x2))
        y1, y2 = max(0.0, min(y1, y2)), min(float(height), max(y1, y2))
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        band = (y2 - y1) / len(parts)
        lines += [((x1, y1 + i * band, x2, y1 + (i + 1) * band), part) for i, part in enumerate(parts)]
    if lines:
        return lines
    parts = [part.strip() for part in (result.text or result.markdown).splitlines() if part.strip()]
    if not parts:
        return []
    margin_x, margin_y = width * UNBOXED_MARGIN, height * UNBOXED_MARGIN
    band = min(UNBOXED_LINE_PX, (height - 2 * margin_y) / len(parts))
    return [((margin_x, margin_y + i * band, width - margin_x, margin_y + (i + 1) * band), part)
            for i, part in enumerate(parts)]


def _page_tree(result: PageResult, width: int, height: int, dpi: float):
    from ocrmypdf.models.ocr_element import BoundingBox, OcrClass, OcrElement

    lines = []
    for (x1, y1, x2, y2), text in text_lines(result, width, height):
        box = BoundingBox(left=x1, top=y1, right=x2, bottom=y2)
        # One word per line: the renderer stretches it to the line box, and a PDF reader splits it at
        # its spaces by the glyph advances, which is as close as line boxes can place the words.
        word = OcrElement(ocr_class=OcrClass.WORD, bbox=box, text=" ".join(text.split()))
        lines.append(OcrElement(ocr_class=OcrClass.LINE, bbox=box, children=[word]))
    return OcrElement(ocr_class=OcrClass.PAGE, bbox=BoundingBox(left=0, top=0, right=width, bottom=height),
                      dpi=dpi, children=lines)


def _save_image(image: Image.Image, folder: Path, index: int) -> Path:
    """JPEG for photos and greyscale scans; PNG keeps bilevel and palette pages small and sharp."""
    if image.mode == "1":
        path = folder / f"page{index}.png"
        image.save(path, optimize=True)
        return path
    path = folder / f"page{index}.jpg"
    image.convert("L" if image.mode in ("L", "LA") else "RGB").save(path, quality=JPEG_QUALITY)
    return path


def searchable_pdf(pages: Sequence[PdfPage]) -> bytes:
    """The pages, in order, as one PDF with an invisible text layer; raises ValueError for no pages."""
    if not pages:
        raise ValueError("a searchable PDF needs at least one page")
    from fpdf import FPDF
    from fpdf.enums import TextMode
    from ocrmypdf.font import MultiFontManager
    from ocrmypdf.fpdf_renderer import Fpdf2PdfRenderer

    fonts = MultiFontManager()
    pdf = FPDF(unit="pt")
    pdf.set_auto_page_break(auto=False)
    pdf.set_text_shaping(True)
    pdf.c_margin = 0  # no cell padding: text must start exactly at the box's left edge
    pdf.text_mode = TextMode.INVISIBLE
    registered: dict[str, str] = {}  # fonts embedded once for the whole file
    with tempfile.TemporaryDirectory(prefix="searchable_pdf_") as work:
        for index, page in enumerate(pages):
            width, height = page.image.size
            tree = _page_tree(page.result, width, height, page.dpi)
            renderer = Fpdf2PdfRenderer(page=tree, dpi=page.dpi, multi_font_manager=fonts, invisible_text=True,
                                        image=_save_image(page.image, Path(work), index))
            renderer._registered_fonts = registered  # as OCRmyPDF's multi-page renderer shares them
            renderer.render_to_pdf(pdf)
        return bytes(pdf.output())


def page_dpi(document: Document, index: int, image: Image.Image) -> float:
    """The resolution of this page image: a PDF page keeps its size in points; an image says its own
    resolution, else DEFAULT_DPI is assumed."""
    if document.kind == "pdf":
        import pypdfium2 as pdfium

        with PDFIUM_LOCK:
            pdf = pdfium.PdfDocument(document.data)
            try:
                width_pt = pdf[index].get_size()[0]
            finally:
                pdf.close()
        return image.width * 72.0 / width_pt if width_pt else DEFAULT_DPI
    with Image.open(io.BytesIO(document.data)) as source:
        dpi = source.info.get("dpi")
    try:
        value = float(dpi[0]) if dpi else 0.0
    except (TypeError, ValueError, IndexError):
        value = 0.0
    return value if 36 <= value <= 2400 else DEFAULT_DPI


def document_pdf(document: Document, results: Sequence[PageResult]) -> bytes:
    """A searchable PDF of these results' pages of `document`, each page rendered again from it."""
    pages = []
    for result in results:
        index = result.page or 0
        image = document.render(index).image
        if result.width and result.height and image.size != (result.width, result.height):
            image = image.resize((result.width, result.height))  # boxes are in the pixels it ran on
        pages.append(PdfPage(image, result, page_dpi(document, index, image)))
    return searchable_pdf(pages)
