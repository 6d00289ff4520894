"""The OCR page driven headless through AppTest, as a user would click it."""
import json

from tests.conftest import png_bytes, render_text_page
from tests.test_documents import make_pdf


def button(at, prefix: str):
    return next(b for b in at.button if b.label.startswith(prefix))


def test_upload_run_read_and_download(app_test, ru_en_png):
    at = app_test()
    assert at.session_state["model"] == "tesseract"
    at.file_uploader[0].upload("invoice.png", ru_en_png, "image/png").run()
    assert not at.error
    button(at, "Run").click().run()
    assert not at.exception and not at.error
    text = at.text_area[0].value
    assert "Invoice number 4521" in text and "Счёт на оплату" in text
    labels = [d.label for d in at.download_button]
    assert labels == ["⬇ TXT", "⬇ MD", "⬇ JSON"]
    # Device, profile and timings in one caption line (metric tiles cut long values off: "cpu_fallb…").
    assert not at.metric
    assert any(c.value.startswith("cpu") and "inference" in c.value and "profile" in c.value for c in at.caption)


def test_multipage_pdf_runs_selected_pages_and_offers_a_zip(app_test):
    at = app_test()
    at.file_uploader[0].upload("report.pdf", make_pdf(3), "application/pdf").run()
    assert at.number_input[0].label == "Page (of 3)"
    at.text_input[0].set_value("1-2").run()
    button(at, "Run").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "Quarterly report" in at.text_area[0].value
    assert [d.label for d in at.download_button][-1] == "⬇ ZIP (all pages)"


def test_corrupt_file_gets_one_line_message_and_the_good_one_still_works(app_test, ru_en_png):
    at = app_test()
    at.file_uploader[0].upload("good.png", ru_en_png, "image/png")
    at.file_uploader[0].upload("broken.png", ru_en_png[:300], "image/png").run()
    assert [e.value for e in at.error] == [
        "broken.png: the image data is damaged or truncated (image file is truncated)"] or \
        at.error[0].value.startswith("broken.png: the image data is damaged")
    assert not at.exception
    button(at, "Run").click().run()
    assert "Invoice number 4521" in at.text_area[0].value


def test_layout_task_draws_boxes(app_test, ru_en_png):
    at = app_test()
    at.file_uploader[0].upload("invoice.png", ru_en_png, "image/png").run()
    task = next(s for s in at.selectbox if s.label == "Task")
    task.set_value("layout").run()
    button(at, "Run").click().run()
    assert not at.error
    at.session_state["_tab_ocr"] = "JSON"  # only the open tab is drawn
    at.run()
    shown = json.loads(at.json[0].value)
    assert shown["task"] == "layout" and shown["blocks"]
    assert {b["category"] for b in shown["blocks"]} <= {"Text", "Section-header"}


def test_an_upload_is_hashed_once_not_on_every_rerun(app_test, monkeypatch):
    import hashlib

    from tests.test_documents import make_pdf
    from utils.documents import reader

    data = make_pdf(2)
    hashed = []
    sha256 = hashlib.sha256

    def counting_sha256(payload=b"", *args, **kwargs):
        if bytes(payload) == data:
            hashed.append(1)
        return sha256(payload, *args, **kwargs)

    monkeypatch.setattr(reader.hashlib, "sha256", counting_sha256)
    at = app_test()
    at.file_uploader[0].upload("report.pdf", data, "application/pdf").run()
    at.number_input[0].set_value(2).run()
    button(at, "Run").click().run()
    assert "page 2" in at.text_area[0].value
    at.number_input[0].set_value(1).run()
    at.run()
    assert not at.exception and not at.error
    assert len(hashed) == 1


def test_streamed_tokens_redraw_at_most_ten_times_a_second():
    from pages.ui.common import TokenView

    class Placeholder:
        def __init__(self):
            self.drawn: list[str] = []

        def code(self, text, language=None):
            self.drawn.append(text)

    now = [0.0]
    placeholder = Placeholder()
    view = TokenView(placeholder, tail=50, clock=lambda: now[0])
    for _ in range(1000):  # 1000 tokens over 2 seconds
        view("tok ")
        now[0] += 0.002
    assert 19 <= view.draws <= 21
    assert placeholder.drawn[0] == "tok " and len(placeholder.drawn[-1]) == 50
    view.reset()
    view("new page")
    assert placeholder.drawn[-1] == "new page"


