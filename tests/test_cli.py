"""The CLI contract, run as a user runs it: a subprocess, its stdout, its exit code."""
import json
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

from tests.conftest import ROOT, png_bytes, render_text_page
from tests.test_documents import make_pdf

PAGE_KEYS = {"page", "model", "task", "text", "markdown", "blocks", "raw", "device", "dtype", "profile", "seconds",
             "load_seconds", "tokens", "truncated", "warnings", "error"}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env)


@pytest.fixture(scope="module")
def files(tmp_path_factory, ru_en_png):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "invoice.png").write_bytes(ru_en_png)
    (folder / "report.pdf").write_bytes(make_pdf(3))
    (folder / "broken.png").write_bytes(ru_en_png[:200])
    (folder / "english.png").write_bytes(png_bytes(render_text_page(["Hello from the command line"])))
    return folder


def test_models_lists_every_entry_with_status():
    done = cli("models")
    assert done.returncode == 0, done.stderr
    assert "* tesseract" in done.stdout and "ready" in done.stdout
    assert "rapidocr" in done.stdout


def test_ocr_json_contract(files):
    done = cli("ocr", str(files / "invoice.png"), str(files / "report.pdf"), "--model", "tesseract",
               "--pages", "1,3", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"documents", "recovery_events"} and out["recovery_events"] == []
    invoice, report = out["documents"]
    assert invoice["error"] is None and invoice["file"].endswith("invoice.png")
    (page,) = invoice["pages"]
    assert set(page) == PAGE_KEYS
    assert page["page"] == 1 and page["model"] == "tesseract" and page["task"] == "text"
    assert "Invoice number 4521" in page["text"] and page["device"] == "cpu"
    assert page["blocks"][0]["bbox"] and page["seconds"] > 0
    assert [p["page"] for p in report["pages"]] == [1, 3]
    assert "page 3" in report["pages"][1]["text"]


def test_one_failure_exits_1_and_the_rest_still_have_results(files):
    done = cli("ocr", str(files / "broken.png"), str(files / "english.png"), str(files / "missing.png"),
               "--model", "tesseract", "--format", "json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    broken, english, missing = json.loads(done.stdout)["documents"]
    assert broken["error"].startswith("broken.png: the image data is damaged") and broken["pages"] == []
    assert "\n" not in broken["error"]
    assert "Hello from the command line" in english["pages"][0]["text"] and english["error"] is None
    assert missing["error"] == "missing.png: no such file"


def test_txt_and_out_dir(files, tmp_path):
    done = cli("ocr", str(files / "english.png"), "--model", "rapidocr", "--format", "txt")
    assert done.returncode == 0, done.stderr
    assert "Hello from the command line" in done.stdout
    done = cli("ocr", str(files / "report.pdf"), "--model", "tesseract", "--format", "md", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "page 3" in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("args,message", [
    (["ocr", "x.png", "--model", "nonexistent"], "unknown model 'nonexistent'"),
    (["ocr", "x.png", "--model", "rapidocr", "--task", "markdown"], "rapidocr does not do 'markdown'"),
    (["ocr", "x.png", "--format", "docx"], "invalid choice: 'docx'"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2_without_traceback(args, message):
    done = cli(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_bad_page_selection_is_a_document_error(files):
    done = cli("ocr", str(files / "report.pdf"), "--model", "tesseract", "--pages", "7", "--format", "json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["documents"][0]["error"]
    assert error == "report.pdf: page selection '7': page 7 is past the last page (3)"


def test_one_bad_page_gets_its_own_error_and_the_others_their_text(files, tmp_path):
    (tmp_path / "cropped.pdf").write_bytes(make_pdf(3, crop_outside=(2,)))
    done = cli("ocr", str(tmp_path / "cropped.pdf"), "--model", "tesseract", "--format", "json")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (document,) = json.loads(done.stdout)["documents"]
    assert document["error"] is None
    first, second, third = document["pages"]
    assert set(second) == PAGE_KEYS and second["page"] == 2 and second["text"] is None
    assert second["error"] == ("cropped.pdf: page 2: its crop box (1000, 1000, 1200, 1200) lies outside its media "
                               "box (0, 0, 420, 200), so the page shows nothing")
    assert "page 1" in first["text"] and "page 3" in third["text"]
    assert first["error"] is None and third["error"] is None
    assert "error: cropped.pdf: page 2: its crop box" in done.stderr


def test_awkward_images_tall_transparent_blank_and_animated(tmp_path):
    from tests.conftest import font
    from tests.test_documents import white_text_on_transparent

    tall = Image.new("L", (700, 33_000), 255)  # a long receipt: over Tesseract's 32,767 px side
    draw = ImageDraw.Draw(tall)
    draw.text((40, 60), "Receipt from the corner shop", fill=0, font=font(36))
    draw.text((40, 32_850), "Total due 4521 roubles", fill=0, font=font(36))
    tall.save(tmp_path / "receipt.png")
    white_text_on_transparent().save(tmp_path / "ghost.png")
    Image.new("RGB", (600, 300), "white").save(tmp_path / "blank.png")
    frames = [render_text_page([f"Animated frame {i}"]) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    done = cli("ocr", *(str(tmp_path / n) for n in ("receipt.png", "ghost.png", "blank.png", "anim.gif")),
               "--model", "tesseract", "--format", "json")
    assert done.returncode == 0, done.stderr
    receipt, ghost, blank, anim = (d["pages"][0] for d in json.loads(done.stdout)["documents"])
    assert "Receipt from the corner shop" in receipt["text"] and "Total due 4521" in receipt["text"]
    assert receipt["text"].count("Receipt") == 1
    assert any("32,767 px" in w and "strips" in w for w in receipt["warnings"])
    assert receipt["blocks"][-1]["bbox"][1] > 32_000  # boxes are in the page's own coordinates
    assert "Ghost invoice 4521" in ghost["text"] and ghost["warnings"] == []
    assert blank["text"] == "" and blank["warnings"] == ["no text was found on page 1"]
    assert "Animated frame 0" in anim["text"]
    assert anim["warnings"] == ["animated GIF with 3 frames: only the first frame is read"]


def test_languages_chosen_for_the_documents(files):
    done = cli("ocr", str(files / "invoice.png"), "--model", "tesseract", "--languages", "eng", "--format", "json")
    page = json.loads(done.stdout)["documents"][0]["pages"][0]
    assert done.returncode == 0 and "Invoice number 4521" in page["text"]
    assert not any("а" <= ch.lower() <= "я" for ch in page["text"])  # eng alone writes no Cyrillic
    # Languages the engine cannot read are refused before any page runs, in one line (exit 2: usage).
    bad = cli("ocr", str(files / "invoice.png"), "--model", "tesseract", "--languages", "rus+xyz", "--format", "json")
    assert bad.returncode == 2 and not bad.stdout
    assert bad.stderr.strip().startswith("cli.py: error: --languages: tesseract has no language data for xyz "
                                         "(installed: ") and len(bad.stderr.strip().splitlines()) == 1
    fixed = cli("ocr", str(files / "invoice.png"), "--model", "rapidocr", "--languages", "eng")
    assert fixed.returncode == 2 and fixed.stderr.strip() == (
        "cli.py: error: --languages: rapidocr reads a fixed set of languages; languages can be chosen for: tesseract")
