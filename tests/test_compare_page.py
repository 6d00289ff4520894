"""The Compare page driven headless through AppTest: two real models on a generated page."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import png_bytes, render_text_page

LINES = ["Invoice 4521 for March services", "Please pay within fourteen days"]
REFERENCE = "\n".join(LINES)


@pytest.fixture(scope="module")
def page_png() -> bytes:
    return png_bytes(render_text_page(LINES, size=32))


def start(app_test, png: bytes, reference: str = "", keywords: str = "") -> AppTest:
    at = app_test()
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    at.file_uploader(key="compare_upload").upload("invoice.png", png, "image/png").run()
    at.text_area(key="compare_reference").set_value(reference)
    at.text_area(key="compare_keywords").set_value(keywords)
    at.run()
    assert not at.exception
    return at


def run_models(at: AppTest) -> AppTest:
    at.button(key="compare_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def results(at: AppTest) -> dict:
    return dict(at.session_state["compare_results"])


def test_two_models_side_by_side_with_scores_and_diff(app_test, page_png):
    at = start(app_test, page_png, REFERENCE, "4521\nZebra")
    assert at.multiselect(key="compare_models").value == ["tesseract", "rapidocr"]
    assert at.button(key="compare_run").label == "Run 2 models"
    run_models(at)
    outputs = [c.value for c in at.code]
    assert len(outputs) == 2
    for text in outputs:
        assert "Invoice 4521" in text and "fourteen days" in text
    headers = [h.value for h in at.subheader]
    assert headers[:2] == ["Tesseract 5 (rus+eng)", "RapidOCR (PP-OCR, Latin)"]
    assert sum("inference" in m.value and " s" in m.value for m in at.markdown) == 2

    table = at.table[0].value
    assert list(table.index) == headers[:2]
    assert list(table.columns) == ["CER %", "WER %", "Keyword recall %", "Bag-of-words F1 %", "Seconds"]
    assert (table["CER %"] < 10).all()
    assert (table["Keyword recall %"] == 50.0).all()  # "4521" found, "Zebra" not
    assert sum("missed: Zebra" in c.value for c in at.caption) == 2

    diff = at.html[0].proto.body
    assert 'class="compare-diff"' in diff and "Invoice" in diff
    assert any(c.value.startswith("Agreement ") for c in at.caption)


def test_diff_against_reference_marks_changes_and_escapes_text(app_test, page_png):
    reference = "Invoice <b>4521</b> for April & services\nPlease pay within fourteen days"
    at = run_models(start(app_test, page_png, reference))
    at.selectbox(key="compare_diff_b").set_value("Reference text").run()
    diff = at.html[0].proto.body
    assert "<del" in diff and "<ins" in diff
    assert "&lt;b&gt;4521&lt;/b&gt;" in diff and "&amp;" in diff
    assert "<b>" not in diff
    deleted = [chunk.split("</del>")[0].split(">", 1)[1] for chunk in diff.split("<del")[1:]]
    inserted = [chunk.split("</ins>")[0].split(">", 1)[1] for chunk in diff.split("<ins")[1:]]
    assert deleted == ["4521", "March"]
    assert inserted == ["&lt;b&gt;4521&lt;/b&gt;", "April &amp;"]


def test_rerun_of_one_model_keeps_the_others_and_reference_edits_do_not_rerun(app_test, page_png):
    at = run_models(start(app_test, page_png, REFERENCE))
    before = results(at)
    assert sorted(key.model for key in before) == ["rapidocr", "tesseract"]

    at.text_area(key="compare_reference").set_value("Invoice 4521").run()
    after_edit = results(at)
    assert all(after_edit[k] is before[k] for k in before)
    assert (at.table[0].value["CER %"] > 50).all()  # the short reference makes every output "too long"

    at.button(key="compare_rerun_tesseract").click().run()
    after_rerun = results(at)
    for key in before:
        if key.model == "tesseract":
            assert after_rerun[key] is not before[key]
            assert "Invoice 4521" in after_rerun[key].result.text
        else:
            assert after_rerun[key] is before[key]

    at.button(key="compare_run").click().run()
    assert any("already has a result" in i.value for i in at.info)
    assert all(results(at)[k] is after_rerun[k] for k in after_rerun)


def test_needs_two_models_and_rejects_bad_uploads(app_test, page_png):
    at = start(app_test, page_png)
    at.multiselect(key="compare_models").set_value(["tesseract"]).run()
    assert at.button(key="compare_run").disabled
    assert any("at least two models" in i.value for i in at.info)

    at.file_uploader(key="compare_upload").upload("broken.png", page_png[:200], "image/png").run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("broken.png: ")


PDF_PAGES = [["Quarterly report for the board", "Revenue grew by twelve percent"],
             ["Second page: costs and staff", "Forty two people work here"],
             ["Third page with the outlook", "Next year looks promising"]]


def test_compare_and_eval_give_the_same_cer_on_a_multipage_document(app_test, tmp_path, capsys):
    import json

    import cli
    from tests.conftest import render_text_page

    first, *rest = [render_text_page(lines, size=32) for lines in PDF_PAGES]
    first.save(tmp_path / "report.pdf", save_all=True, append_images=rest, resolution=200)
    # The reference differs from the printed text on pages 1 and 3, so the figures are not all zero.
    reference = "\f".join("\n".join(lines) for lines in PDF_PAGES).replace("twelve", "12").replace("Next", "Last")
    (tmp_path / "report.txt").write_text(reference, encoding="utf-8")
    assert cli.main(["eval", str(tmp_path), "--models", "tesseract,rapidocr", "--json"]) == 0
    evaluated = {model: entry["documents"][0] for model, entry in json.loads(capsys.readouterr().out)["models"].items()}

    at = app_test()
    at.switch_page("pages/compare.py").run()
    at.file_uploader(key="compare_upload").upload("report.pdf", (tmp_path / "report.pdf").read_bytes(),
                                                  "application/pdf").run()
    at.text_input(key="compare_pages").set_value("1-3")
    at.text_area(key="compare_reference").set_value(reference)
    run_models(at)
    table = at.table[0].value
    labels = {"tesseract": "Tesseract 5 (rus+eng)", "rapidocr": "RapidOCR (PP-OCR, Latin)"}
    for model, doc in evaluated.items():
        assert table.loc[labels[model], "CER %"] == round(doc["cer"] * 100, 2), model
    assert all(doc["cer"] > 0.02 for doc in evaluated.values())  # the reference differs: a figure worth comparing

    # Pages 1-2 only: scored against parts 1-2 of the reference, not against all three pages.
    at.text_input(key="compare_pages").set_value("1-2").run()
    table = at.table[0].value
    for model, doc in evaluated.items():
        pages = doc["pages"][:2]
        expected = sum(p["char_errors"] for p in pages) / sum(p["reference_chars"] for p in pages)
        assert table.loc[labels[model], "CER %"] == round(expected * 100, 2), model
