"""The results store: what is saved comes back as it was; filters, search, delete, schema versions,
kept documents within their size limit, many processes writing at once, extractions and their corrections."""
from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
import time

import pytest

from models.contract import Block, PageResult, ResultKey, RunOptions
from tests.conftest import ROOT, png_bytes, render_text_page
from tests.test_documents import make_pdf
from utils.documents.reader import open_document
from utils.extraction.result import ExtractedField, Extraction, check_problems, empty_fields
from utils.extraction.templates import resolve_template
from utils.store import SchemaError, Store
from utils.store.schema import MIGRATIONS, VERSION


def page_result(text: str, model: str = "tesseract", task: str = "text", page: int = 0, **extra) -> PageResult:
    return PageResult(text=text, markdown=f"# {text}", model=model, task=task, page=page, seconds=0.25,
                      blocks=[Block(bbox=(10, 20, 300, 60), category="Line", text=text)], width=800, height=200,
                      warnings=["a warning"], **extra)


def document(lines: list[str], name: str = "scan.png"):
    return open_document(name, png_bytes(render_text_page(lines, size=24, width=800)))


def save(store: Store, doc, text: str, page: int = 0, model: str = "tesseract", task: str = "text",
         options: RunOptions | None = None, name: str | None = None) -> int:
    options = options or RunOptions()
    key = ResultKey(digest=doc.digest, page=page, model=model, task=task, variant=options.output_key(task))
    return store.save(key, page_result(text, model, task, page), doc, name=name, options=options)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "results.db")


def test_a_saved_result_comes_back_whole_after_reopening(tmp_path):
    doc = document(["Invoice 4521"])
    first = Store(tmp_path / "r.db")
    options = RunOptions(prompt="What is the total?")
    key = ResultKey(digest=doc.digest, page=0, model="qwen_vl_2b", task="prompt", variant=options.output_key("prompt"))
    result = page_result("Total 1250", model="qwen_vl_2b", task="prompt", tokens=12, load_seconds=3.5,
                         truncated=True, device="cuda", dtype="bfloat16", profile="default")
    events = [{"kind": "oom", "action": "retry with max_pixels=501760"}]
    result_id = first.save(key, result, doc, options=options, events=events)

    again = Store(tmp_path / "r.db")  # a restarted app
    stored = again.get(result_id)
    assert stored is not None
    assert stored.result == result
    assert stored.key == key and stored.key.variant == "What is the total?"
    assert stored.options == options and stored.events == events
    assert stored.document_name == "scan.png" and stored.document_kind == "png"
    assert again.latest(key).id == result_id
    assert stored.created_at.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - stored.created_at).total_seconds()) < 60


def test_results_newest_first_with_filters(store):
    a, b = document(["alpha page"], "a.png"), document(["beta page"], "b.png")
    ids = [save(store, a, "alpha one"), save(store, b, "beta one", model="rapidocr"),
           save(store, a, "alpha layout", task="layout"), save(store, b, "beta two")]
    assert [r.id for r in store.results()] == ids[::-1]
    assert [r.id for r in store.results(document="a.png")] == [ids[2], ids[0]]
    assert [r.id for r in store.results(model="rapidocr")] == [ids[1]]
    assert [r.id for r in store.results(task="layout")] == [ids[2]]
    assert [r.id for r in store.results(document="b.png", model="tesseract")] == [ids[3]]
    today = dt.date.today()
    assert len(store.results(since=today, until=today)) == 4
    assert store.results(until=today - dt.timedelta(days=1)) == []
    assert store.results(since=today + dt.timedelta(days=1)) == []
    assert store.count(document="b.png") == 2
    assert store.facets() == {"document_name": ["a.png", "b.png"], "model": ["rapidocr", "tesseract"],
                              "task": ["layout", "text"]}
    summary = store.results(limit=1)[0]
    assert summary.preview == "beta two" and summary.chars == len("beta two")
    assert [r.id for r in store.results(limit=2, offset=1)] == [ids[2], ids[1]]


