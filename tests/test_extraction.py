"""Field extraction without a model: values, templates, labels over OCR lines, reading VLM answers."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models.contract import Block, PageResult, RunOptions
from models.registry import ModelSpec
from tests.conftest import font, png_bytes
from utils.config import DocumentLimits
from utils.documents.reader import open_document
from utils.extraction.classic import (
    FieldLines,
    Line,
    field_lines,
    find_fields,
    fold,
    label_regex,
    line_sheet,
    lines_of,
    read_back,
    repair_identifier,
    unsure_code,
    word_spans,
)
from utils.extraction.extract import extract_document
from utils.extraction.normalise import NotAValue, find_amount, find_date, normalise
from utils.extraction.result import (
    Correction,
    Extraction,
    apply_corrections,
    check_problems,
    correct,
    empty_fields,
    to_csv,
)
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
    # OCR's stray punctuation: colons and semicolons for dots, dots and dashes beside words and numbers
    ("17:04;2024", "2024-04-17"), ("June 29,. 2026", "2026-06-29"), ("May- 13,2021", "2021-05-13"),
    ("«08».марта 2019`г.", "2019-03-08"), ("«02» ноября .2024 г.", "2024-11-02"),
])
def test_dates_in_russian_and_english_become_iso(text, iso):
    assert find_date(text).value == iso
    assert normalise("date", text) == iso


def test_numeric_dates_follow_the_field_order_unless_only_the_other_one_is_a_date():
    assert normalise("date", "03/04/2024", "mdy") == "2024-03-04"
    assert normalise("date", "03/04/2024") == "2024-04-03"
    assert normalise("date", "03/25/2024") == "2024-03-25"  # 25 is no month: month first after all


@pytest.mark.parametrize("text", ["31.02.2024", "Invoice 12 items 2024", "12 marts 2024", "2024", "12:30 2024",
                                  "10:15:45"])
def test_what_is_not_a_date(text):
    with pytest.raises(NotAValue, match="is not a date"):
        normalise("date", text)


@pytest.mark.parametrize("text,value", [
    ("1 234,56", 1234.56), ("1,234.56", 1234.56), ("1.234,56", 1234.56), ("1234.56", 1234.56),
    ("1 234.56 USD", 1234.56), ("$1,234.56", 1234.56), ("1\u00a0234,56 ₽", 1234.56), ("1 234,56 руб.", 1234.56),
    ("€1.234.567,8", 1234567.8), ("1,234", 1234.0), ("1.234.567", 1234567.0), ("1,5", 1.5), ("-50.00", -50.0),
    ("12 345 678,90", 12345678.9), ("1'234.50", 1234.5), ("67.973.03", 67973.03), ("500", 500.0),
    ("37933, 72", 37933.72), ("$79428 .40", 79428.4),  # OCR's stray spaces beside the decimal separator
    # specks read between the groups, a decimal comma read as a semicolon
    ("21217;92", 21217.92), ("37. 807;15 руб.", 37807.15), ("290:775.65 USD", 290775.65), ("39. 026.47", 39026.47),
])
def test_amounts_as_documents_write_them_become_numbers(text, value):
    assert normalise("amount", text) == pytest.approx(value)


def test_the_amount_a_label_points_at():
    assert find_amount("Total (3 items): 1 234,56 RUB").value == 1234.56
    assert find_amount("Итого - 1 200,00").value == 1200.0  # a dash after a label is no minus sign
    assert find_amount("12.03.2024") is None  # a date is no amount
    assert find_amount("Total 3; 12").value == 12.0  # a semicolon and a space are no decimal separator
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


@pytest.mark.parametrize("text,number", [
    ("Invoice #: A-O1383", "A-01383"),  # an O for a zero after the dash: the pattern sees the digits
    ("Счёт-фактура №: БП- 003274", "БП-003274"), ("Invoice #: INV-2025 -8624", "INV-2025-8624"),  # spaces at a dash
    ("Invoice No. -_INV-2022-8936", "INV-2022-8936"),  # an underscore read beside it is no part of it
    ("Счёт № 145 - 12.03.2024", "145"),  # a dash with spaces both sides parts two things
])
def test_codes_are_found_as_ocr_breaks_them(invoice, text, number):
    assert find_fields(invoice, [line(text, 100, 100, 900, 130)])["number"].value == number


@pytest.mark.parametrize("code,cyrillic,unsure", [
    ("Б1-000267", True, True), ("Б11-003959", True, True), ("BN-008606", True, True), ("BIT-003184", True, True),
    ("INV-2024-7А", False, True),  # letters of both scripts
    ("БП-000267", True, False), ("INV003736", False, False), ("INV-2024-0042", False, False),
    ("2021/975", False, False), ("A-08230", False, False), ("4558", True, False), ("9909/21", True, False),
])
def test_codes_that_look_misread(code, cyrillic, unsure):
    assert unsure_code(code, cyrillic) is unsure


def test_the_lines_a_field_rests_on_and_whether_it_is_doubtful(invoice):
    title = line("Invoice 1№\\/003465 dated 17/02/2020", 100, 100, 900, 130)
    fields, used = field_lines(invoice, [title, line("Total: 5.00", 600, 400, 900, 430)])
    assert fields["number"].value == "1" and used["number"] == FieldLines((title,), doubtful=True)  # part of a word
    assert used["date"].lines == (title,) and not used["date"].doubtful
    repaired = line("Invoice No.: INVO03465", 100, 100, 900, 130)
    fields, used = field_lines(invoice, [repaired])
    assert fields["number"].value == "INV003465" and used["number"].doubtful  # needed repair
    label, value = line("Date", 100, 100, 200, 130), line("12.03.2024", 100, 140, 260, 170)
    fields, used = field_lines(invoice, [label, value])
    assert fields["date"].value == "2024-03-12" and used["date"] == FieldLines((label, value), doubtful=False)
    assert used["total"] == FieldLines() and fields["total"].value is None


def test_specks_between_column_labels_do_not_move_the_columns(invoice):
    # "." read from specks before "Дата выставления": the value under it starts left of the speck's end
    labels = line("Счёт № . Дата выставления . Срок оплаты", 99, 383, 1083, 409,
                  words=((99, 164), (181, 197), (519, 533), (546, 601), (615, 765), (911, 924), (937, 990),
                         (1003, 1082)))
    values = line("2021-2488 3 апреля 2021 г. 03.05.2021", 100, 423, 1042, 448,
                  words=((100, 225), (520, 532), (545, 620), (632, 682), (695, 720), (911, 1042)))
    fields = find_fields(invoice, [labels, values])
    assert (fields["number"].value, fields["date"].value, fields["due_date"].value) == \
        ("2021-2488", "2021-04-03", "2021-05-03")


def test_the_next_column_s_text_does_not_hide_the_value_under_a_label(invoice):
    # "Срок‘оплаты" (a misread label) far right of "Дата выставления" is another column's, not a value
    labels = line("Счёт № Дата выставления Срок‘оплаты", 83, 274, 865, 296,
                  words=((83, 130), (136, 156), (420, 468), (477, 606), (735, 865)))
    values = line("БП-002522 2026-06-28 05.07.2026", 83, 301, 835, 320, words=((83, 180), (420, 521), (735, 835)))
    fields = find_fields(invoice, [labels, values])
    assert fields["date"].value == "2026-06-28" and fields["due_date"].value == "2026-07-05"
    # close by, the same words are what follows the label: no value below
    near = line("Дата выставления срок", 83, 274, 400, 296, words=((83, 130), (136, 300), (310, 400)))
    assert find_fields(invoice, [near, values])["date"].value is None


def test_a_lone_sign_heading_a_table_is_no_label_for_the_row_below(invoice):
    header = line("№ Наименование Кол-во Цена Сумма", 98, 548, 1157, 569,
                  words=((98, 111), (183, 340), (729, 806), (869, 920), (1094, 1157)))
    row = line("1 Кабель медный 3 619,47 1 858,41", 99, 580, 1157, 600,
               words=((99, 108), (183, 260), (270, 340), (729, 740), (869, 940), (1094, 1110), (1120, 1157)))
    assert find_fields(invoice, [header, row])["number"].value is None


def test_only_identifier_fields_are_repaired(invoice):
    lines = [line("Invoice No.: INVO03960", 100, 100, 600, 130), line("Bill to: OOO Bank", 100, 150, 600, 180)]
    fields = find_fields(invoice, lines)
    assert fields["number"].value == "INV003960" and fields["buyer"].value == "OOO Bank"


def test_pick_last_takes_the_grand_total_and_pages_are_kept(invoice):
    lines = [line("Итого: 100,00", 600, 900, 900, 930, page=0), line("Итого: 250,00", 600, 300, 900, 330, page=1)]
    fields = find_fields(invoice, lines)
    assert fields["total"].value == 250.0 and fields["total"].page == 1


def test_words_are_placed_by_the_engine_s_word_boxes_when_it_gives_them():
    def word(text, x1, x2, score=0.9):
        return Block(bbox=(x1, 10, x2, 40), category="Word", text=text, score=score)

    block = Block(bbox=(10, 10, 700, 40), category="Line", text="Invoice # 1 234,56", score=0.8,
                  words=[word("Invoice", 10, 120), word("#", 130, 150, 0.4), word("1 234,56", 500, 700)])
    (read,) = lines_of(PageResult(blocks=[block], model="m", task="text"), 0, Image.new("L", (800, 60), 255))
    assert read.words == ((10, 120), (130, 150), (500, 525), (550, 700))  # a box of two words is shared
    assert read.weakest == 0.4 and read.score == 0.8
    mismatched = block.model_copy(update={"text": "Invoice # 1 234,56 RUB"})
    (read,) = lines_of(PageResult(blocks=[mismatched], model="m", task="text"), 0)
    assert read.words is None  # words that do not make up the line: no places (no image to estimate them)


def test_tesseract_gives_each_line_its_words_with_boxes_and_scores():
    from models.registry import Profile
    from models.tesseract_ocr import TesseractAdapter
    from utils.config import cached_settings

    adapter = TesseractAdapter("tesseract", cached_settings().model("tesseract"), Profile(device="cpu"))
    adapter.load()
    try:
        image = Image.new("RGB", (900, 80), "white")
        face = font(32)
        ImageDraw.Draw(image).text((20, 20), "Invoice No 4521", font=face, fill="black")
        result = adapter.run(image, "text", RunOptions())
    finally:
        adapter.close()
    (block,) = result.blocks
    assert " ".join(w.text for w in block.words) == block.text == "Invoice No 4521"
    assert all(w.category == "Word" and 0 <= w.score <= 1 for w in block.words)
    starts = [20 + face.getlength(prefix) for prefix in ("", "Invoice ", "Invoice No ")]
    assert [w.bbox[0] for w in block.words] == pytest.approx(starts, abs=5)  # where each word is


def test_a_sheet_sets_each_line_alone_at_a_few_sizes_and_maps_readings_back():
    page = Image.new("L", (600, 200), 230)  # grey paper
    ImageDraw.Draw(page).text((50, 40), "Invoice No 77", font=font(20), fill=0)
    ImageDraw.Draw(page).text((50, 65), "Date 12.03.2024", font=font(20), fill=0)
    first, second = line("Invoice No 77", 50, 40, 250, 60), line("Date 12.03.2024", 50, 65, 260, 85)
    sheet = line_sheet(page, [first, second], heights=(20, 40))
    assert [(row.line, row.scale) for row in sheet.rows] == [(first, 1.0), (first, 2.0), (second, 1.0), (second, 2.0)]
    assert sheet.image.getpixel((1, 1)) == 230  # the cuts' paper
    bottom = sheet.rows[1]
    # what an engine reads on the second row (the first line at twice its size), and a letter's tail
    # from the line below reaching into the cut: off the row's middle, so left out
    middle = bottom.top + (50 - bottom.cut[1]) * 2
    read = Block(bbox=(sheet.margin + 20, middle - 20, sheet.margin + 400, middle + 20), category="Line",
                 text="Invoice No 78", score=0.9)
    tail = Block(bbox=(sheet.margin, middle + 17, sheet.margin + 30, middle + 30), category="Line", text="ll")
    readings = read_back(sheet, PageResult(blocks=[read, tail], model="m", task="text"))
    assert [[n.text for n in r] for r in readings] == [[], ["Invoice No 78"], [], []]
    (back,) = readings[1]
    assert back.bbox == pytest.approx((bottom.cut[0] + 10, 40, bottom.cut[0] + 200, 60))
    assert back.page == 0 and back.score == 0.9


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


def test_a_corrected_field_keeps_the_engine_s_value_and_kept_corrections_apply_again(invoice):
    extraction = Extraction(file="a.png", template="invoice", model="m", fields=empty_fields(invoice))
    extraction.fields["total"].value, extraction.fields["total"].source = 10.0, "10,00"
    extraction.problems = ["page 2: no text", *check_problems(invoice, extraction)]
    once, first = correct(invoice, extraction, "total", "12,50")
    twice, second = correct(invoice, once, "total", "13")
    assert (twice.fields["total"].value, twice.fields["total"].original, twice.fields["total"].corrected) == \
        (13.0, 10.0, True)
    data = twice.to_json()
    assert data["fields"]["total"] == 13.0  # the download gives the person's value, and the engine's beside it
    assert data["sources"]["total"] == {"text": "10,00", "page": None, "bbox": None, "corrected": True,
                                        "original": 10.0}
    assert ",13.0," in to_csv(invoice, [twice]).splitlines()[1]
    back, _ = correct(invoice, twice, "total", "10.00")  # the engine's own value: no longer a correction
    assert (back.fields["total"].corrected, back.fields["total"].original) == (False, None)

    dated, third = correct(invoice, extraction, "date", "1 апреля 2024")
    kept = apply_corrections(invoice, extraction, [first, second, third, Correction(field="gone", before=None,
                                                                                   after="x")])
    assert kept.values() == {**twice.values(), "date": "2024-04-01"}  # a field the template lost is passed over
    assert kept.problems == ["page 2: no text", "number: required, not found"]  # problems follow the values
    assert kept.to_json()["sources"]["date"] == {"text": None, "page": None, "bbox": None, "corrected": True,
                                                 "original": None}
    cleared, _ = correct(invoice, extraction, "total", "")
    assert cleared.to_json()["sources"]["total"]["original"] == 10.0 and cleared.values()["total"] is None


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

class FakeSettings:
    def __init__(self, tasks, adapter="tesseract_ocr", options=None):
        self._spec = ModelSpec(adapter=adapter, label=adapter, tasks=tasks, options=options or {})
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


def _line_block(text, box, score=0.9):
    """A line as Tesseract gives it: its words with boxes shared out by characters, each with `score`."""
    x1, y1, x2, y2 = box
    words, offset = [], 0
    for word in text.split():
        start = text.index(word, offset)
        offset = start + len(word)
        words.append(Block(bbox=(x1 + (x2 - x1) * start / len(text), y1, x1 + (x2 - x1) * offset / len(text), y2),
                           category="Word", text=word, score=score))
    return Block(bbox=box, category="Line", text=text, score=score, words=words)


class ReadingAgainOCR:
    """Stands in for the Loader with Tesseract (rus+eng): the page gives scripted lines; a sheet of lines
    read again gives, for each band of ink on it (a row), the next scripted (text, score)."""

    def __init__(self, page, rows):
        self.settings = FakeSettings(["text", "layout"], options={"languages": "rus+eng"})
        self.page, self.rows, self.requests = page, list(rows), []

    def run(self, model, image, task, options=None, on_token=None, page=None, source=None, on_wait=None):
        self.requests.append((image.size, options.languages if options else None))
        if source == "scan.png":
            blocks = [_line_block(text, box, score) for text, box, score in self.page]
        else:
            ink = np.asarray(image.convert("L")) < 128
            edges = np.flatnonzero(np.diff(np.concatenate(([0], ink.any(axis=1).astype(np.int8), [0]))))
            blocks = []
            for top, bottom in zip(edges[::2], edges[1::2]):
                columns = np.flatnonzero(ink[top:bottom].any(axis=0))
                text, score = self.rows.pop(0)
                blocks.append(_line_block(text, (float(columns[0]), float(top), float(columns[-1] + 1),
                                                 float(bottom)), score))
        return PageResult(text="\n".join(b.text for b in blocks), blocks=blocks, model=model, task=task)


def _scan(boxes):
    """A page with a bar of ink where each line is, for the sheet's cuts to hold."""
    image = Image.new("RGB", (1000, 400), "white")
    draw = ImageDraw.Draw(image)
    for x1, y1, x2, y2 in boxes:
        draw.rectangle((x1 + 2, y1 + 4, x2 - 2, y2 - 4), fill="black")
    return open_document("scan.png", png_bytes(image))


