"""Searchable PDF of a 3-page generated scan: pdftotext reads back the OCR output, and a word's box in
the PDF lies where the word is on the page image."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from models.contract import Block, PageResult
from tests.conftest import dp_levenshtein, font, render_text_page
from utils.config import cached_settings
from utils.documents.reader import open_document
from utils.documents.searchable_pdf import PdfPage, document_pdf, page_dpi, searchable_pdf, text_lines
from utils.engine.loader import Loader
from utils.engine.runner import run_pages

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils is not installed")

SIZE, LEFT, TOP = 30, 80, 60
PAGES = [
    ["Quarterly report of the northern branch", "Revenue grew by 12 percent in March", "Счёт на оплату номер 17"],
    ["Second page with the expense table", "Travel 4 250 roubles and hotels 9 800", "Итого к оплате 14 050 рублей"],
    ["Third page signed by the director", "Please keep this copy for your records", "Спасибо за своевременную оплату"],
]
DPI = 200


def scan_tiff() -> bytes:
    """Three pages in one TIFF at 200 dpi, like a scanner writes them."""
    images = [render_text_page(lines, size=SIZE, width=1300) for lines in PAGES]
    buffer = io.BytesIO()
    images[0].save(buffer, format="TIFF", save_all=True, append_images=images[1:], dpi=(DPI, DPI),
                   compression="tiff_deflate")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    document = open_document("scan.tiff", scan_tiff())
    loader = Loader(cached_settings())
    try:
        results = [o.result for o in run_pages(loader, document, [0, 1, 2], "tesseract", "text")]
    finally:
        loader.close()
    assert all(r is not None for r in results)
    path = tmp_path_factory.mktemp("pdf") / "scan.pdf"
    path.write_bytes(document_pdf(document, results))
    return document, results, path


def normalise(text: str) -> str:
    return " ".join(text.split())


def test_pdftotext_reads_back_the_ocr_output(scan):
    _, results, path = scan
    for number, result in enumerate(results, 1):
        extracted = subprocess.run(["pdftotext", "-f", str(number), "-l", str(number), str(path), "-"],
                                   capture_output=True, text=True, check=True).stdout
        expected = normalise(result.text)
        assert expected, "the OCR read nothing"
        cer = dp_levenshtein(normalise(extracted), expected) / len(expected)
        assert cer <= 0.01, (cer, extracted, expected)


def test_pages_have_the_scan_size_and_the_image_on_top(scan):
    import pikepdf

    _, _, path = scan
    with pikepdf.open(path) as pdf:
        assert len(pdf.pages) == 3
        width, height = render_text_page(PAGES[0], size=SIZE, width=1300).size
        box = [float(v) for v in pdf.pages[0].mediabox]
        assert box == pytest.approx([0, 0, width * 72 / DPI, height * 72 / DPI], abs=0.01)
        content = pdf.pages[0].Contents.read_bytes() if not isinstance(pdf.pages[0].Contents, pikepdf.Array) else \
            b"".join(c.read_bytes() for c in pdf.pages[0].Contents)
        assert b"3 Tr" in content  # invisible text
        assert content.rindex(b" Do") > content.rindex(b"ET")  # the image is drawn over the text layer
        assert len(list(pdf.pages[0].images)) == 1


def word_boxes(path: Path, page: int) -> list[tuple[str, float, float, float, float]]:
    xml = subprocess.run(["pdftotext", "-bbox", "-f", str(page), "-l", str(page), str(path), "-"],
                         capture_output=True, text=True, check=True).stdout
    return [(m[5], *(float(m[i]) for i in range(1, 5))) for m in re.finditer(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>', xml)]


@pytest.mark.parametrize("page,line,word", [(1, 0, "northern"), (1, 1, "March"), (2, 1, "hotels"), (3, 2, "оплату")])
def test_a_word_box_lies_where_the_word_is_on_the_page(scan, page, line, word):
    _, _, path = scan
    face = font(SIZE)
    text = PAGES[page - 1][line]
    start = text.index(word)
    x = LEFT + face.getlength(text[:start])
    left, top, right, bottom = face.getbbox(word)
    line_top = TOP + line * int(SIZE * 1.9)
    expected = [v * 72 / DPI for v in (x + left, line_top + top, x + right, line_top + bottom)]
    found = [box for box in word_boxes(path, page) if box[0] == word]
    assert len(found) == 1, word_boxes(path, page)
    _, x1, y1, x2, y2 = found[0]
    assert abs(x1 - expected[0]) <= 3 and abs(x2 - expected[2]) <= 3  # points; 1 pt = 2.8 px at 200 dpi
    assert abs((y1 + y2) / 2 - (expected[1] + expected[3]) / 2) <= 3
    assert y1 <= expected[1] + 1.5 and y2 >= expected[3] - 1.5  # the box covers the word's ink


def test_page_dpi_from_the_image_or_the_pdf_page():
    png = io.BytesIO()
    Image.new("RGB", (600, 300), "white").save(png, format="PNG", dpi=(300, 300))
    image_doc = open_document("a.png", png.getvalue())
    assert page_dpi(image_doc, 0, image_doc.render(0).image) == pytest.approx(300, abs=0.5)
    plain = io.BytesIO()
    Image.new("RGB", (600, 300), "white").save(plain, format="PNG")
    plain_doc = open_document("b.png", plain.getvalue())
    assert page_dpi(plain_doc, 0, plain_doc.render(0).image) == 200
    from tests.test_documents import make_pdf

    pdf = open_document("r.pdf", make_pdf(1), dpi=150)
    assert page_dpi(pdf, 0, pdf.render(0).image) == pytest.approx(150, rel=0.01)


def test_layout_blocks_are_cut_into_lines_and_text_without_boxes_is_spread_down_the_page():
    block = Block(bbox=(100, 100, 500, 160), category="Text", text="first line\n\nsecond line")
    result = PageResult(text="first line\nsecond line", model="m", task="layout", blocks=[block])
    assert text_lines(result, 800, 600) == [((100, 100, 500, 130), "first line"), ((100, 130, 500, 160), "second line")]
    unboxed = PageResult(text="alpha\nbeta\n\ngamma", model="m", task="text")
    lines = text_lines(unboxed, 1000, 1000)
    assert [t for _, t in lines] == ["alpha", "beta", "gamma"]
    assert all(b[0] == 50 and b[2] == 950 for b, _ in lines) and lines[0][0][1] < lines[1][0][1] < lines[2][0][1]
    pdf = searchable_pdf([PdfPage(Image.new("RGB", (1000, 1000), "white"), unboxed, 100)])
    extracted = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    assert normalise(extracted) == "alpha beta gamma"
    with pytest.raises(ValueError):
        searchable_pdf([])