def test_search_in_the_text_folds_case_and_yo(store):
    doc = document(["x"])
    russian = save(store, doc, "Счёт на оплату № 17: итого 1 250 рублей")
    english = save(store, doc, "Invoice number 4521, total due", page=1)
    assert store.has_fts
    assert [r.id for r in store.results(search="счет")] == [russian]
    assert [r.id for r in store.results(search="СЧЁТ оплату")] == [russian]
    assert [r.id for r in store.results(search="invoice 45")] == [english]  # the last word as a prefix too
    assert store.results(search="invoice рублей") == []  # every word must occur
    assert [r.id for r in store.results(search='"total" (due*')] == [english]  # punctuation is never query syntax


def test_search_without_fts_falls_back_to_substrings(store):
    doc = document(["x"])
    found = save(store, doc, "Invoice number 4521")
    save(store, doc, "Something else", page=1)
    store.has_fts = False
    assert [r.id for r in store.results(search="number 45")] == [found]


def test_delete_and_document_results_take_the_newest_of_each_page(store):
    doc = document(["x"], "report.pdf.png")
    first = save(store, doc, "page one, first run")
    save(store, doc, "page two", page=1)
    newest = save(store, doc, "page one, second run")
    save(store, doc, "other model", model="rapidocr")
    key = ResultKey(digest=doc.digest, page=0, model="tesseract", task="text")
    assert [(r.key.page, r.result.text) for r in store.document_results(key)] == [
        (0, "page one, second run"), (1, "page two")]
    assert store.delete([newest, 999_999]) == 1
    assert store.get(newest) is None
    assert store.latest(key).id == first
    assert store.count() == 3


def test_page_image_is_the_page_the_boxes_refer_to(store):
    pdf = open_document("report.pdf", make_pdf(2), dpi=100)
    key = ResultKey(digest=pdf.digest, page=1, model="tesseract", task="text")
    image = pdf.render(1).image
    result = page_result("page 2", page=1)
    result.width, result.height = image.size
    stored = store.get(store.save(key, result, pdf))
    assert stored.render_dpi == 100
    again = store.page_image(stored)
    assert again is not None and again.size == image.size
    assert again.tobytes() == image.tobytes()


def test_kept_documents_stay_within_the_size_limit_least_recently_used_first(tmp_path):
    docs = [document([f"document number {i}"] * 8, f"d{i}.png") for i in range(3)]
    size = max(len(d.data) for d in docs)
    store = Store(tmp_path / "r.db", max_files_mb=2.5 * size / 2**20)
    for doc in docs[:2]:
        save(store, doc, doc.name)
    time.sleep(0.01)
    assert store.open_document(docs[0].digest) is not None  # d0 is now used more recently than d1
    save(store, docs[2], "d2")
    assert [store.kept_document(d.digest).kept for d in docs] == [True, False, True]
    assert store.kept_bytes() <= 2.5 * size
    stored = store.get(store.results(document="d1.png")[0].id)
    assert store.page_image(stored) is None and stored.result.text == "d1.png"  # the text stays
    too_big = document(["x"] * 40, "big.png")
    tiny = Store(tmp_path / "tiny.db", max_files_mb=len(too_big.data) / 2 / 2**20)
    assert tiny.keep(too_big) is False
    assert tiny.keep(too_big, pin=True) is True  # an unfinished job's upload is kept whatever the limit


def test_schema_is_versioned_and_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "r.db"
    Store(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.execute(f"PRAGMA user_version = {VERSION + 1}")
    with pytest.raises(SchemaError, match="newer version of the app"):
        Store(path)


WRITER = """
import sys
sys.path.insert(0, {root!r})
from models.contract import PageResult, ResultKey
from utils.documents.reader import open_document
from utils.store import Store
store = Store({path!r})
document = open_document("w.png", open({png!r}, "rb").read())
for i in range(25):
    key = ResultKey(digest=document.digest, page=i, model="m{n}", task="text")
    store.save(key, PageResult(text="writer {n} page %d" % i, model="m{n}", task="text"), document)
"""


def test_many_processes_write_at_once(tmp_path):
    png = tmp_path / "w.png"
    png.write_bytes(png_bytes(render_text_page(["concurrent"], size=20, width=300)))
    path = tmp_path / "r.db"
    Store(path)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), path=str(path), png=str(png),
                                                                     n=n)], stderr=subprocess.PIPE, text=True)
               for n in range(4)]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    store = Store(path)
    assert store.count() == 100
    assert {r.key.model for r in store.results(limit=200)} == {"m0", "m1", "m2", "m3"}
    assert store.count(model="m3") == 25 and store.count(search="writer page") == 100


