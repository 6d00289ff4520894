"""The Extract page driven headless through AppTest: Tesseract on generated invoices, corrections kept in the
results store across sessions, exports."""
from __future__ import annotations

import json
import os
import random
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from benchmarks.invoices import make_invoice
from tests import test_workspace
from tests.conftest import png_bytes, render_text_page
from utils.documents.reader import open_document
from utils.extraction.templates import TEMPLATES_DIR
from utils.store import Store


@pytest.fixture(scope="module")
def invoices():
    made = {}
    for name, language, layout, seed in (("en.png", "en", "lines", 2), ("ru.png", "ru", "title_line", 1)):
        image, truth = make_invoice(random.Random(seed), language=language, layout=layout, degrade=False)
        made[name] = (png_bytes(image), truth)
    return made


downloads = test_workspace.downloads  # the fixture that keeps every download button's file


def start(app_test, uploads: dict[str, bytes]) -> AppTest:
    at = app_test()
    at.switch_page("pages/extract.py").run()
    assert not at.exception, at.exception
    for name, data in uploads.items():
        at.file_uploader(key="extract_upload").upload(name, data, "image/png")
    at.run()
    assert not at.exception, at.exception
    return at


def table(at: AppTest) -> dict[str, str]:
    frame = at.data_editor[0].value
    return dict(zip(frame["Field"], frame["Value"]))


def edit(at: AppTest, field: str, value: str) -> AppTest:
    editor = at.data_editor[0]
    row = list(editor.value["Field"]).index(field)
    at.session_state[editor.key] = {"edited_rows": {row: {"Value": value}}, "added_rows": [], "deleted_rows": []}
    return at.run()


def test_extract_correct_and_download(app_test, invoices):
    data, truth = invoices["en.png"]
    at = start(app_test, {"en.png": data})
    assert at.selectbox(key="extract_template").value == "invoice"
    at.button(key="extract_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    values = table(at)
    assert (values["number"], values["date"], float(values["total"])) == (truth.number, truth.date, truth.total)
    assert [d.label for d in at.download_button] == ["⬇ JSON", "⬇ CSV"]

    edit(at, "date", "1 апреля 2024")  # a correction in any written form is kept as ISO
    assert not at.error, [e.value for e in at.error]
    assert table(at)["date"] == "2024-04-01"
    (extraction,) = at.session_state["extract_results"].values()
    assert extraction.fields["date"].corrected and extraction.fields["date"].value == "2024-04-01"
    (corrections,) = at.session_state["extract_corrections"].values()
    assert [(c.field, c.before, c.after) for c in corrections] == [("date", truth.date, "2024-04-01")]

    edit(at, "total", "a lot")  # a bad correction is one line and the value stays
    assert [e.value for e in at.error] == [f"total: 'a lot' is not an amount — kept {truth.total:.2f}"]
    (extraction,) = at.session_state["extract_results"].values()
    assert extraction.fields["total"].value == truth.total and not at.exception


def test_a_document_without_fields_warns_and_the_others_keep_their_results(app_test, invoices):
    letter = png_bytes(render_text_page(["Dear colleagues,", "see you on Monday."]))
    at = start(app_test, {"ru.png": invoices["ru.png"][0], "letter.png": letter})
    at.button(key="extract_run_all").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.session_state["extract_results"]) == 2
    labels = [d.label for d in at.download_button]
    assert "⬇ CSV (all 2)" in labels and "⬇ JSON (all 2)" in labels
    at.selectbox(key="extract_document").set_value(open_document("letter.png", letter).digest).run()
    assert [w.value for w in at.warning] == ["no Invoice / Счёт fields recognised"]
    at.selectbox(key="extract_document").set_value(open_document("ru.png", invoices["ru.png"][0]).digest).run()
    assert not at.warning and table(at)["number"] == invoices["ru.png"][1].number


def test_a_broken_template_is_one_line_and_the_others_still_work(app_test, invoices, tmp_path, monkeypatch):
    shutil.copy(TEMPLATES_DIR / "invoice.yaml", tmp_path)
    (tmp_path / "bill.yaml").write_text("label: Bill\nfields:\n  total: {type: money, description: T}\n",
                                        encoding="utf-8")
    monkeypatch.setattr("utils.extraction.templates.TEMPLATES_DIR", tmp_path)
    at = start(app_test, {"en.png": invoices["en.png"][0]})
    assert [e.value for e in at.error] == ["Template not loaded: bill.yaml: fields.total.type: Input should be "
                                           "'string', 'date', 'amount' or 'integer', got 'money'"]
    assert at.selectbox(key="extract_template").options == ["Invoice / Счёт"]
    at.button(key="extract_run").click().run()
    assert table(at)["number"] == invoices["en.png"][1].number


