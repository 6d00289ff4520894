"""`cli.py extract` run as a user runs it, with Tesseract on generated invoices and with a tiny VLM."""
from __future__ import annotations

import csv
import io
import json
import random

import pytest

from benchmarks.invoices import make_invoice
from tests.conftest import png_bytes, render_text_page
from tests.test_cli import cli

# (language, layout, seed): clean invoices of each header layout, both languages.
INVOICES = (("ru", "title_line", 1), ("en", "lines", 2), ("ru", "above", 3), ("en", "table_right", 4))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extract")
    truths = {}
    for language, layout, seed in INVOICES:
        image, truth = make_invoice(random.Random(seed), language=language, layout=layout, degrade=False)
        name = f"{language}_{layout}.png"
        image.save(folder / name)
        truths[name] = truth
    (folder / "letter.png").write_bytes(png_bytes(render_text_page(["Dear colleagues,", "see you on Monday."])))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder, truths


@pytest.fixture(scope="module")
def extracted(folder):
    path, truths = folder
    done = cli("extract", *(str(path / name) for name in [*truths, "letter.png", "broken.png"]),
               "--template", "invoice", "--model", "tesseract", "--format", "json")
    return done, {doc["file"]: doc for doc in json.loads(done.stdout)["documents"]}


def test_number_date_and_total_of_each_invoice(folder, extracted):
    _, truths = folder
    _, documents = extracted
    for name, truth in truths.items():
        fields = documents[name]["fields"]
        assert (fields["number"], fields["date"], fields["total"]) == (truth.number, truth.date, truth.total), name
        assert documents[name]["problems"] == [] and documents[name]["error"] is None
        source = documents[name]["sources"]["total"]
        assert source["page"] == 1 and len(source["bbox"]) == 4 and source["corrected"] is False


def test_a_page_without_fields_and_a_broken_file_are_one_line_each(extracted):
    done, documents = extracted
    assert done.returncode == 1
    assert documents["letter.png"]["problems"] == ["no Invoice / Счёт fields recognised"]
    assert documents["letter.png"]["fields"]["number"] is None
    assert documents["broken.png"]["error"].startswith("broken.png: ")
    lines = [line for line in done.stderr.splitlines() if "with tesseract" not in line]
    assert lines[0] == "letter.png: no Invoice / Счёт fields recognised"
    assert lines[1].startswith("broken.png: ") and len(lines) == 2
    assert "Traceback" not in done.stderr


def test_csv_has_a_row_per_document(folder):
    path, truths = folder
    name = next(iter(truths))
    done = cli("extract", str(path / name), "--template", "invoice", "--model", "tesseract", "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 1 and rows[0]["file"] == name and rows[0]["number"] == truths[name].number
    assert float(rows[0]["total"]) == truths[name].total and rows[0]["problems"] == ""


def test_a_template_with_a_bad_field_type_is_one_line_and_exit_2(folder, tmp_path):
    path, truths = folder
    bad = tmp_path / "bill.yaml"
    bad.write_text("label: Bill\nfields:\n  total: {type: money, description: Total}\n", encoding="utf-8")
    done = cli("extract", str(path / next(iter(truths))), "--template", str(bad), "--model", "tesseract")
    assert done.returncode == 2
    assert done.stderr.strip() == ("cli.py: error: template: bill.yaml: fields.total.type: Input should be "
                                   "'string', 'date', 'amount' or 'integer', got 'money'")
    done = cli("extract", str(path / next(iter(truths))), "--template", "bill", "--model", "tesseract")
    assert done.returncode == 2 and "unknown template 'bill'; known: driver_licence, invoice" in done.stderr


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from tests.fixtures.tiny_models import build_qwen2_vl

    return build_qwen2_vl(tmp_path_factory.mktemp("tiny"))


def test_a_tiny_random_vlm_gives_a_clean_could_not_read_line(folder, tiny_qwen, tmp_path):
    path, truths = folder
    # One field keeps the token cap, and so the random model's babble, short.
    template = tmp_path / "total_only.yaml"
    template.write_text("label: Total\nfields:\n  total: {type: amount, required: true, description: Amount due}\n",
                        encoding="utf-8")
    done = cli("extract", str(path / next(iter(truths))), "--template", str(template), "--model", "qwen_vl_2b",
               "--model-path", str(tiny_qwen), "--format", "json")
    assert "Traceback" not in done.stderr
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)["documents"][0]
    assert document["error"] is None
    assert document["problems"][0].startswith("could not read fields: ")
    assert document["problems"][0].endswith("(after one retry)")
    assert any(line.startswith(f"{document['file']}: could not read fields: ") for line in done.stderr.splitlines())
