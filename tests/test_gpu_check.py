"""benchmarks/gpu_check.py: says so and exits 0 without a GPU; scores pages through the Loader; on a GPU,
recovers from a real device-side assert and a real out-of-memory error."""
from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from benchmarks import gpu_check
from models.registry import EntryError, ModelSpec, check_entry
from tests.conftest import ROOT, _cuda_available, render_text_page
from utils.config import cached_settings
from utils.engine.loader import Loader


@pytest.mark.skipif(_cuda_available(), reason="this machine has a CUDA GPU")
def test_without_cuda_it_says_so_and_exits_0():
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no usable CUDA GPU here (") and "nothing to check" in done.stdout


def test_measure_scores_the_pages_that_have_ground_truth(tmp_path):
    lines = ["Invoice number 4521", "Total due 1250 EUR"]
    render_text_page(lines).save(tmp_path / "invoice.png")
    (tmp_path / "invoice.txt").write_text("\n".join(lines), encoding="utf-8")
    render_text_page(["no truth for this one"]).save(tmp_path / "other.png")
    loader = Loader(cached_settings())
    try:
        row = gpu_check.measure(loader, "tesseract", tmp_path, limit=5)
    finally:
        loader.close()
    assert (row.pages, row.errors) == (1, [])
    assert row.reference_chars == len("Invoice number 4521 Total due 1250 EUR") and row.cer is not None
    assert row.cer < 0.1 and row.seconds > 0
    assert row.line().startswith("| tesseract | 1 | ")


def test_the_fault_models_are_valid_registry_entries(tmp_path):
    settings = gpu_check.with_fault_models(cached_settings(), tmp_path / "marker")
    for name in gpu_check.FAULTS:
        check_entry(settings.models[name])
    assert "gpu_fault_oom" not in cached_settings().models  # only the check's own copy has them
    with pytest.raises(EntryError, match="options.fault"):
        check_entry(ModelSpec(adapter="vlm.gpu_faults", label="x", tasks=["text"], options={"fault": "melt"}))


@pytest.mark.gpu
def test_real_gpu_faults_are_recovered_through_the_guard(tmp_path, capsys):
    loader = Loader(gpu_check.with_fault_models(cached_settings(), tmp_path / "marker"))
    try:
        assert gpu_check.check_faults(loader)
        kinds = [event.kind for event in loader.recovery_events()]
        # The page still runs afterwards, on the same loader.
        assert loader.run("tesseract", Image.new("RGB", (200, 80), "white")).model == "tesseract"
    finally:
        loader.close()
    assert len(kinds) >= 2, kinds
    out = capsys.readouterr().out
    assert "device_assert: answered after recovery" in out and "oom: answered after recovery" in out