ENGLISH = [("Bill to: Northwind Trading Ltd, Baker Street, London", (100, 200, 800, 224), 0.95),
           ("Date of issue: 2021-09-11", (100, 100, 500, 124), 0.95), ("Amount due: $193.26", (600, 300, 900, 324), 0.95)]


def test_a_code_misread_in_two_scripts_is_read_again_in_latin_alone(invoice):
    number = ("INVOICE NO.: 1№\\/003465", (100, 50, 500, 74), 0.83)  # "INV" read with rus+eng
    loader = ReadingAgainOCR([number, *ENGLISH], rows=[("INVOICE NO.: INVO03465", 0.6), ("INVOICE NO.: INV003465", 0.5),
                                                       ("INVOICE NO.: 1NV003465", 0.7)])
    extraction = extract_document(loader, _scan([number[1]] + [line[1] for line in ENGLISH]), invoice, "tesseract")
    assert extraction.values()["number"] == "INV003465"  # the one reading that is no doubtful code
    x1, y1, x2, y2 = extraction.fields["number"].bbox  # in the page's pixels, inside the line's box
    assert 250 < x1 < x2 <= 500 and 50 <= y1 < y2 <= 74
    (page, _), (sheet, languages) = loader.requests
    assert languages == "eng" and sheet != page and not loader.rows  # one sheet: the line at three sizes


