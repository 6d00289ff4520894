"""`cli.py batch` and `cli.py history` as a user runs them; a batch killed mid-job (the CLI, or the
inference worker under it) finishes with exactly one result per page, the same as an uninterrupted run."""
from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, render_text_page

PAGES = 20


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def batch_args(inputs: Path, out: Path, db: Path, *extra: str) -> list[str]:
    return ["batch", str(inputs), "--model", "tesseract", "--out", str(out), "--db", str(db), "--workers", "2",
            *extra]


@pytest.fixture(scope="module")
def pages_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch") / "scans"
    folder.mkdir()
    for n in range(1, PAGES + 1):
        render_text_page([f"Batch page {n} of the resume test", f"Invoice {4500 + n} total {n * 37} roubles",
                          f"Счёт на оплату номер {n}"], size=28, width=1000).save(folder / f"page{n:02d}.png")
    return folder


@pytest.fixture(scope="module")
def uninterrupted(pages_dir, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("reference")
    done = cli(*batch_args(pages_dir, work / "out", work / "r.db"))
    assert done.returncode == 0, done.stderr
    return {"texts": texts_by_page(work / "r.db"), "out": work / "out"}


def texts_by_page(db: Path) -> dict[str, str]:
    """Every job page's result text; fails unless each page has exactly one result."""
    with sqlite3.connect(db) as con:
        rows = con.execute("""SELECT d.name, p.status, r.text, p.result_id FROM job_pages p
                              JOIN job_documents d ON d.job_id = p.job_id AND d.position = p.position
                              LEFT JOIN results r ON r.id = p.result_id""").fetchall()
        per_page = dict(con.execute("SELECT digest || ':' || page, count(*) FROM results GROUP BY digest, page"))
        jobs = con.execute("SELECT count(*) FROM jobs").fetchone()[0]
    assert jobs == 1
    assert len(rows) == PAGES and all(status == "done" for _, status, _, _ in rows)
    assert len(per_page) == PAGES and set(per_page.values()) == {1}  # exactly one result per page
    return {name: text for name, _, text, _ in rows}


def output_texts(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text(encoding="utf-8") for p in sorted(out.rglob("*.txt"))}


def finished_pages(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT count(*) FROM job_pages WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def wait_for_pages(db: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while finished_pages(db) < count:
        assert process.poll() is None, "the batch ended before it could be interrupted"
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.02)


def test_uninterrupted_run_writes_every_page_and_the_summary(uninterrupted, pages_dir):
    texts = uninterrupted["texts"]
    assert "Batch page 7 of the resume test" in texts["scans/page07.png"]
    out = uninterrupted["out"]
    assert (out / "scans/page07/page07_p1_tesseract.txt").read_text(encoding="utf-8") == texts["scans/page07.png"]
    assert (out / "scans/page07/page07_p1_tesseract.json").exists()
    assert (out / "scans/page07/page07_tesseract.md").exists()
    with open(out / "summary.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "page", "model", "task", "chars", "seconds", "status", "error"]
    assert len(rows) == PAGES and {r["status"] for r in rows} == {"done"}
    assert rows[0]["file"] == "scans/page01.png" and rows[0]["page"] == "1" and int(rows[0]["chars"]) > 40


def test_sigkill_of_the_cli_and_rerun_finish_with_one_result_per_page(pages_dir, uninterrupted, tmp_path):
    args = batch_args(pages_dir, tmp_path / "out", tmp_path / "r.db")
    process = subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_pages(tmp_path / "r.db", 4, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    interrupted_at = finished_pages(tmp_path / "r.db")
    assert 4 <= interrupted_at < PAGES
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert f"resuming job 1: {interrupted_at} of {PAGES}" in again.stderr
    assert f"{PAGES - interrupted_at} in this run" in again.stderr
    assert texts_by_page(tmp_path / "r.db") == uninterrupted["texts"]
    assert output_texts(tmp_path / "out") == output_texts(uninterrupted["out"])


def test_killing_the_inference_worker_mid_job_loses_and_duplicates_nothing(pages_dir, uninterrupted, tmp_path):
    args = batch_args(pages_dir, tmp_path / "out", tmp_path / "r.db")
    process = subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_pages(tmp_path / "r.db", 3, process)
        workers = [child for child in psutil.Process(process.pid).children(recursive=True)
                   if "utils.engine.worker" in " ".join(child.cmdline())]
        assert len(workers) == 2  # --workers 2: two guarded worker processes
        os.kill(workers[0].pid, signal.SIGKILL)
        _, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert texts_by_page(tmp_path / "r.db") == uninterrupted["texts"]
    with sqlite3.connect(tmp_path / "r.db") as con:
        events = [json.loads(row[0]) for row in con.execute("SELECT events FROM results WHERE events != '[]'")]
    # A worker killed during a page is an event recorded with that page; one killed between pages is
    # replaced quietly at the next request.
    assert [e["kind"] for page in events for e in page] in ([], ["worker_died"])


def test_history_lists_filters_and_prints_json(uninterrupted, tmp_path):
    db = str(uninterrupted["out"].parent / "r.db")
    table = cli("history", "--db", db, "--limit", "5")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "time", "page"] and len(lines) == 6
    assert lines[1].split()[0] == str(PAGES)  # newest first
    assert f"(5 newest of {PAGES}" in table.stderr
    out = json.loads(cli("history", "--db", db, "--json", "--document", "scans/page03.png").stdout)
    assert len(out) == 1 and out[0]["page"] == 1 and out[0]["model"] == "tesseract" and out[0]["job"] == 1
    assert "Batch page 3 of the resume test" in out[0]["text"]
    assert json.loads(cli("history", "--db", db, "--json", "--model", "rapidocr").stdout) == []
    found = json.loads(cli("history", "--db", db, "--json", "--search", "счет номер 12").stdout)
    assert [r["document"] for r in found] == ["scans/page12.png"]


def test_bad_inputs_get_one_line_each_and_the_rest_still_runs(pages_dir, tmp_path, ru_en_png):
    (tmp_path / "broken.png").write_bytes(ru_en_png[:300])
    (tmp_path / "notes.txt").write_text("not a document")
    done = cli("batch", str(pages_dir / "page01.png"), str(tmp_path / "broken.png"), str(tmp_path / "missing.png"),
               str(tmp_path / "notes.txt"), "--model", "tesseract", "--out", str(tmp_path / "out"),
               "--db", str(tmp_path / "r.db"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith("error: broken.png: the image data is damaged or truncated")
    assert errors[1].startswith("error: missing.png: no such file")
    assert errors[2:] == ["error: notes.txt: '.txt' files are not supported; use one of: bmp, gif, jpeg, jpg, pdf, "
                          "png, tif, tiff, webp"]
    with open(tmp_path / "out" / "summary.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["file"], r["status"]) for r in rows] == [("page01.png", "done"), ("broken.png", "error"),
                                                        ("missing.png", "error"), ("notes.txt", "error")]


@pytest.mark.parametrize("args,message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "tesseract", "--task", "markdown"], "tesseract does not do 'markdown'"),
    (["--model", "tesseract", "--format", "txt,docx"], "--format 'txt,docx': expected"),
    (["--model", "tesseract", "--workers", "0"], "--workers must be at least 1"),
])
def test_usage_errors_exit_2_with_one_line(pages_dir, tmp_path, args, message):
    done = cli("batch", str(pages_dir), "--out", str(tmp_path / "out"), "--db", str(tmp_path / "r.db"), *args)
    assert done.returncode == 2
    assert done.stderr.startswith("cli.py: error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_ocr_writes_a_searchable_pdf(tmp_path, pages_dir):
    done = cli("ocr", str(pages_dir / "page05.png"), "--model", "tesseract", "--format", "pdf", "--out",
               str(tmp_path))
    assert done.returncode == 0, done.stderr
    text = subprocess.run(["pdftotext", str(tmp_path / "page05.pdf"), "-"], capture_output=True, text=True).stdout
    assert "5 of the resume test" in text and "Invoice 4505 total 185 roubles" in text
    assert cli("ocr", str(pages_dir / "page05.png"), "--format", "pdf").returncode == 2
