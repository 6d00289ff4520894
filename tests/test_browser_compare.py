"""The Compare page in headless chromium against `streamlit run app.py`: two models and a reference."""
from __future__ import annotations

import re

import pytest

from tests.conftest import png_bytes, render_text_page

pytestmark = pytest.mark.browser

LINES = ["Invoice 4521 for March services", "Please pay within fourteen days"]


def choose_models(page, labels: list[str]) -> None:
    """Empty the model picker, then pick each model by typing its name, as a user would."""
    picker = page.get_by_test_id("stMultiSelect").filter(has_text="Models (two or more)")
    chips = picker.locator("[data-tag]")
    picker.get_by_role("button", name="Clear all").click()
    chips.first.wait_for(state="detached")
    box = picker.get_by_role("combobox")
    for count, label in enumerate(labels, 1):
        box.click()
        box.fill(label)
        page.get_by_role("option", name=re.compile(re.escape(label))).click()
        chips.filter(has_text=label).first.wait_for()
        assert chips.count() == count
    box.press("Escape")


def test_compare_two_models_with_reference_in_browser(page, app_url):
    page.goto(f"{app_url}/compare")
    page.get_by_role("heading", name="Compare models").wait_for()
    uploader = page.get_by_test_id("stFileUploader").filter(has_text="A scan or PDF")
    uploader.locator("input[type=file]").set_input_files(
        files=[{"name": "invoice.png", "mimeType": "image/png", "buffer": png_bytes(render_text_page(LINES, size=32))}])
    reference = page.get_by_role("textbox", name="Reference text (optional)")
    reference.wait_for()

    choose_models(page, ["Tesseract", "RapidOCR"])
    reference.fill("\n".join(LINES))
    reference.press("Control+Enter")
    keywords = page.get_by_role("textbox", name="Keywords, one per line")
    keywords.fill("4521\nZebra")
    keywords.press("Control+Enter")

    page.get_by_role("button", name="Run 2 models").click()
    table = page.get_by_test_id("stTable")
    table.get_by_text("CER %").wait_for(timeout=90_000)

    outputs = page.get_by_test_id("stCode")
    assert outputs.count() == 2
    for index in range(2):
        assert "Invoice 4521 for March services" in outputs.nth(index).inner_text()
    rows = table.locator("tbody tr")
    assert rows.count() == 2
    names = [rows.nth(i).locator("th").inner_text().strip() for i in range(2)]
    assert names == ["Tesseract 5 (rus+eng)", "RapidOCR (PP-OCR, Latin)"]
    for i in range(2):
        cer = float(rows.nth(i).locator("td").first.inner_text())
        assert 0 <= cer < 10
    assert page.get_by_text("missed: Zebra").count() == 2
    page.locator(".compare-diff").first.wait_for()