def test_a_reading_again_is_taken_only_when_it_is_better(invoice):
    russian = [("Покупатель: ООО Ромашка, город Москва, улица Ленина", (100, 200, 800, 224), 0.95),
               ("Дата счёта: 05.02.2024", (100, 100, 500, 124), 0.95), ("Итого к оплате: 5 795,08", (600, 300, 900, 324), 0.95)]
    number = ("Счёт №: Б1-000267", (100, 50, 500, 74), 0.5)  # "П" read as "1": a code that looks misread
    boxes = [number[1]] + [line[1] for line in russian]
    better = ReadingAgainOCR([number, *russian], rows=[("Счёт №: Б1-000267", 0.4), ("Счёт №: БП-000267", 0.7),
                                                       ("Счёт №: bII-000267", 0.8)])
    assert extract_document(better, _scan(boxes), invoice, "tesseract").values()["number"] == "БП-000267"
    assert better.requests[1][1] is None  # a Russian page: read again with the engine's own languages
    # a reading that lost the label, and ones the engine is less sure of: the first reading stands
    worse = ReadingAgainOCR([number, *russian], rows=[("Сч: БП-000267", 0.9), ("Счёт №: Б1-000267", 0.3),
                                                      ("Счёт №: Б11-000267", 0.4)])
    extraction = extract_document(worse, _scan(boxes), invoice, "tesseract")
    assert extraction.values()["number"] == "Б1-000267" and extraction.fields["number"].source == "Б1-000267"


def test_clean_fields_are_not_read_again(invoice):
    number = ("Invoice No.: INV-2021-0042", (100, 50, 500, 74), 0.9)
    loader = ReadingAgainOCR([number, *ENGLISH], rows=[])
    extraction = extract_document(loader, _scan([number[1]] + [line[1] for line in ENGLISH]), invoice, "tesseract")
    assert extraction.values()["number"] == "INV-2021-0042" and len(loader.requests) == 1
