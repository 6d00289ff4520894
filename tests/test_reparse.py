"""`cli.py reparse`: a saved raw VLM output parsed again, without the model, as the adapter parses it.

Each model's documented box convention must land on the page within 3 px: Qwen2-VL and Qwen3-VL on a
0..1000 grid relative to the image, dots.ocr in the resized input's pixels, for an A4 page at 200 dpi
and the pixel budgets in config.yaml.
"""
from __future__ import annotations

import json

import pytest

import cli
from utils.documents.export import PAGE_FIELDS

A4 = (1654, 2339)
LINE = (200, 300, 1400, 360)  # a text line on that page, in page pixels


def grid(box, size):
    """The box on the models' 0..1000 grid, as the model writes it: whole numbers."""
    return [round(v * 1000 / size[i % 2]) for i, v in enumerate(box)]


def input_pixels(box, page, model_input):
    return [round(v * model_input[i % 2] / page[i % 2]) for i, v in enumerate(box)]


# What each model writes for that line, in its own documented format; and the input size its budget
# in config.yaml gives an A4 page (Qwen2-VL: 2048 units of 28 px; Qwen3-VL: 2048 units of 32 px;
# dots.ocr: within its 11.29 MP budget, each side rounded to 28 px).
QWEN2_GRID, QWEN3_GRID = grid(LINE, A4), grid(LINE, A4)
CASES = {
    "qwen_vl_2b": ((1064, 1484), "<|object_ref_start|>Total due<|object_ref_end|><|box_start|>"
                                 "({},{}),({},{})<|box_end|>".format(*QWEN2_GRID)),
    "qwen3_vl_2b": ((1216, 1696), "[{{'bbox_2d': [{}, {}, {}, {}], 'text_content': 'Total due'}}]".format(*QWEN3_GRID)),
    "dots_ocr": ((1652, 2352), json.dumps([{"bbox": input_pixels(LINE, A4, (1652, 2352)), "category": "Text",
                                            "text": "Total due"}])),
}


def reparse(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["reparse", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("model", CASES)
def test_each_models_box_convention_maps_to_page_pixels(tmp_path, capsys, model):
    input_size, raw = CASES[model]
    (tmp_path / "raw.txt").write_text(raw, encoding="utf-8")
    code, out, err = reparse(capsys, "--model", model, "--task", "layout", "--raw", str(tmp_path / "raw.txt"),
                             "--page-size", *map(str, A4), "--format", "json")
    assert code == 0, err
    page = json.loads(out)
    assert page["input_size"] == list(input_size)
    assert set(page) == set(PAGE_FIELDS) | {"input_size"}  # the same page object as `cli.py ocr`
    assert (page["model"], page["task"], page["page"], page["raw"]) == (model, "layout", 1, raw)
    (block,) = page["blocks"]
    assert block["text"] == "Total due" and page["text"] == "Total due"
    assert block["bbox"] == pytest.approx(LINE, abs=3)


def test_a_lowered_pixel_budget_changes_the_input_size(tmp_path, capsys):
    _, raw = CASES["dots_ocr"]
    (tmp_path / "raw.txt").write_text(raw, encoding="utf-8")
    code, out, _ = reparse(capsys, "--model", "dots_ocr", "--task", "markdown", "--raw", str(tmp_path / "raw.txt"),
                           "--page-size", *map(str, A4), "--max-pixels", "1003520")
    assert code == 0
    page = json.loads(out)
    assert page["input_size"] == [840, 1176]  # within the guard's first OOM step, 1,003,520 px
    assert page["markdown"] == "Total due"


def test_text_output_and_bad_input(tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_text("Total due<|im_end|>", encoding="utf-8")
    code, out, _ = reparse(capsys, "--model", "qwen3_vl_2b", "--task", "text", "--raw", str(raw),
                           "--page-size", "600", "400", "--format", "txt")
    assert (code, out.strip()) == (0, "Total due")

    for args, message in [
        (["--model", "tesseract", "--task", "text", "--raw", str(raw), "--page-size", "9", "9"], "no raw model output"),
        (["--model", "dots_ocr", "--task", "text", "--raw", str(tmp_path / "missing"), "--page-size", "9", "9"],
         "--raw"),
        (["--model", "dots_ocr", "--task", "text", "--raw", str(raw), "--page-size", "0", "9"], "positive"),
        (["--model", "dots_ocr", "--task", "text", "--raw", str(raw), "--page-size", "4200", "20"], "aspect ratio"),
    ]:
        code, out, err = reparse(capsys, *args)
        assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err
