import io
import struct

import pytest
from PIL import Image, ImageDraw

from tests.conftest import font, png_bytes, render_text_page
from utils.config import DocumentLimits
from utils.documents import reader
from utils.documents.reader import DocumentError, normalize_image, open_document, open_path, parse_page_selection


def make_pdf(pages: int, crop_outside: tuple[int, ...] = ()) -> bytes:
    """A real PDF with text pages, written by pypdfium2. Pages numbered in `crop_outside` (1-based) get
    a crop box that lies outside their media box: nothing on them can be rendered."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    pdf = pdfium.PdfDocument.new()
    for number in range(pages):
        page = pdf.new_page(420, 200)
        if number + 1 in crop_outside:
            raw.FPDFPage_SetCropBox(page, 1000, 1000, 1200, 1200)
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


# Task: any file a user has. Each kind of awkward file is made here, on the spot.

def tiff_with_tags(frames: list[Image.Image], frame: int, drop: tuple[int, ...] = (),
                   set_short: dict[int, int] | None = None) -> bytes:
    """A little-endian TIFF of these frames with tags of one frame's directory removed or overwritten
    (the tag id is renamed to an unknown one, so the directory keeps its size)."""
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    data = bytearray(buffer.getvalue())
    offset = struct.unpack("<I", data[4:8])[0]
    for _ in range(frame):
        count = struct.unpack("<H", data[offset:offset + 2])[0]
        offset = struct.unpack("<I", data[offset + 2 + 12 * count:offset + 6 + 12 * count])[0]
    count = struct.unpack("<H", data[offset:offset + 2])[0]
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        tag = struct.unpack("<H", data[entry:entry + 2])[0]
        if tag in drop:
            data[entry:entry + 2] = struct.pack("<H", 65000 + tag % 500)
        elif set_short and tag in set_short:
            data[entry + 8:entry + 12] = struct.pack("<HH", set_short[tag], 0)
    return bytes(data)


def test_a_tiff_page_without_dimensions_fails_alone_and_the_others_read():
    frames = [render_text_page([f"Page {i}"]).convert("L") for i in range(3)]
    data = tiff_with_tags(frames, frame=1, drop=(256,))  # page 2 has no ImageWidth
    doc = open_document("scan.tif", data)
    assert doc.page_count == 3
    assert doc.render(0).image.size == doc.render(2).image.size == frames[0].size
    with pytest.raises(DocumentError) as info:
        doc.render(1)
    assert str(info.value) == "scan.tif: page 2: the TIFF header is damaged (Missing dimensions)"


def test_a_tiff_without_dimensions_is_refused_with_the_reason():
    data = tiff_with_tags([Image.new("L", (40, 20), 255)], frame=0, drop=(256, 257))
    with pytest.raises(DocumentError, match=r"^scan.tif: the TIFF header is damaged \(.*dimensions\)$"):
        open_document("scan.tif", data)


def test_a_pdf_page_whose_crop_box_lies_outside_the_media_box_fails_alone():
    doc = open_document("report.pdf", make_pdf(3, crop_outside=(2,)))
    assert doc.page_count == 3
    assert doc.render(0).image.size == doc.render(2).image.size
    with pytest.raises(DocumentError) as info:
        doc.render(1)
    assert str(info.value) == ("report.pdf: page 2: its crop box (1000, 1000, 1200, 1200) lies outside its "
                               "media box (0, 0, 420, 200), so the page shows nothing")


def test_junk_before_the_pdf_header_is_read_as_the_renderer_reads_it():
    doc = open_document("mail.pdf", b"From: scanner@example.org\r\n\r\n" + make_pdf(2))
    assert doc.page_count == 2 and doc.render(1).image.size == (1167, 556)
    with pytest.raises(DocumentError, match="mail.pdf: the file is not a valid PDF"):
        open_document("mail.pdf", b"x" * 2000 + make_pdf(1))  # beyond the first 1024 bytes: no header


def _bmp_with_compression(code: int) -> bytes:
    data = bytearray(png_bytes(Image.new("RGB", (8, 8), "white"), "BMP"))
    data[30:34] = struct.pack("<I", code)
    return bytes(data)


def test_unsupported_and_damaged_files_are_told_apart():
    with pytest.raises(DocumentError, match=r"scan.bmp: this BMP variant is not supported by this install \("
                                            r"Unsupported BMP compression \(4\)\)"):
        open_document("scan.bmp", _bmp_with_compression(4))  # BI_JPEG inside a BMP
    frames = [Image.new("L", (40, 20), 255)]
    with pytest.raises(DocumentError, match="not supported by this install .unsupported compression scheme 34712"):
        open_document("scan.tif", tiff_with_tags(frames, 0, set_short={259: 34712}))  # JPEG 2000 in TIFF
    webp_in_tiff = tiff_with_tags(frames, 0, set_short={259: 50001})  # raw pixels labelled WebP
    expected = "uses webp compression, which this install cannot decode .not supported" \
        if reader._tiff_codec_missing("webp") else "the image data is damaged"
    with pytest.raises(DocumentError, match=expected):
        open_document("scan.tif", webp_in_tiff)
    truncated = png_bytes(render_text_page(["Hello"]), "TIFF")[:3000]
    with pytest.raises(DocumentError, match="scan.tif: the image data is damaged or truncated"):
        open_document("scan.tif", truncated)


@pytest.mark.parametrize("data", [b"%PDF-1.7\n1 0 obj << /Encrypt 2 0 R >> garbage", b"%PDF-1.4\n%%EOF",
                                  b"%PDF-1.7\n" + b"\x00" * 300])
def test_a_broken_pdf_is_damaged_not_encrypted_and_never_quotes_pdfium(data):
    with pytest.raises(DocumentError) as info:
        open_document("broken.pdf", data)
    message = str(info.value)
    assert message.startswith("broken.pdf: the PDF is damaged") and "PDFium" not in message, message


def test_a_pdf_encrypted_with_an_empty_password_opens(tmp_path):
    pikepdf = pytest.importorskip("pikepdf")
    source = tmp_path / "plain.pdf"
    source.write_bytes(make_pdf(2))
    with pikepdf.open(source) as pdf:
        pdf.save(tmp_path / "owner_only.pdf", encryption=pikepdf.Encryption(user="", owner="secret"))
    doc = open_path(tmp_path / "owner_only.pdf")
    assert b"/Encrypt" in doc.data and doc.page_count == 2 and doc.render(1).image.size == (1167, 556)


@pytest.mark.parametrize("fmt,suffix", [("GIF", "gif"), ("WEBP", "webp"), ("PNG", "png")])
def test_animated_images_read_the_first_frame_and_say_so(fmt, suffix):
    frames = [render_text_page([f"Frame {i}"]) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    doc = open_document(f"anim.{suffix}", buffer.getvalue())
    assert doc.page_count == 1
    assert doc.notes == (f"animated {fmt} with 3 frames: only the first frame is read",)
    assert open_document(f"still.{suffix}", png_bytes(frames[0], fmt)).notes == ()


def white_text_on_transparent() -> Image.Image:
    image = Image.new("RGBA", (900, 160), (255, 255, 255, 0))
    ImageDraw.Draw(image).text((40, 50), "Ghost invoice 4521", fill=(255, 255, 255, 255), font=font(40))
    return image


def test_transparency_goes_on_a_background_that_keeps_the_content_visible():
    light = normalize_image(white_text_on_transparent())
    assert light.getpixel((5, 5)) == (0, 0, 0)  # light content: a dark background
    assert max(light.getdata()) == (255, 255, 255)  # the text is still there, white on black
    dark = Image.new("RGBA", (200, 80), (0, 0, 0, 0))
    ImageDraw.Draw(dark).text((10, 20), "ink", fill=(20, 20, 20, 255), font=font(30))
    assert normalize_image(dark).getpixel((2, 2)) == (255, 255, 255)  # dark content: white
    keyed = Image.new("L", (20, 20), 0)
    keyed.info["transparency"] = 0
    assert normalize_image(keyed).getpixel((0, 0)) == (255, 255, 255)


def test_run_pages_renders_one_page_at_a_time(monkeypatch):
    import gc
    import weakref

    from models.contract import PageResult
    from utils.engine.runner import run_pages

    alive: list[weakref.ref] = []
    render = reader.Document.render

    def tracked(self, index):
        page = render(self, index)
        alive.append(weakref.ref(page.image))
        return page

    class CountingLoader:  # records how many rendered pages exist while each page is recognised
        def __init__(self):
            self.seen: list[int] = []

        def run(self, model, image, task, options, on_token=None, page=None, source=None, on_wait=None):
            gc.collect()
            self.seen.append(sum(ref() is not None for ref in alive))
            return PageResult(model=model, task=task, text=f"page {page}")

    monkeypatch.setattr(reader.Document, "render", tracked)
    loader = CountingLoader()
    doc = open_document("long.pdf", make_pdf(5, crop_outside=(3,)))
    outcomes = run_pages(loader, doc, range(5), "m", "text")  # type: ignore[arg-type]
    first = next(outcomes)
    assert len(alive) == 1 and first.result.text == "page 0"  # lazy: page 2 is not rendered yet
    rest = list(outcomes)
    assert loader.seen == [1, 1, 1, 1]  # page 3 failed to render and never reached the model
    assert [o.page for o in rest if o.error] == [2] and "crop box" in rest[1].error


def test_a_page_kept_for_the_screen_is_not_decoded_again_and_stays_unchanged(monkeypatch):
    doc = open_document("kept.png", png_bytes(render_text_page(["Kept for the run"])))
    decoded = []
    original = reader._render_image_page
    monkeypatch.setattr(reader, "_render_image_page", lambda d, i: decoded.append(i) or original(d, i))
    shown = doc.render(0, keep=True).image
    ImageDraw.Draw(shown).rectangle((0, 0, 50, 50), fill=(255, 0, 0))  # the caller owns its copy
    again = doc.render(0).image
    assert decoded == [0]
    assert again.getpixel((10, 10)) == (255, 255, 255)
    ImageDraw.Draw(again).rectangle((0, 0, 50, 50), fill=(0, 0, 255))
    assert doc.render(0).image.getpixel((10, 10)) == (255, 255, 255) and decoded == [0]


def test_pages_not_kept_are_decoded_each_time(monkeypatch):
    doc = open_document("batch.png", png_bytes(render_text_page(["Batch page"])))
    decoded = []
    original = reader._render_image_page
    monkeypatch.setattr(reader, "_render_image_page", lambda d, i: decoded.append(i) or original(d, i))
    doc.render(0)
    doc.render(0)
    assert decoded == [0, 0]


def test_recent_pages_stay_within_their_byte_budget():
    def page(width: int) -> reader.RenderedPage:
        return reader.RenderedPage(0, Image.new("RGB", (width, 100)))

    recent = reader._RecentPages(budget_bytes=100_000)  # 100x100 RGB = 30,000 bytes
    for name in "abc":
        recent.put((name,), page(100))
    recent.get(("a",))  # used: now the most recent
    recent.put(("d",), page(100))
    assert [k for k in "abcd" if recent.get((k,)) is not None] == ["a", "c", "d"]
    recent.put(("huge",), page(1000))  # over the whole budget: not kept, nothing evicted for it
    assert recent.get(("huge",)) is None and recent.get(("c",)) is not None
