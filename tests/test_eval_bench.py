"""`cli.py eval` and `cli.py bench` on generated pages (and on a few shared-data scans when present).

CER from the CLI is checked against an independent computation: the normalisation written out
again here from utils/quality/metrics.py's docstring, and a plain dynamic-programming Levenshtein.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

import cli
from tests.conftest import ROOT, dp_levenshtein, render_text_page
from utils.quality import benchmark

PAGE_ONE = ["Invoice 4521 for March services", "Счёт № 17 — «Ромашка» оплачен…", "Thank you for your order"]
PAGE_TWO = ["Second page of the letter", "Итого к оплате: 1 250 рублей", "Signed by the director"]
PAGE_THREE = ["Delivery address: 12 Garden Road", "Доставка — в течение недели"]


def independent_normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = re.sub("[\u00ad\u200b-\u200d\ufeff]", "", text)
    text = re.sub("[\u2010-\u2015\u2212\ufe58\ufe63\uff0d]", "-", text)
    text = re.sub("[\u2018\u2019\u201a\u201b\u2032]", "'", text)
    text = re.sub("[\u201c-\u201f\u00ab\u00bb\u2033]", '"', text)
    text = text.replace("\u2026", "...")
    return re.sub(r"\s+", " ", text).strip()




def independent_document_cer(page_texts: list[str], truth_file: Path) -> float:
    truths = truth_file.read_text(encoding="utf-8").split("\f")
    errors = chars = 0
    for text, truth in zip(page_texts, truths):
        ref = independent_normalise(truth)
        errors += dp_levenshtein(independent_normalise(text), ref)
        chars += len(ref)
    return errors / chars


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    """Two scored documents (a PNG and a 2-page PDF), one without truth, one broken, one keyword file."""
    folder = tmp_path_factory.mktemp("eval")
    render_text_page(PAGE_ONE, size=32).save(folder / "letter.png")
    (folder / "letter.txt").write_text("\n".join(PAGE_ONE) + "\n", encoding="utf-8")
    (folder / "letter.keys").write_text("4521\nRomashka\n\nMarch\n", encoding="utf-8")
    first, second = render_text_page(PAGE_TWO, size=32), render_text_page(PAGE_THREE, size=32)
    first.save(folder / "two_pages.pdf", save_all=True, append_images=[second], resolution=200)
    (folder / "two_pages.txt").write_text("\n".join(PAGE_TWO) + "\f" + "\n".join(PAGE_THREE), encoding="utf-8")
    render_text_page(["No ground truth here"], size=32).save(folder / "untruthed.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "broken.txt").write_text("whatever", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def eval_json(eval_dir) -> tuple[subprocess.CompletedProcess, dict]:
    done = run_cli("eval", str(eval_dir), "--models", "tesseract,rapidocr", "--json")
    return done, json.loads(done.stdout)


def test_eval_cer_is_reproduced_by_an_independent_computation(eval_json, eval_dir):
    _, report = eval_json
    checked = 0
    for model in ("tesseract", "rapidocr"):
        for doc in report["models"][model]["documents"]:
            if doc["error"]:
                continue
            texts = [page["text"] for page in doc["pages"]]
            expected = independent_document_cer(texts, eval_dir / (Path(doc["file"]).stem + ".txt"))
            assert doc["cer"] == pytest.approx(expected, abs=0.005), (model, doc["file"])
            for page, text in zip(doc["pages"], texts):
                truth = (eval_dir / (Path(doc["file"]).stem + ".txt")).read_text(encoding="utf-8").split("\f")
                ref = independent_normalise(truth[page["page"] - 1])
                assert page["cer"] == pytest.approx(dp_levenshtein(independent_normalise(text), ref) / len(ref),
                                                    abs=0.005)
            checked += 1
    assert checked == 4
    tesseract = {d["file"]: d for d in report["models"]["tesseract"]["documents"]}
    # Clean rendered pages: a near-zero CER shows the comparison above was made on real text.
    assert tesseract["letter.png"]["cer"] < 0.1
    assert len(tesseract["two_pages.pdf"]["pages"]) == 2
    assert tesseract["two_pages.pdf"]["cer"] < 0.1


def test_eval_reports_missing_truth_and_broken_documents_without_stopping(eval_json):
    done, report = eval_json
    assert done.returncode == 1
    assert report["missing_truth"] == ["untruthed.png"]
    assert "untruthed.png" in done.stderr
    for model in ("tesseract", "rapidocr"):
        docs = {d["file"]: d for d in report["models"][model]["documents"]}
        assert set(docs) == {"broken.png", "letter.png", "two_pages.pdf"}
        assert "broken.png" in docs["broken.png"]["error"]
        aggregate = report["models"][model]["aggregate"]
        assert (aggregate["documents"], aggregate["pages"], aggregate["errors"]) == (2, 3, 1)
        assert aggregate["mean_cer"] == pytest.approx((docs["letter.png"]["cer"] + docs["two_pages.pdf"]["cer"]) / 2)
        assert 0 < aggregate["seconds_p50"] <= aggregate["seconds_p95"]


def test_eval_keyword_recall_uses_the_keys_file(eval_json):
    _, report = eval_json
    letter = next(d for d in report["models"]["tesseract"]["documents"] if d["file"] == "letter.png")
    assert letter["keyword_recall"] == pytest.approx(2 / 3)
    assert letter["keywords_missed"] == ["Romashka"]
    assert report["models"]["tesseract"]["aggregate"]["mean_keyword_recall"] == pytest.approx(2 / 3)


def test_eval_table_output(eval_dir, tmp_path, capsys):
    for source in [*eval_dir.glob("letter.*"), *eval_dir.glob("two_pages.*")]:  # no failures: exit code 0
        (tmp_path / source.name).symlink_to(source)
    code = cli.main(["eval", str(tmp_path), "--models", "tesseract"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| model | docs | pages | errors | CER | WER | keyword recall | BoW F1 | s/page p50 | s/page p95 |" in out
    row = next(line for line in out.splitlines() if line.startswith("| tesseract |"))
    assert row.split(" | ")[1:4] == ["2", "3", "0"]
    assert "| letter.png | 1 |" in out and "| two_pages.pdf | 2 |" in out


@pytest.mark.parametrize("args, message", [
    (["eval", "{dir}", "--models", "nosuch"], "unknown model(s) nosuch"),
    (["eval", "{dir}/letter.png", "--models", "tesseract"], "not a directory"),
    (["bench", "{dir}", "--models", "tesseract", "--limit", "0"], "--limit must be at least 1"),
])
def test_usage_errors_exit_2(eval_dir, capsys, args, message):
    assert cli.main([a.format(dir=eval_dir) for a in args]) == 2
    assert message in capsys.readouterr().err


def test_eval_on_shared_scans_matches_independent_cer(shared_data, tmp_path):
    for stem in ("en_tess_phototest", "ru_screenshot_poem_parus"):
        for source in (shared_data / "images").glob(f"{stem}.*"):
            (tmp_path / source.name).symlink_to(source)
    done = run_cli("eval", str(tmp_path), "--models", "tesseract,rapidocr", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    for model in ("tesseract", "rapidocr"):
        docs = report["models"][model]["documents"]
        assert len(docs) == 2
        for doc in docs:
            expected = independent_document_cer([p["text"] for p in doc["pages"]],
                                                tmp_path / (Path(doc["file"]).stem + ".txt"))
            assert doc["cer"] == pytest.approx(expected, abs=0.005), (model, doc["file"])
    # The poem's truth writes "!..." where the screenshot shows "…": normalisation makes them equal.
    poem = next(d for d in report["models"]["tesseract"]["documents"] if d["file"].startswith("ru_screenshot"))
    assert poem["cer"] < 0.05


def test_memory_sampler_sees_child_processes():
    script = ("import time; block = bytearray(150 * 1024 * 1024); block[::4096] = b'x' * len(block[::4096]); "
              "time.sleep(0.6)")
    with benchmark.MemorySampler(interval=0.02) as memory:
        subprocess.run([sys.executable, "-c", script], check=True)
    assert memory.added_mb > 120
    assert memory.peak_mb >= memory.added_mb


def test_render_pages_limits_and_reports_bad_documents(eval_dir, tmp_path):
    errors: list[str] = []
    refs = benchmark.render_pages(eval_dir, tmp_path, errors=errors)
    assert [(r.document, r.index) for r in refs] == [("letter.png", 0), ("two_pages.pdf", 0), ("two_pages.pdf", 1),
                                                     ("untruthed.png", 0)]
    assert len(errors) == 1 and "broken.png" in errors[0]
    with Image.open(refs[2].png) as page:
        assert page.size[0] > 1000
    limited = tmp_path / "limited"
    limited.mkdir()
    assert len(benchmark.render_pages(eval_dir, limited, limit=2)) == 2


def test_ratios_are_app_over_raw():
    app = benchmark.BenchRow("m", "app", latencies=[0.2, 0.4, 0.6], peak_rss_mb=300, added_rss_mb=60)
    raw = benchmark.BenchRow("m", "raw:x", latencies=[0.1, 0.2, 0.3], peak_rss_mb=200, added_rss_mb=40)
    r = benchmark.ratios(app, raw)
    assert r["p50"] == pytest.approx(2.0)
    assert r["pages_per_s"] == pytest.approx(0.5)
    assert r["peak_rss"] == pytest.approx(1.5)
    assert r["added_rss"] == pytest.approx(1.5)
    assert app.pages_per_second == pytest.approx(2.5)


def test_bench_cli_writes_csv_and_plot(eval_dir, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for source in eval_dir.glob("[lt]*.[pP]*"):  # letter.png and the two-page PDF: three pages
        (pages / source.name).symlink_to(source)
    out = tmp_path / "bench"
    done = run_cli("bench", str(pages), "--models", "tesseract,rapidocr", "--out", str(out), "--limit", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 page(s)")
    with (out / "bench.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["engine"]) for r in rows] == [
        ("tesseract", "app"), ("tesseract", "raw:tesseract-cli"), ("rapidocr", "app"), ("rapidocr", "raw:rapidocr")]
    for row in rows:
        assert row["pages"] == "1" and not row["error"]
        assert 0 < float(row["p50_s"]) <= float(row["p95_s"])
        assert float(row["peak_rss_mb"]) > 50
    assert float(rows[0]["load_s"]) > 0 and float(rows[3]["load_s"]) > 0
    with (out / "bench_pages.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    with Image.open(out / "bench.png") as plot:
        assert plot.format == "PNG" and plot.width > 500
    assert "p50 app/raw" in done.stdout
    ratio_rows = [line for line in done.stdout.splitlines() if line.startswith(("| tesseract | tesseract-cli",
                                                                                  "| rapidocr | rapidocr"))]
    assert len(ratio_rows) == 2


def test_eval_and_bench_keep_the_good_pages_of_a_document_with_a_bad_one(tmp_path, capsys):
    from tests.test_documents import make_pdf

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "cropped.pdf").write_bytes(make_pdf(3, crop_outside=(2,)))
    (folder / "cropped.txt").write_text("\f".join(f"Quarterly report, page {n}" for n in (1, 2, 3)), encoding="utf-8")
    assert cli.main(["eval", str(folder), "--models", "tesseract", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)["models"]["tesseract"]
    (doc,) = report["documents"]
    assert doc["error"] is None and [p["page"] for p in doc["pages"]] == [1, 2, 3]
    bad = doc["pages"][1]
    assert bad["error"].startswith("cropped.pdf: page 2: its crop box") and bad["cer"] is None
    assert any(note.startswith("not scored: cropped.pdf: page 2") for note in doc["notes"])
    good = [doc["pages"][0], doc["pages"][2]]
    assert doc["cer"] == pytest.approx(sum(p["char_errors"] for p in good) / sum(p["reference_chars"] for p in good))
    assert doc["cer"] < 0.1
    aggregate = report["aggregate"]
    assert (aggregate["documents"], aggregate["pages"], aggregate["errors"], aggregate["page_errors"]) == (1, 2, 0, 1)

    out = tmp_path / "bench"
    assert cli.main(["bench", str(folder), "--models", "tesseract", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("2 page(s)\ndocument error: cropped.pdf: page 2: its crop box")
    with (out / "bench.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["engine"], r["pages"], r["error"]) for r in rows] == [("app", "2", ""), ("raw:tesseract-cli", "2", "")]
    with (out / "bench_pages.csv").open(encoding="utf-8") as handle:
        assert [(r["engine"], r["page"]) for r in csv.DictReader(handle)] == [
            ("app", "1"), ("app", "3"), ("raw:tesseract-cli", "1"), ("raw:tesseract-cli", "3")]
