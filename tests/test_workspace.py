"""The workspace through AppTest (issue 12): nothing vanishes across pages, a refresh or a restart; edits
are kept as corrections; multi-page runs show what ran; downloads say what they hold; details."""
from __future__ import annotations

import json
import os
import time

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from tests.conftest import png_bytes, render_text_page
from tests.test_documents import make_pdf
from utils.store import Store

LINES = ["Invoice 4521 for March services", "Please pay within fourteen days"]


@pytest.fixture(scope="module")
def page_png() -> bytes:
    return png_bytes(render_text_page(LINES, size=32))


@pytest.fixture
def downloads(monkeypatch) -> dict[str, str | bytes]:
    """Every download button's file, by file name (files made on click are made here)."""
    files: dict[str, str | bytes] = {}
    add, add_deferred = MediaFileManager.add, MediaFileManager.add_deferred

    def record(self, data, mimetype, coordinates, file_name=None, *args, **kwargs):
        if file_name:
            files[file_name] = data
        return add(self, data, mimetype, coordinates, file_name, *args, **kwargs)

    def record_deferred(self, make, mimetype, coordinates, file_name=None, **kwargs):
        if file_name:
            files[file_name] = make()
        return add_deferred(self, make, mimetype, coordinates, file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add", record)
    monkeypatch.setattr(MediaFileManager, "add_deferred", record_deferred)
    return files


def run_button(at: AppTest):
    return next(b for b in at.button if b.label.startswith("Run "))


def run(at: AppTest) -> AppTest:
    run_button(at).click().run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    """Add a file to the OCR page's uploader, as a user dropping one more file does."""
    files = at.session_state["_test_uploads"] if "_test_uploads" in at.session_state else []
    files = [*files, (name, data, mime)]
    at.session_state["_test_uploads"] = files
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, at.exception
    return at


def text_box(at: AppTest):
    return next(t for t in at.text_area if t.label == "Recognised text")


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


# ---- 1. work never vanishes ---------------------------------------------------------------------------


def test_documents_results_and_reference_survive_page_switches(app_test, page_png):
    at = app_test()
    upload(at, "invoice.png", page_png)
    run(at)
    recognised = text_box(at).value
    assert "Invoice 4521" in recognised

    at.switch_page("pages/compare.py").run()
    assert not any("Upload a document" in c for c in captions(at))  # the OCR page's document is here too
    at.text_area(key="compare_reference").set_value("\n".join(LINES)).run()
    at.switch_page("pages/system.py").run()
    at.switch_page("pages/compare.py").run()
    assert at.text_area(key="compare_reference").value == "\n".join(LINES)

    at.switch_page("pages/ocr.py").run()
    assert not any("Upload one or more documents" in c for c in captions(at))
    assert text_box(at).value == recognised  # the result too, without running again


def test_a_new_session_restores_the_last_one_with_one_click(app_test, page_png, tmp_path):
    pdf = make_pdf(3)
    at = app_test()
    upload(at, "invoice.png", page_png)
    run(at)
    at.switch_page("pages/compare.py").run()
    at.text_area(key="compare_reference").set_value("Invoice 4521").run()
    at.switch_page("pages/ocr.py").run()
    upload(at, "report.pdf", pdf)
    at.text_input(key=next(t.key for t in at.text_input if t.label == "Pages to run")).set_value("2-3").run()
    run(at)
    text_box(at).set_value("Quarterly report, page two (checked)").run()
    store = Store(os.environ["OCR_STORE_DB"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the snapshot is written off the page's path
        saved = store.last_workspace()
        if saved is not None and any(r for r in saved.state["results"]) and saved.state["widgets"]:
            if store.get(saved.state["results"][-1]).correction:
                break
        time.sleep(0.05)

    again = app_test()  # a refresh, or a restart: a new session, only the store remembers
    assert any(b.label == "Restore last session" for b in again.button)
    assert any("invoice.png" in i.value and "report.pdf" in i.value for i in again.info), [i.value for i in again.info]
    next(b for b in again.button if b.label == "Restore last session").click().run()
    assert not again.exception and not again.error
    picker = again.selectbox(key="ocr_document")
    assert picker.options == ["invoice.png (1 page)", "report.pdf (3 pages)"]
    assert again.text_input(key=next(t.key for t in again.text_input if t.label == "Pages to run")).value == "2-3"
    assert text_box(again).value == "Quarterly report, page two (checked)"
    assert any("corrected by you" in c for c in captions(again))
    picker.select_index(0).run()
    assert "Invoice 4521" in text_box(again).value
    assert not any(b.label == "Restore last session" for b in again.button)
    again.switch_page("pages/compare.py").run()
    assert again.text_area(key="compare_reference").value == "Invoice 4521"


def test_every_result_is_in_the_store_when_it_is_shown(app_test, page_png):
    at = run(upload(app_test(), "invoice.png", page_png))
    store = Store(os.environ["OCR_STORE_DB"])
    rows = store.results()
    assert len(rows) == 1 and rows[0].document_name == "invoice.png"
    assert store.get(rows[0].id).result.text == text_box(at).value


def test_a_store_that_cannot_be_opened_costs_a_warning_not_the_result(app_test, page_png, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("OCR_STORE_DB", str(blocker / "results.db"))
    at = run(upload(app_test(), "invoice.png", page_png))
    assert "Invoice 4521" in text_box(at).value
    assert any(w.value.startswith("The results store cannot be opened") for w in at.warning)


def test_a_snapshot_folder_set_in_the_ui_is_saved_and_applied_at_the_next_start(app_test, tmp_path):
    from pages.ui.common import apply_local_settings
    from utils import local_settings
    from utils.config import cached_settings
    from utils.engine.loader import Loader

    folder = tmp_path / "Qwen3-VL-2B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    at = app_test()
    at.sidebar.selectbox[0].set_value("qwen3_vl_2b").run()
    box = at.sidebar.text_input[0]
    assert box.placeholder == "/models/Qwen3-VL-2B-Instruct"  # the model chosen, not Qwen2-VL
    box.set_value(str(folder))
    next(b for b in at.sidebar.button if b.label == "Use this folder").click().run()
    assert not at.exception
    assert local_settings.load().model_paths == {"qwen3_vl_2b": str(folder)}
    assert not (folder.parent / "config.yaml").exists()

    loader = Loader(cached_settings())  # the next start
    try:
        assert loader.settings.model("qwen3_vl_2b").local_path is None
        assert apply_local_settings(loader) == []
        assert loader.settings.model("qwen3_vl_2b").local_path == str(folder)
    finally:
        loader.close()
    folder.joinpath("model.safetensors").unlink()  # the folder lost its weights: said, not applied
    loader = Loader(cached_settings())
    try:
        problems = apply_local_settings(loader)
        assert len(problems) == 1 and problems[0].startswith("qwen3_vl_2b: the saved local folder cannot be used")
        assert loader.settings.model("qwen3_vl_2b").local_path is None
    finally:
        loader.close()


def test_history_opens_a_stored_result_in_the_ocr_workspace(app_test):
    at = upload(app_test(), "report.pdf", make_pdf(3))
    next(t for t in at.text_input if t.label == "Pages to run").set_value("2-3").run()
    run(at)

    again = app_test()  # another session, after a restart: History has the results
    again.switch_page("pages/history.py").run()
    picker = again.selectbox(key="history_open")
    picker.select_index(next(i for i, o in enumerate(picker.options) if "page 3" in o)).run()
    next(b for b in again.button if b.label == "Open in the OCR workspace").click().run()
    assert not again.exception
    assert again.title[0].value == "OCR"
    assert again.number_input[0].value == 3 and "Quarterly report, page 3" in text_box(again).value
    labels = [b.label for b in again.button if b.key and "_thumb_" in b.key]
    assert labels == ["1", "2 ✓", "3 ✓"]  # the document's other page read this way came along


# ---- 2. edits kept --------------------------------------------------------------------------------------


def test_an_edit_is_kept_as_a_correction_and_the_downloads_give_it(app_test, page_png, downloads):
    at = run(upload(app_test(), "invoice.png", page_png))
    original = text_box(at).value
    corrected = original.replace("4521", "4527")
    text_box(at).set_value(corrected).run()
    assert any(c.startswith("✎ Corrected by you") for c in captions(at))
    store = Store(os.environ["OCR_STORE_DB"])
    stored = store.get(store.results()[0].id)
    assert stored.correction == corrected and stored.result.text == original

    assert downloads["invoice_text_tesseract.txt"] == corrected
    saved = json.loads(downloads["invoice_text_tesseract.json"])
    assert saved["text"] == original and saved["corrected_text"] == corrected

    next(b for b in at.button if b.label == "Undo the correction").click().run()
    assert text_box(at).value == original
    assert store.get(stored.id).correction is None
    assert not any(c.startswith("✎ Corrected by you") for c in captions(at))


def test_history_shows_and_keeps_a_correction(app_test, page_png):
    at = run(upload(app_test(), "invoice.png", page_png))
    text_box(at).set_value("Invoice 4527 (fixed)").run()
    at.switch_page("pages/history.py").run()
    assert text_box(at).value == "Invoice 4527 (fixed)"
    assert list(at.dataframe[0].value["corrected"]) == ["✎"]
    text_box(at).set_value("Invoice 4528").run()
    store = Store(os.environ["OCR_STORE_DB"])
    assert store.get(store.results()[0].id).correction == "Invoice 4528"


# ---- 3. multi-page --------------------------------------------------------------------------------------


def test_a_run_of_pages_2_3_shows_page_2_and_moving_keeps_the_selection(app_test, downloads):
    at = upload(app_test(), "report.pdf", make_pdf(4))
    pages = next(t for t in at.text_input if t.label == "Pages to run")
    pages.set_value("2-3").run()
    run(at)
    assert at.number_input[0].value == 2  # the first page that ran, not page 1
    assert "Quarterly report, page 2" in text_box(at).value
    labels = [b.label for b in at.button if b.key and "_thumb_" in b.key]
    assert labels == ["1", "2 ✓", "3 ✓", "4"]
    next(b for b in at.button if b.label == "3 ✓").click().run()
    assert at.number_input[0].value == 3 and "page 3" in text_box(at).value
    assert next(t for t in at.text_input if t.label == "Pages to run").value == "2-3"
    at.number_input[0].set_value(4).run()
    assert next(t for t in at.text_input if t.label == "Pages to run").value == "2-3"
    assert len(at.get("image")) >= 5  # four thumbnails and the page

    # 9. downloads: the pages and the task in the name; each page ends with a newline before the form feed
    assert set(downloads) >= {"report_p2-3_text_tesseract.txt", "report_p2-3_text_tesseract.zip"}
    text = downloads["report_p2-3_text_tesseract.txt"]
    first, second = text.split("\f")
    assert first.endswith("\n") and "page 2" in first and "page 3" in second and second.endswith("\n")


# ---- 9. the free prompt is in the JSON ------------------------------------------------------------------


def test_the_free_prompt_json_records_the_prompt():
    from models.contract import PageResult
    from utils.documents.export import document_text, download_name, page_text

    result = PageResult(text="A cat.", model="qwen3_vl_2b", task="prompt", page=0)
    assert json.loads(page_text(result, "json", prompt="What animal is this?"))["prompt"] == "What animal is this?"
    assert json.loads(document_text([result], "json", prompt="What?"))[0]["prompt"] == "What?"
    assert download_name("scan.png", [0], "prompt", "qwen3_vl_2b", "json", 1) == "scan_prompt_qwen3_vl_2b.json"
    assert download_name("a/report.pdf", [1, 2, 4], "layout", "rapidocr", "md", 9) == \
        "report_p2-3_5_layout_rapidocr.md"


# ---- 10. details ----------------------------------------------------------------------------------------


def test_a_second_file_is_selected_when_added(app_test, page_png):
    at = upload(app_test(), "first.png", page_png)
    upload(at, "second.pdf", make_pdf(2), "application/pdf")
    picker = next(s for s in at.selectbox if s.label == "Document")
    assert picker.options == ["first.png (1 page)", "second.pdf (2 pages)"]
    assert at.session_state["workspace"].documents[picker.value].name == "second.pdf"
    assert at.number_input[0].label == "Page (of 2)"


def test_run_disabled_says_why(app_test):
    at = upload(app_test(), "report.pdf", make_pdf(3))
    next(t for t in at.text_input if t.label == "Pages to run").set_value("abc").run()
    assert run_button(at).disabled
    assert any(c.startswith("report.pdf: ") for c in captions(at))
    at.sidebar.selectbox[0].set_value("qwen3_vl_2b").run()
    assert run_button(at).disabled
    assert any("is not available here" in c for c in captions(at))


def test_bad_file_errors_one_per_file_and_gone_with_the_file(app_test, page_png):
    at = app_test()
    broken = ("broken.png", page_png[:300], "image/png")
    at.file_uploader[0].set_value([broken, broken]).run()  # dropped twice
    at.run()
    at.run()  # reruns do not add to it
    assert [e.value[:20] for e in at.error] == ["broken.png: the imag"]
    at.file_uploader[0].set_value([broken, ("good.png", page_png, "image/png")]).run()
    assert [e.value[:20] for e in at.error] == ["broken.png: the imag"]
    at.file_uploader[0].set_value([("good.png", page_png, "image/png")]).run()
    assert not at.error  # the file is removed, its error with it
    assert run_button(at) and not any("Upload one or more" in c for c in captions(at))


def test_boxes_are_drawn_outside_the_letters():
    from PIL import Image, ImageDraw

    from models.contract import Block
    from pages.ui.common import draw_boxes

    page = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(page).rectangle((100, 80, 300, 120), fill="black")  # "text" filling its box exactly
    drawn = draw_boxes(page, [Block(bbox=(100, 80, 300, 120))])
    inside = drawn.crop((100, 80, 301, 121))
    assert inside.getextrema() == ((0, 0), (0, 0), (0, 0))  # every letter pixel as it was
    assert drawn.getpixel((96, 100)) != (255, 255, 255)  # the outline, just outside


def test_compare_shows_percentages_with_two_decimals_and_no_stale_progress_lines(app_test, page_png):
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    at = app_test()
    at.switch_page("pages/compare.py").run()
    at.file_uploader(key="compare_upload").upload("invoice.png", page_png, "image/png").run()
    at.text_area(key="compare_reference").set_value("Invoice 4521 for April services\nPlease pay").run()
    at.button(key="compare_run").click().run()
    assert not at.exception
    shown = convert_arrow_bytes_to_pandas_df(at.table[0].proto.arrow_data.styler.display_values)
    for value in shown["CER %"]:
        assert value.replace(".", "", 1).isdigit() and len(value.split(".")[1]) == 2, value
    assert not [m.value for m in at.markdown if m.value.startswith(("✓", "✗"))]
    at.run()
    assert not [m.value for m in at.markdown if m.value.startswith(("✓", "✗"))]


def test_no_metric_tiles_on_the_result(app_test, page_png):
    at = run(upload(app_test(), "invoice.png", page_png))
    assert not at.metric  # tiles cut long values off ("cpu_fallb…"): one caption line instead
    line = next(c for c in captions(at) if "inference" in c)
    assert line.startswith("cpu") and "profile " in line and " boxes" in line
