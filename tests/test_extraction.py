"""Field extraction without a model: values, templates, labels over OCR lines, reading VLM answers."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image, ImageDraw

from models.contract import Block, PageResult
from tests.conftest import font, png_bytes
from utils.config import DocumentLimits
from utils.documents.reader import open_document
from utils.extraction.classic import (
    Line,
    find_fields,
    fold,
    label_regex,
    lines_of,
    repair_identifier,
    word_spans,
)
from utils.extraction.extract import extract_document
from utils.extraction.normalise import NotAValue, find_amount, find_date, normalise
from utils.extraction.result import Extraction, check_problems, correct, empty_fields, to_csv
from utils.extraction.templates import (
    TEMPLATES_DIR,
    TemplateError,
    load_template,
    load_templates,
    resolve_template,
)
from utils.extraction.vlm import NotJSON, build_prompt, parse_answer, read_fields, validate_answer


@pytest.fixture(scope="module")
def invoice():
    return resolve_template("invoice")


# --- values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,iso", [
    ("12.03.2024", "2024-03-12"), ("12/03/2024", "2024-03-12"), ("2024-03-12", "2024-03-12"),
    ("12.03.24", "2024-03-12"), ("12 марта 2024 г.", "2024-03-12"), ("«12» марта 2024 г.", "2024-03-12"),
    ("«1 2» марта 2024 г.", "2024-03-12"), ("1 мая 2023", "2023-05-01"), ("31 декабря 2023", "2023-12-31"),
    ("3 янв. 2025", "2025-01-03"), ("март 12, 2024", "2024-03-12"), ("March 12, 2024", "2024-03-12"),
    ("12 Mar 2024", "2024-03-12"), ("12-Mar-2024", "2024-03-12"), ("1st of May, 2023", "2023-05-01"),
    ("Sept. 9 2022", "2022-09-09"), ("30,09.2024", "2024-09-30"), ("13/01/2024", "2024-01-13"),
    ("30 Мау 2026", "2026-05-30"),  # Cyrillic М, а, у read for Latin
    ("2. January 2024", "2024-01-02"), ("August .6, 2024", "2024-08-06"),
])
def test_dates_in_russian_and_english_become_iso(text, iso):
    assert find_date(text).value == iso
    assert normalise("date", text) == iso


def test_numeric_dates_follow_the_field_order_unless_only_the_other_one_is_a_date():
    assert normalise("date", "03/04/2024", "mdy") == "2024-03-04"
    assert normalise("date", "03/04/2024") == "2024-04-03"
    assert normalise("date", "03/25/2024") == "2024-03-25"  # 25 is no month: month first after all


@pytest.mark.parametrize("text", ["31.02.2024", "Invoice 12 items 2024", "12 marts 2024", "2024"])
def test_what_is_not_a_date(text):
    with pytest.raises(NotAValue, match="is not a date"):
        normalise("date", text)


@pytest.mark.parametrize("text,value", [
    ("1 234,56", 1234.56), ("1,234.56", 1234.56), ("1.234,56", 1234.56), ("1234.56", 1234.56),
    ("1 234.56 USD", 1234.56), ("$1,234.56", 1234.56), ("1\u00a0234,56 ₽", 1234.56), ("1 234,56 руб.", 1234.56),
    ("€1.234.567,8", 1234567.8), ("1,234", 1234.0), ("1.234.567", 1234567.0), ("1,5", 1.5), ("-50.00", -50.0),
    ("12 345 678,90", 12345678.9), ("1'234.50", 1234.5), ("67.973.03", 67973.03), ("500", 500.0),
    ("37933, 72", 37933.72), ("$79428 .40", 79428.4),  # OCR's stray spaces beside the decimal separator
])
def test_amounts_as_documents_write_them_become_numbers(text, value):
    assert normalise("amount", text) == pytest.approx(value)


def test_the_amount_a_label_points_at():
    assert find_amount("Total (3 items): 1 234,56 RUB").value == 1234.56
    assert find_amount("Итого - 1 200,00").value == 1200.0  # a dash after a label is no minus sign
    assert find_amount("12.03.2024") is None  # a date is no amount
    for bad in ("twelve", "1 234,56 or 7", "12.03.2024"):
        with pytest.raises(NotAValue, match="is not an amount"):
            normalise("amount", bad)


def test_integers_and_strings():
    assert normalise("integer", "1 234") == 1234 and normalise("integer", 7.0) == 7
    with pytest.raises(NotAValue, match="not a whole number"):
        normalise("integer", "12a")
    assert normalise("string", "  ООО Ромашка ") == "ООО Ромашка"
    assert normalise("string", "") is None and normalise("date", None) is None
    with pytest.raises(NotAValue, match="not a single value"):
        normalise("string", {"a": 1})


# --- templates ------------------------------------------------------------------------------------

def test_the_shipped_templates_load_with_their_required_fields():
    found = load_templates(known_models=["tesseract", "rapidocr", "qwen_vl_2b"])
    assert found.errors == []
    assert set(found.templates) == {"invoice", "receipt", "passport", "driver_licence"}
    assert found.templates["invoice"].required() == ["number", "date", "total"]
    assert {"Итого", "Total", "Счёт №", "Invoice No", "Дата", "Date"} <= {
        label for spec in found.templates["invoice"].fields.values() for label in spec.labels}


def _write(folder, name: str, text: str):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_bad_field_type_names_the_file_the_key_and_what_is_expected(tmp_path):
    path = _write(tmp_path, "bill.yaml", "label: Bill\nfields:\n  total: {type: money, description: Total}\n")
    with pytest.raises(TemplateError) as caught:
        load_template(path)
    message = str(caught.value)
    assert message == ("bill.yaml: fields.total.type: Input should be 'string', 'date', 'amount' or 'integer', "
                       "got 'money'")
    assert "\n" not in message


@pytest.mark.parametrize("body,expected", [
    ("label: X\nfields: {}\n", "bill.yaml: fields: expected at least one field"),
    ("label: X\nfields:\n  Total: {type: amount, description: d}\n", "expected names like 'invoice_date'"),
    ("label: X\nfields:\n  total: {type: amount, description: d, pattern: '(['}\n",
     "fields.total.pattern: expected a regular expression"),
    ("label: X\nfields:\n  total: {type: amount}\n", "bill.yaml: fields.total.description: Field required"),
    ("label: X\nfields:\n  total: {type: amount, description: d, colour: red}\n",
     "fields.total.colour: Extra inputs are not permitted"),
    ("label: [unclosed\n", "bill.yaml: not valid YAML at line"),
    ("- a list\n", "bill.yaml: expected a mapping at the top level"),
    ("name: other\nlabel: X\nfields:\n  a: {type: string, description: d}\n", "name: expected the file's name"),
])
def test_bad_templates_get_one_line_naming_the_key(tmp_path, body, expected):
    with pytest.raises(TemplateError) as caught:
        load_template(_write(tmp_path, "bill.yaml", body))
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_template_never_hides_the_good_ones(tmp_path):
    shutil.copy(TEMPLATES_DIR / "invoice.yaml", tmp_path)
    _write(tmp_path, "broken.yaml", "label: B\nfields:\n  x: {type: money, description: d}\n")
    found = load_templates(tmp_path)
    assert list(found.templates) == ["invoice"]
    assert found.errors == ["broken.yaml: fields.x.type: Input should be 'string', 'date', 'amount' or 'integer', "
                            "got 'money'"]


def test_hint_keys_are_checked_against_the_models_and_merged_per_engine(tmp_path):
    body = ("label: X\nfields:\n  n:\n    type: string\n    description: d\n    labels: [Nummer]\n    hints:\n"
            "      classic: {labels: [Nr]}\n      tesseract: {labels: [N2], pattern: '(\\d+)'}\n"
            "      vlm: {prompt: the number}\n")
    path = _write(tmp_path, "x.yaml", body)
    with pytest.raises(TemplateError, match="fields.n.hints.tesseract: expected one of classic, vlm, rapidocr"):
        load_template(path, known_models=["rapidocr"])
    spec = load_template(path, known_models=["tesseract"]).fields["n"]
    assert spec.hint("classic", "tesseract").labels == ["Nr", "N2"]
    assert spec.hint("classic", "tesseract").pattern == r"(\d+)"
    assert spec.hint("classic", "rapidocr").labels == ["Nr"] and spec.hint("classic", "rapidocr").pattern is None
    assert spec.hint("vlm", "qwen_vl_2b").prompt == "the number"


def test_unknown_template_names_the_known_ones():
    with pytest.raises(TemplateError, match="unknown template 'bill'; known: driver_licence, invoice, passport"):
        resolve_template("bill")


# --- labels over OCR lines ------------------------------------------------------------------------

def test_folding_keeps_positions_and_joins_the_scripts():
    text = "Cчёт № 5 daté"  # Latin C, accented e: what OCR produces
    assert len(fold(text)) == len(text)
    assert fold(text) == fold("Счет № 5 date")
    pattern = label_regex("Счёт №")
    import re
    for written in ("Счёт № 1", "СЧЕТ No. 1", "Счет N° 1", "счёт №1", "Cчет #1"):
        assert re.search(pattern, fold(written)), written
    assert not re.search(pattern, fold("Счётчик 1"))
    assert not re.search(label_regex("1."), fold("1.5 kg"))


def line(text, x1, y1, x2, y2, page=0, words=None):
    return Line(page, text, (x1, y1, x2, y2), words)


def test_values_on_the_label_line_with_their_boxes(invoice):
    lines = [line("Счёт на оплату № БП-000145 от 12 марта 2024 г.", 100, 100, 1000, 130),
             line("Срок оплаты: 26.03.2024", 100, 150, 500, 180),
             line("Итого без НДС: 1 000,00", 600, 400, 1000, 430),
             line("В т.ч. НДС: 200,00", 600, 450, 1000, 480),
             line("Итого: 1 200,00 руб.", 600, 500, 1000, 530)]
    fields = find_fields(invoice, lines)
    assert fields["number"].value == "БП-000145" and fields["number"].source == "БП-000145"
    assert fields["date"].value == "2024-03-12" and fields["date"].source == "12 марта 2024"
    assert fields["due_date"].value == "2024-03-26"
    assert (fields["subtotal"].value, fields["vat"].value, fields["total"].value) == (1000.0, 200.0, 1200.0)
    x1, y1, x2, y2 = fields["total"].bbox
    assert 600 < x1 < x2 < 1000 and (y1, y2) == (500, 530) and fields["total"].page == 0


def test_the_longest_label_wins_and_ignored_phrases_are_not_fields(invoice):
    lines = [line("Invoice No.: INV-2024-0042", 100, 100, 600, 130),
             line("Due date: 14 April 2024", 100, 150, 600, 180),
             line("Delivery date: 01.04.2024", 100, 200, 600, 230),
             line("Invoice date: 31 March 2024", 100, 250, 600, 280),
             line("Subtotal: $1,000.00", 700, 400, 1000, 430),
             line("Total: $1,200.00", 700, 450, 1000, 480),
             line("Thank you! Invoice valid for 10 days.", 100, 600, 900, 630)]
    fields = find_fields(invoice, lines)
    assert fields["number"].value == "INV-2024-0042"
    assert fields["date"].value == "2024-03-31"
    assert fields["due_date"].value == "2024-04-14"
    assert fields["total"].value == 1200.0 and fields["subtotal"].value == 1000.0


def test_values_right_of_the_label_and_under_it(invoice):
    # label and value columns on the same row; labels above values across the page
    lines = [line("Invoice #:", 600, 100, 760, 130), line("A-10457", 900, 102, 1040, 128),
             line("Date  Due date", 100, 300, 700, 330, words=((100, 170), (500, 570), (580, 700))),
             line("21/01/2020  04/02/2020", 100, 345, 720, 375, words=((100, 260), (500, 660))),
             line("Total", 800, 600, 900, 630), line("$3,329.06", 800, 640, 980, 670)]
    fields = find_fields(invoice, lines)
    assert fields["number"].value == "A-10457" and fields["number"].bbox[0] >= 900
    assert fields["date"].value == "2020-01-21" and fields["date"].bbox[0] == 100
    assert fields["due_date"].value == "2020-02-04"
    assert fields["total"].value == 3329.06


def test_ocr_debris_between_column_labels_and_a_skewed_row(invoice):
    lines = [line("Invoice No, р Invoice date", 100, 300, 800, 340, words=((100, 200), (215, 255), (330, 340),
                                                                          (600, 700), (715, 770))),
             line("A-09578 23/08/2019", 100, 341, 780, 380, words=((100, 210), (600, 745))),
             line("Payment due:", 1000, 248, 1110, 265), line("12.05.2022", 1290, 239, 1400, 256)]
    fields = find_fields(invoice, lines)
    assert (fields["number"].value, fields["date"].value) == ("A-09578", "2019-08-23")
    assert fields["due_date"].value == "2022-05-12"


def test_a_neighbour_line_counts_only_when_it_is_the_value_alone(invoice):
    lines = [line("Total", 800, 100, 900, 130),  # a table header: the row under it is no total
             line("2 Widgets 100.00 200.00", 100, 140, 1000, 170),
             line("INVOICE", 100, 300, 300, 340),  # a title: the next line is not its number
             line("Date: 12.03.2024", 100, 350, 400, 380)]
    fields = find_fields(invoice, lines)
    assert fields["total"].value is None and fields["number"].value is None
    assert fields["date"].value == "2024-03-12"


def test_ocr_punctuation_inside_labels_and_the_engine_s_own_labels(invoice):
    lines = [line("Invoice-date: 2. January 2024", 100, 100, 600, 130),
             line("Счёт на оплату № 76 or 27.09.2025", 100, 200, 900, 230)]
    assert find_fields(invoice, lines[:1])["date"].value == "2024-01-02"
    # Tesseract reads "от" as "or" now and then: a label only for it (the template's hints)
    assert find_fields(invoice, lines[1:], "classic", "tesseract")["date"].value == "2025-09-27"
    assert find_fields(invoice, lines[1:], "classic", "rapidocr")["date"].value is None


def test_a_label_that_must_follow_another_field_s_label(invoice):
    lines = [line("Основание: Договор № 81/5 от 14.06.2019", 100, 300, 900, 330),
             line("Сч. № 30101810400000000225", 100, 100, 600, 130)]
    fields = find_fields(invoice, lines)
    assert fields["date"].value is None  # the contract's date is not the invoice's
    assert fields["number"].value is None  # nor is a bank account its number
    lines.append(line("Счёт на оплату № 145 от 12.03.2024", 100, 200, 900, 230))
    fields = find_fields(invoice, lines)
    assert (fields["number"].value, fields["date"].value) == ("145", "2024-03-12")


def test_after_labels_must_name_fields_of_the_template(tmp_path):
    body = "label: X\nfields:\n  d: {type: date, description: d, after: {number: [upon]}}\n"
    with pytest.raises(TemplateError, match=r"fields.d.after: expected field names of this template \(d\), "
                                            r"got \['number'\]"):
        load_template(_write(tmp_path, "x.yaml", body))


@pytest.mark.parametrize("read,cyrillic,repaired", [
    ("INVO03960", False, "INV003960"), ("INVOO3960", False, "INV003960"),  # zeros read as O after a prefix
    ("A-1O5", False, "A-105"), ("12O4", True, "1204"),  # or between digits
    ("PO12345", False, "PO12345"), ("SO-120", False, "SO-120"),  # a one-letter prefix keeps its O
    ("А-05558", False, "A-05558"), ("A-123", True, "А-123"),  # look-alike letters in the page's script
    ("BII-008461", True, "BII-008461"), ("БП-000145", True, "БП-000145"), ("2024/117", False, "2024/117"),
])
def test_codes_are_repaired_from_ocr_look_alikes(read, cyrillic, repaired):
    assert repair_identifier(read, cyrillic) == repaired


def test_only_identifier_fields_are_repaired(invoice):
    lines = [line("Invoice No.: INVO03960", 100, 100, 600, 130), line("Bill to: OOO Bank", 100, 150, 600, 180)]
    fields = find_fields(invoice, lines)
    assert fields["number"].value == "INV003960" and fields["buyer"].value == "OOO Bank"


def test_pick_last_takes_the_grand_total_and_pages_are_kept(invoice):
    lines = [line("Итого: 100,00", 600, 900, 900, 930, page=0), line("Итого: 250,00", 600, 300, 900, 330, page=1)]
    fields = find_fields(invoice, lines)
    assert fields["total"].value == 250.0 and fields["total"].page == 1


def test_lines_without_boxes_come_from_the_text():
    result = PageResult(text="Invoice No. 77\nTotal: 5.00", model="m", task="text")
    assert [item.text for item in lines_of(result, 0)] == ["Invoice No. 77", "Total: 5.00"]


def test_words_are_placed_from_the_ink_of_the_line():
    face = font(30)
    image = Image.new("L", (1200, 60), 255)
    draw = ImageDraw.Draw(image)
    draw.text((20, 10), "Invoice #", font=face, fill=0)
    draw.text((520, 10), "Date", font=face, fill=0)
    draw.text((900, 10), "Due date", font=face, fill=0)
    for x, y in ((300, 20), (700, 45), (1100, 5)):  # specks of noise
        image.putpixel((x, y), 0)
    spans = word_spans(image, (15, 5, 1060, 55), "Invoice # Date Due date")
    assert len(spans) == 5
    assert spans[2][0] == pytest.approx(520, abs=4) and spans[3][0] == pytest.approx(900, abs=4)
    assert spans[1][1] < 300 and spans[4][1] > 1000
    assert word_spans(Image.new("L", (100, 40), 255), (0, 0, 100, 40), "blank") is None


# --- VLM answers ----------------------------------------------------------------------------------

GOOD = {"number": "INV-7", "date": "12 марта 2024", "total": "1 234,56"}


@pytest.mark.parametrize("answer", [
    json.dumps(GOOD),
    "```json\n" + json.dumps(GOOD, ensure_ascii=False) + "\n```\nHope this helps!",
    "Here are the fields: " + json.dumps(GOOD, ensure_ascii=False) + " Let me know.",
    "{'number': 'INV-7', 'date': '12 марта 2024', 'total': '1 234,56', 'buyer': None}",
    '{"number": "INV-7", "date": "12 марта 2024", "total": "1 234,56", "buyer": "Acme',  # cut off
    json.dumps({"invoice": GOOD}, ensure_ascii=False),
])
def test_answers_are_read_leniently(answer, invoice):
    data = parse_answer(answer)
    values, errors = validate_answer(invoice, data)
    assert errors == []
    assert (values["number"], values["date"], values["total"]) == ("INV-7", "2024-03-12", 1234.56)


@pytest.mark.parametrize("answer", ["", "I cannot read this document.", "gibberish ] [ ((", "[1, 2]"])
def test_an_answer_without_json_is_one_line(answer):
    with pytest.raises(NotJSON) as caught:
        parse_answer(answer)
    assert "\n" not in str(caught.value)


def test_yaml_reads_a_bare_no_as_false_and_the_message_says_so(tmp_path):
    path = _write(tmp_path, "x.yaml", "label: X\nfields:\n  n: {type: string, description: d, labels: [No]}\n")
    with pytest.raises(TemplateError, match=r"^x.yaml: fields.n.labels.0: Input should be a valid string, got False$"):
        load_template(path)


def test_validation_names_each_bad_or_missing_key(invoice):
    values, errors = validate_answer(invoice, {"number": "7", "date": "soon", "total": "lots", "vat": 20})
    assert sorted(errors) == ["date: 'soon' is not a date", "total: 'lots' is not an amount"]
    assert values["number"] == "7" and values["vat"] == 20.0
    _, errors = validate_answer(invoice, {"number": "7"})
    assert sorted(errors) == ["date: missing", "total: missing"]


def test_the_prompt_carries_the_schema_and_the_hints(invoice):
    prompt = build_prompt(invoice, "qwen_vl_2b")
    assert '"total" (number, no currency or thousands separators, required)' in prompt
    assert '"date" (date as YYYY-MM-DD, required)' in prompt
    assert "not the subtotal or the tax" in prompt and "'Итого'" in prompt
    assert prompt.rstrip().endswith("Answer with the JSON object only.")


def test_a_bad_answer_is_asked_again_once_with_its_errors(invoice):
    prompts: list[str] = []
    answers = iter(['{"number": "7", "date": "soon", "total": "1 200,00"}',
                    '```json\n{"number": "7", "date": "2024-03-12", "total": 1200}\n```'])

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    fields, problems, raw = read_fields(ask, invoice, "qwen_vl_2b")
    assert len(prompts) == 2 and "date: 'soon' is not a date" in prompts[1]
    assert problems == [] and len(raw) == 2
    assert (fields["number"].value, fields["date"].value, fields["total"].value) == ("7", "2024-03-12", 1200.0)
    assert fields["date"].source == "2024-03-12"


def test_two_bad_answers_give_one_line_and_keep_what_was_valid(invoice):
    answers = iter(["no idea", '{"number": "7", "date": "soon"}'])
    fields, problems, raw = read_fields(lambda prompt: next(answers), invoice, "qwen_vl_2b")
    assert problems == ["could not read fields: date: 'soon' is not a date; total: missing (after one retry)"]
    assert fields["number"].value == "7" and fields["date"].value is None


def test_a_good_answer_is_not_asked_again(invoice):
    calls = []
    read_fields(lambda prompt: calls.append(prompt) or json.dumps(GOOD), invoice, "m")
    assert len(calls) == 1


# --- the result: problems, corrections, CSV ------------------------------------------------------

def test_problems_say_nothing_was_found_in_one_line_or_name_each_missing_field(invoice):
    extraction = Extraction(file="scan.png", template="invoice", model="tesseract", fields=empty_fields(invoice))
    assert check_problems(invoice, extraction) == ["no Invoice / Счёт fields recognised"]
    extraction.fields["number"].value = "7"
    assert check_problems(invoice, extraction) == ["date: required, not found", "total: required, not found"]


def test_a_correction_is_normalised_and_a_bad_one_keeps_the_value(invoice):
    extraction = Extraction(file="a.png", template="invoice", model="m", fields=empty_fields(invoice))
    extraction.fields["total"].value = 10.0
    extraction.problems = check_problems(invoice, extraction)
    updated, correction = correct(invoice, extraction, "date", "12 марта 2024")
    assert updated.fields["date"].value == "2024-03-12" and updated.fields["date"].corrected
    assert (correction.field, correction.before, correction.after) == ("date", None, "2024-03-12")
    assert updated.problems == ["number: required, not found"]
    assert extraction.fields["date"].value is None  # the original is untouched
    with pytest.raises(NotAValue, match="^total: 'abc' is not an amount$"):
        correct(invoice, updated, "total", "abc")
    assert updated.fields["total"].value == 10.0


def test_csv_has_one_row_per_document_and_json_names_the_sources(invoice):
    first = Extraction(file="a.png", template="invoice", model="m", fields=empty_fields(invoice))
    first.fields["total"].value, first.fields["total"].source, first.fields["total"].page = 5.5, "5,50", 0
    second = Extraction(file="b.png", template="invoice", model="m", fields=empty_fields(invoice),
                        problems=["x"], error="b.png: broken")
    rows = to_csv(invoice, [first, second]).splitlines()
    assert rows[0] == "file,model," + ",".join(invoice.fields) + ",problems,error"
    assert rows[1].startswith("a.png,m,") and ",5.5," in rows[1]
    assert rows[2].endswith(",x,b.png: broken")
    data = first.to_json()
    assert data["fields"]["total"] == 5.5 and data["sources"] == {
        "total": {"text": "5,50", "page": 1, "bbox": None, "corrected": False}}


# --- a whole document through a loader ------------------------------------------------------------

class FakeSpec:
    def __init__(self, tasks):
        self.tasks = tasks


class FakeSettings:
    def __init__(self, tasks):
        self._spec = FakeSpec(tasks)
        self.documents = DocumentLimits()

    def model(self, name):
        return self._spec


class ScriptedVLM:
    """Stands in for the Loader: a model that answers each prompt with the next scripted text."""

    def __init__(self, answers):
        self.settings = FakeSettings(["text", "prompt"])
        self.answers = list(answers)
        self.requests = []

    def run(self, model, image, task, options=None, on_token=None, page=None, source=None, on_wait=None):
        self.requests.append((task, options, page))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if on_token is not None:
            on_token(answer)
        return PageResult(text=answer, model=model, task=task, page=page, source=source)


@pytest.fixture(scope="module")
def blank_document():
    return open_document("scan.png", png_bytes(Image.new("RGB", (400, 300), "white")))


def test_a_vlm_is_asked_for_json_with_a_token_cap(invoice, blank_document):
    loader = ScriptedVLM([json.dumps(GOOD)])
    streamed = []
    extraction = extract_document(loader, blank_document, invoice, "qwen_vl_2b", on_token=streamed.append)
    task, options, page = loader.requests[0]
    assert task == "prompt" and page == 0 and options.prompt == build_prompt(invoice, "qwen_vl_2b")
    assert options.max_new_tokens == 96 + 48 * len(invoice.fields)
    assert extraction.values()["total"] == 1234.56 and extraction.problems == [] and streamed
    assert extraction.fields["total"].page == 0 and extraction.answers == [json.dumps(GOOD)]


def test_malformed_json_twice_is_one_problem_and_the_document_keeps_its_place(invoice, blank_document):
    extraction = extract_document(ScriptedVLM(["{number: ", "```json\n[1, 2"]), blank_document, invoice, "m")
    assert extraction.error is None
    assert extraction.problems[0].startswith("could not read fields: ")
    assert all("\n" not in p for p in extraction.problems)
    assert extraction.problems[-1] == "no Invoice / Счёт fields recognised"


def test_a_failing_page_is_one_line_error(invoice, blank_document):
    extraction = extract_document(ScriptedVLM([RuntimeError("CUDA error: an illegal memory access\ntrace")]),
                                  blank_document, invoice, "m")
    assert extraction.error == "scan.png: page 1: CUDA error: an illegal memory access" and extraction.problems == []


class ScriptedOCR:
    """Stands in for the Loader with a classic engine: each call returns the next page of lines."""

    def __init__(self, pages):
        self.settings = FakeSettings(["text", "layout"])
        self.pages = list(pages)
        self.sizes = []

    def run(self, model, image, task, options=None, on_token=None, page=None, source=None, on_wait=None):
        self.sizes.append(image.size)
        blocks = [Block(bbox=box, category="Line", text=text) for text, box in self.pages.pop(0)]
        return PageResult(text="\n".join(b.text for b in blocks), blocks=blocks, model=model, task=task)


def test_a_second_look_at_double_size_fills_only_the_missing_required_fields(invoice, blank_document):
    first = [("Invoice No.: 77", (10, 10, 200, 30)), ("Date: 01.02.2024", (10, 40, 200, 60))]
    second = [("Invoice No.: 78", (20, 20, 400, 60)), ("Total: 12.50", (200, 200, 380, 240))]
    loader = ScriptedOCR([first, second])
    extraction = extract_document(loader, blank_document, invoice, "tesseract")
    assert loader.sizes == [(400, 300), (800, 600)]
    assert extraction.values()["number"] == "77"  # read at the page's own size: kept
    assert extraction.values()["total"] == 12.5 and extraction.fields["total"].bbox[1:] == (100, 190, 120)
    assert extraction.problems == []
    complete = ScriptedOCR([first + [("Total: 1.00", (10, 70, 200, 90))]])
    assert extract_document(complete, blank_document, invoice, "tesseract").values()["total"] == 1.0
    assert len(complete.sizes) == 1  # nothing missing: no second look