def test_a_bad_page_shows_its_own_error_and_the_other_pages_keep_their_results(app_test):
    at = app_test()
    at.file_uploader[0].upload("cropped.pdf", make_pdf(3, crop_outside=(2,)), "application/pdf").run()
    at.text_input[0].set_value("1-3").run()
    button(at, "Run").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "cropped.pdf: page 2: its crop box (1000, 1000, 1200, 1200) lies outside its media box (0, 0, 420, 200), "
        "so the page shows nothing"]
    assert "Quarterly report, page 1" in at.text_area[0].value
    assert any("2 page(s) of cropped.pdf recognised" in c.value and "1 page(s) failed" in c.value for c in at.caption)
    at.number_input[0].set_value(3).run()
    assert "Quarterly report, page 3" in at.text_area[0].value and len(at.error) == 1
    at.number_input[0].set_value(2).run()
    assert len(at.error) == 1 and not at.text_area


def test_every_result_is_in_the_store_before_it_is_shown(app_test, ru_en_png, tmp_path, monkeypatch):
    from utils.config import cached_settings
    from utils.store import Store

    monkeypatch.setenv("OCR_STORE_DB", str(tmp_path / "results.db"))
    at = app_test()
    at.file_uploader[0].upload("invoice.png", ru_en_png, "image/png").run()
    button(at, "Run").click().run()
    assert not at.exception and "Invoice number 4521" in at.text_area[0].value
    stored = Store.from_settings(cached_settings()).results(model="tesseract")
    assert [(s.document_name, s.key.page, s.key.task) for s in stored] == [("invoice.png", 0, "text")]


def _cyrillic(text: str) -> bool:
    return any("\u0400" <= ch <= "\u04ff" for ch in text)


def test_languages_are_chosen_per_document_and_each_choice_keeps_its_own_result(app_test, ru_en_png, tmp_path,
                                                                                monkeypatch):
    from utils.config import cached_settings
    from utils.store import Store

    monkeypatch.setenv("OCR_STORE_DB", str(tmp_path / "results.db"))
    at = app_test()
    at.file_uploader[0].upload("invoice.png", ru_en_png, "image/png").run()
    languages = next(m for m in at.multiselect if m.label == "Languages")
    assert {"English (eng)", "Russian (rus)"} <= set(languages.options)
    assert languages.value == [] and "Automatic: rus+eng" in languages.placeholder
    languages.set_value(["eng"]).run()
    button(at, "Run").click().run()
    assert not at.error, [e.value for e in at.error]
    english_only = at.text_area[0].value
    assert "Invoice number 4521" in english_only and not _cyrillic(english_only)
    stored = Store.from_settings(cached_settings()).results(model="tesseract")
    assert [s.key.variant for s in stored] == ["languages=eng"]

    next(m for m in at.multiselect if m.label == "Languages").set_value([]).run()
    assert not at.text_area  # the automatic choice has not been run on this page yet
    button(at, "Run").click().run()
    assert "Счёт на оплату" in at.text_area[0].value
    next(m for m in at.multiselect if m.label == "Languages").set_value(["eng"]).run()
    assert at.text_area[0].value == english_only  # the first choice's result is still there

    at.file_uploader[0].upload("second.png", png_bytes(render_text_page(["Second document"])), "image/png").run()
    assert next(m for m in at.multiselect if m.label == "Languages").value == []  # a choice of its own


def test_a_model_with_fixed_languages_offers_no_choice(app_test, ru_en_png):
    at = app_test()
    at.session_state["model"] = "rapidocr"
    at.file_uploader[0].upload("invoice.png", ru_en_png, "image/png").run()
    assert not [m for m in at.multiselect if m.label == "Languages"]
