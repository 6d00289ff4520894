import io

import pytest
from PIL import Image

from tests.conftest import png_bytes, render_text_page
from utils.config import DocumentLimits
from utils.documents.reader import DocumentError, normalize_image, open_document, open_path, parse_page_selection


def make_pdf(pages: int, password: str | None = None) -> bytes:
    """A real PDF with text pages, written by pypdfium2 (encryption via a hand-made trailer is not possible)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    pdf = pdfium.PdfDocument.new()
    for number in range(pages):
        page = pdf.new_page(420, 200)
        font = raw.FPDFText_LoadStandardFont(pdf, b"Helvetica")
        text_obj = raw.FPDFPageObj_NewTextObj(pdf, b"Helvetica", 24.0)
        raw.FPDFText_SetText(text_obj, _utf16(f"Quarterly report, page {number + 1}"))
        raw.FPDFPageObj_Transform(text_obj, 1, 0, 0, 1, 40, 100)
        raw.FPDFPage_InsertObject(page, text_obj)
        raw.FPDFPage_GenerateContent(page)
        del font
    buffer = io.BytesIO()
    pdf.save(buffer)
    return buffer.getvalue()


def _utf16(text: str):
    import ctypes

    data = (text + "\x00").encode("utf-16-le")
    return ctypes.cast(ctypes.create_string_buffer(data, len(data)), ctypes.POINTER(ctypes.c_ushort))


@pytest.fixture(scope="module")
def page_png():
    return png_bytes(render_text_page(["Hello world"]))


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"),
                                        ("GIF", "gif"), ("TIFF", "tif")])
def test_every_image_format_opens_as_rgb(fmt, suffix):
    data = png_bytes(render_text_page(["Hello"]), fmt)
    doc = open_document(f"scan.{suffix}", data)
    assert doc.page_count == 1
    image = doc.render(0).image
    assert image.mode == "RGB" and image.size[0] > 100


def test_multipage_tiff_gives_every_page_and_gif_the_first_frame():
    frames = [render_text_page([f"Page {i}"]) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    doc = open_document("multi.tiff", buffer.getvalue())
    assert doc.page_count == 3
    assert doc.select("2-3").indices == [1, 2]
    assert doc.select("3,5").indices == [2] and "skipped page(s) 5" in doc.select("3,5").warnings[-1]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert open_document("anim.gif", buffer.getvalue()).page_count == 1


def test_pdf_pages_render_at_configured_dpi():
    data = make_pdf(3)
    doc = open_document("report.pdf", data, DocumentLimits(pdf_dpi=144))
    assert doc.page_count == 3
    image = doc.render(2).image
    assert image.size == (840, 400)  # 420x200 pt at 144 dpi
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_huge_pdf_page_is_rendered_smaller_with_a_warning():
    doc = open_document("big.pdf", make_pdf(1), DocumentLimits(pdf_dpi=600, max_page_pixels=100_000))
    page = doc.render(0)
    assert page.image.width * page.image.height <= 100_000
    assert "pixel limit" in page.warnings[0]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (200, 100), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = png_bytes(image, "JPEG", exif=exif.tobytes())
    assert open_document("photo.jpg", data).render(0).image.size == (100, 200)


def test_alpha_is_composited_on_white_and_16bit_cmyk_converted():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert normalize_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.new("I;16", (10, 10))
    sixteen.putpixel((0, 0), 65535)
    converted = normalize_image(sixteen)
    assert converted.mode == "RGB" and converted.getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (10, 10), (0, 0, 0, 255))
    assert normalize_image(cmyk).getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("spec,expected", [("1-3,7", [0, 1, 2, 6]), ("", list(range(8))), ("2", [1]),
                                           ("5-", [4, 5, 6, 7]), ("3,1-2,3", [2, 0, 1]), ("7-20", [6, 7]),
                                           ("2,12", [1])])
def test_page_selection(spec, expected):
    assert parse_page_selection(spec, 8) == expected


@pytest.mark.parametrize("spec", ["0", "a-b", "3-1", "9", "1;2"])
def test_bad_page_selection_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="page selection"):
        parse_page_selection(spec, 8)


def _bad_inputs(page_png):
    return {
        "empty": ("scan.png", b"", "is empty"),
        "truncated": ("scan.png", page_png[: len(page_png) // 2], "damaged or truncated"),
        "not an image": ("scan.png", b"hello, this is text", "damaged or not a PNG"),
        "wrong extension": ("scan.jpg", page_png, "name says JPEG but the content is PNG"),
        "unsupported type": ("notes.docx", b"PK\x03\x04", "not supported"),
        "broken pdf": ("report.pdf", b"%PDF-1.7\n1 0 obj garbage", "damaged"),
        "not a pdf": ("report.pdf", b"just text", "not a valid PDF"),
    }


@pytest.mark.parametrize("kind", ["empty", "truncated", "not an image", "wrong extension", "unsupported type",
                                  "broken pdf", "not a pdf"])
def test_bad_input_gives_one_line_error_naming_the_file(kind, page_png):
    name, data, message = _bad_inputs(page_png)[kind]
    with pytest.raises(DocumentError) as info:
        open_document(name, data)
    text = str(info.value)
    assert text.startswith(f"{name}:") and message in text and "\n" not in text


def test_encrypted_pdf_is_named_as_such(tmp_path):
    pikepdf = pytest.importorskip("pikepdf")
    source = tmp_path / "plain.pdf"
    source.write_bytes(make_pdf(1))
    with pikepdf.open(source) as pdf:
        pdf.save(tmp_path / "locked.pdf", encryption=pikepdf.Encryption(user="secret", owner="secret"))
    with pytest.raises(DocumentError, match="locked.pdf: the PDF is encrypted"):
        open_path(tmp_path / "locked.pdf")


def test_pdf_without_pages_is_refused():
    import pypdfium2 as pdfium

    buffer = io.BytesIO()
    pdfium.PdfDocument.new().save(buffer)
    with pytest.raises(DocumentError, match="empty.pdf: the PDF has no pages"):
        open_document("empty.pdf", buffer.getvalue())


def test_limits_from_config(page_png):
    with pytest.raises(DocumentError, match="over the limit of 0.001 MB"):
        open_document("scan.png", page_png, DocumentLimits(max_file_mb=0.001))
    with pytest.raises(DocumentError, match="over the limit of 1,000 pixels per page"):
        open_document("scan.png", page_png, DocumentLimits(max_page_pixels=1000))
    with pytest.raises(DocumentError, match="3 pages, over the limit of 2 pages"):
        open_document("long.pdf", make_pdf(3), DocumentLimits(max_pages=2))


def test_decompression_bomb_header_is_refused_before_decoding():
    # A PNG header claiming 100000 x 100000 pixels with almost no data behind it.
    bomb = _with_png_size(png_bytes(Image.new("1", (8, 8))), 100000, 100000)
    with pytest.raises(DocumentError, match="bomb.png: page 1 is 100000x100000 px, over the limit"):
        open_document("bomb.png", bomb)


def _with_png_size(data: bytes, width: int, height: int) -> bytes:
    import struct
    import zlib

    header = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + header + struct.pack(">I", zlib.crc32(header)) + data[33:]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DocumentError, match="nope.png: no such file"):
        open_path(tmp_path / "nope.png")
    with pytest.raises(DocumentError, match="is a directory"):
        open_path(tmp_path)


def test_documents_are_immutable_and_rendering_reports_its_own_warnings():
    import dataclasses

    doc = open_document("big.pdf", make_pdf(2), DocumentLimits(pdf_dpi=600, max_page_pixels=100_000))
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.notes = ("changed",)  # type: ignore[misc]
    first, again = doc.render(0), doc.render(0)
    assert first.warnings == again.warnings and len(first.warnings) == 1  # not piled up on the shared document
    assert doc.notes == ()