def test_corrections_are_kept_in_the_store_and_shown_again_after_a_restart(app_test, invoices, downloads):
    data, truth = invoices["en.png"]
    at = start(app_test, {"en.png": data})
    at.button(key="extract_run").click().run()
    model = at.session_state["model"]
    edit(at, "date", "1 апреля 2024")
    edit(at, "total", "99,50")
    store = Store(os.environ["OCR_STORE_DB"])
    digest = open_document("en.png", data).digest
    kept = store.extractions.latest(digest, "invoice", model)
    assert [(c.field, c.before, c.after) for c in kept.corrections] == [
        ("date", truth.date, "2024-04-01"), ("total", truth.total, 99.5)]

    again = start(app_test, {"en.png": data})  # a refresh or a restart: a new session, only the store remembers
    assert not again.error and not again.warning, [e.value for e in again.error]
    frame = again.data_editor[0].value.set_index("Field")
    assert (frame.loc["date", "Value"], frame.loc["total", "Value"]) == ("2024-04-01", "99.50")
    assert frame.loc["date", "Corrected"] and frame.loc["total", "Corrected"] and not frame.loc["number", "Corrected"]
    assert (frame.loc["date", "Engine read"], frame.loc["number", "Engine read"]) == (truth.date, "")
    assert frame.loc["number", "Value"] == truth.number
    assert any("kept from" in c.value for c in again.caption)
    assert store.extractions.latest(digest, "invoice", model).id == kept.id  # shown without running again
    saved = json.loads(downloads["en_invoice.json"])
    assert saved["fields"]["date"] == "2024-04-01" and saved["sources"]["date"]["original"] == truth.date
    rows = downloads["en_invoice.csv"]
    rows = rows.decode() if isinstance(rows, bytes) else rows
    assert ",2024-04-01," in rows and ",99.5," in rows

    edit(again, "total", f"{truth.total:.2f}")  # back to what the engine read: the cell is no longer corrected
    frame = again.data_editor[0].value.set_index("Field")
    assert not frame.loc["total", "Corrected"] and frame.loc["total", "Engine read"] == ""
    assert [c.field for c in store.extractions.latest(digest, "invoice", model).corrections] == ["date"]


def test_a_store_that_cannot_be_written_costs_a_warning_not_the_extraction(app_test, invoices, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("OCR_STORE_DB", str(blocker / "results.db"))
    data, truth = invoices["en.png"]
    at = start(app_test, {"en.png": data})
    at.button(key="extract_run").click().run()
    assert table(at)["number"] == truth.number
    assert any(w.value.startswith("The extraction could not be saved in the results store (") for w in at.warning)
    edit(at, "date", "1 апреля 2024")
    assert table(at)["date"] == "2024-04-01" and not at.exception


def test_a_document_uploaded_on_another_page_is_here_without_a_second_upload(app_test, invoices):
    data, truth = invoices["en.png"]
    at = app_test()
    at.file_uploader[0].upload("en.png", data, "image/png").run()  # the OCR page
    at.switch_page("pages/extract.py").run()
    assert any(m.value == "**Document:** en.png (1 page)" for m in at.markdown)
    at.button(key="extract_run").click().run()
    assert not at.error, [e.value for e in at.error]
    assert table(at)["number"] == truth.number


def test_a_batch_jobs_documents_one_row_each(app_test, invoices, downloads, tmp_path, monkeypatch):
    from utils.config import cached_settings
    from utils.jobs.engine import create_job, prepare
    from utils.jobs.inputs import Source

    monkeypatch.setenv("OCR_STORE_DB", str(tmp_path / "results.db"))
    store = Store(tmp_path / "results.db")
    sources = []
    for name in ("en.png", "ru.png"):
        (tmp_path / name).write_bytes(invoices[name][0])
        sources.append(Source(name=name, path=str(tmp_path / name)))
    job_id = create_job(store, prepare(sources, cached_settings()), ["tesseract"], "text")

    at = app_test()
    at.switch_page("pages/extract.py").run()
    at.segmented_control(key="extract_source").set_value("A batch job's documents").run()
    assert at.selectbox(key="extract_job").value.id == job_id
    at.selectbox(key=f"extract_job_document_{job_id}").set_value(1).run()
    at.button(key="extract_run_all").click().run()
    assert not at.error, [e.value for e in at.error]
    assert table(at)["number"] == invoices["ru.png"][1].number
    (name,) = [n for n in downloads if n.endswith(".csv") and n.startswith(f"job{job_id}_")]
    csv = downloads[name]
    header, *rows = (csv.decode("utf-8-sig") if isinstance(csv, bytes) else csv).strip().splitlines()
    assert "number" in header and len(rows) == 2
    assert invoices["en.png"][1].number in rows[0] and invoices["ru.png"][1].number in rows[1]

    # A job whose file is gone (neither kept in the store nor on disk): one line, the others still read.
    (tmp_path / "gone.png").write_bytes(png_bytes(render_text_page(["Invoice No. GONE-1"])))
    sources.insert(0, Source(name="gone.png", path=str(tmp_path / "gone.png")))
    second = create_job(store, prepare(sources, cached_settings()), ["tesseract"], "text")
    (tmp_path / "gone.png").unlink()
    at.run()
    at.selectbox(key="extract_job").set_value(store.jobs.get(second)).run()
    gone = f"gone.png: no such file ({tmp_path / 'gone.png'})"
    assert [e.value for e in at.error] == [gone]
    assert table(at)["number"] == invoices["en.png"][1].number  # the next document is shown
    at.button(key="extract_run_all").click().run()
    assert [e.value for e in at.error] == [gone, gone]
    assert table(at)["number"] == invoices["en.png"][1].number and not at.exception