def extraction_of(doc) -> Extraction:
    template = resolve_template("invoice")
    fields = empty_fields(template)
    fields["number"] = ExtractedField(value="INV-7", source="INV-7", page=0, bbox=(10, 20, 90, 40))
    fields["total"] = ExtractedField(value=1200.0, source="1 200,00", page=0)
    extraction = Extraction(file=doc.name, template="invoice", model="tesseract", fields=fields, pages=[0])
    extraction.problems = check_problems(template, extraction)
    return extraction


def test_an_extraction_and_its_corrections_come_back_after_reopening(tmp_path):
    doc = document(["Invoice INV-7"])
    first = Store(tmp_path / "r.db")
    extraction = extraction_of(doc)
    kept = first.extractions.save(doc, extraction)
    first.extractions.correct(kept, "total", 1250.0)
    first.extractions.correct(kept, "date", "2024-03-12")
    first.extractions.correct(kept, "total", 1300.0)  # the newest of a field counts

    again = Store(tmp_path / "r.db")  # a restarted app
    stored = again.extractions.latest(doc.digest, "invoice", "tesseract")
    assert stored.id == kept and stored.extraction == extraction and stored.document_name == "scan.png"
    assert [(c.field, c.before, c.after) for c in stored.corrections] == [
        ("total", 1200.0, 1250.0), ("date", None, "2024-03-12"), ("total", 1250.0, 1300.0)]
    assert again.kept_document(doc.digest).kept  # the document too, to show it again
    assert again.extractions.latest(doc.digest, "invoice", "qwen_vl_2b") is None
    assert again.extractions.latest(doc.digest, "receipt", "tesseract") is None

    again.extractions.correct(kept, "total", 1200.0)  # back to what the engine read: no longer a correction
    assert [c.field for c in again.extractions.get(kept).corrections] == ["date"]
    newer = again.extractions.save(doc, extraction)  # run again: a fresh extraction, no corrections
    assert again.extractions.latest(doc.digest, "invoice", "tesseract").corrections == []
    assert newer != kept and again.extractions.get(kept).corrections
    with pytest.raises(KeyError, match="no field 'colour'"):
        again.extractions.correct(kept, "colour", "red")
    with pytest.raises(KeyError, match="no stored extraction 999"):
        again.extractions.correct(999, "total", 1.0)


def test_a_version_3_database_gains_the_extraction_tables_and_keeps_its_results(tmp_path):
    path = tmp_path / "r.db"
    con = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:3]:  # the database as the app before extractions left it
        migration(con)
    con.execute("PRAGMA user_version = 3")
    con.execute("""INSERT INTO results (digest, page, model, task, document_name, options, profile, device, text,
                   markdown, result, created_at) VALUES ('d', 0, 'tesseract', 'text', 'old.png', '{}', 'default',
                   'cpu', 'Invoice 1', '', ?, 1.0)""",
                (page_result("Invoice 1").model_dump_json(),))
    con.execute("INSERT INTO corrections (result_id, text, created_at) VALUES (1, 'Invoice 7', 2.0)")
    con.close()

    store = Store(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == VERSION == 4
    old = store.get(1)
    assert old.document_name == "old.png" and old.result.text == "Invoice 1" and old.text == "Invoice 7"
    doc = document(["Invoice INV-7"])
    kept = store.extractions.save(doc, extraction_of(doc))
    store.extractions.correct(kept, "number", "INV-8")
    assert store.extractions.get(kept).corrections[0].after == "INV-8"
