"""Qwen2-VL / Qwen3-VL adapter on tiny random checkpoints, loaded by path like real weights."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.qwen_vl import ADAPTER, QwenVLOptions, pixel_budget
from models.registry import ModelSpec, Profile
from models.vlm import weights
from tests.conftest_vlm import CPU, RunOptions, fake_generate, page, spec, spy_generate, tiny_models  # noqa: F401

QWEN2_REV = "895c3a49bc3fa70a340399125c650a463535e71c"
FAMILY = {"qwen_vl_2b": "qwen2_vl", "qwen3_vl_2b": "qwen3_vl"}
UNIT = {"qwen_vl_2b": 28, "qwen3_vl_2b": 32}


def make(tiny_models, name, **options):  # noqa: F811
    unit = UNIT[name]
    options = {"family": FAMILY[name], "min_pixels": 4 * unit * unit, "max_pixels": 48 * unit * unit, **options}
    adapter = ADAPTER(name, spec("qwen_vl", tiny_models[name], **options), CPU)
    adapter.load()
    return adapter


@pytest.fixture(scope="module", params=["qwen_vl_2b", "qwen3_vl_2b"])
def adapter(request, tiny_models):  # noqa: F811
    adapter = make(tiny_models, request.param)
    yield adapter
    adapter.close()


def decoded_prompt(adapter, inputs) -> str:
    return adapter._processor.tokenizer.decode(inputs["input_ids"][0])


# ---------------------------------------------------------------- options and availability


def test_options_default_per_family():
    qwen2 = QwenVLOptions(family="qwen2_vl")
    assert (qwen2.min_pixels, qwen2.max_pixels) == (512 * 28 * 28, 2048 * 28 * 28)
    qwen3 = QwenVLOptions(family="qwen3_vl")
    assert (qwen3.min_pixels, qwen3.max_pixels) == (512 * 32 * 32, 2048 * 32 * 32)
    with pytest.raises(ValueError, match="min_pixels"):
        QwenVLOptions(family="qwen2_vl", min_pixels=10_000, max_pixels=5_000)
    with pytest.raises(ValueError, match="unknown tasks"):
        QwenVLOptions(family="qwen2_vl", prompts={"translate": "x"})
    with pytest.raises(ValueError):
        QwenVLOptions(family="qwen2_vl", unexpected=1)
    # What the loader stores after validation round-trips unchanged.
    assert QwenVLOptions.model_validate(qwen3.model_dump()) == qwen3


def test_run_options_lower_the_pixel_budget():
    options = QwenVLOptions(family="qwen2_vl", min_pixels=100 * 784, max_pixels=1000 * 784)
    assert pixel_budget(options, RunOptions()) == (100 * 784, 1000 * 784)
    assert pixel_budget(options, RunOptions(max_pixels=50 * 784)) == (50 * 784, 50 * 784)


def test_availability_not_installed(monkeypatch):
    monkeypatch.setattr(weights, "missing_packages", lambda *m: ["qwen_vl_utils"])
    status = ADAPTER.availability(ModelSpec(adapter="qwen_vl", label="q", tasks=["text"],
                                            hub_id="Qwen/Qwen2-VL-2B-Instruct", options={"family": "qwen2_vl"}))
    assert (status.available, status.status) == (False, "not installed")


def test_availability_not_downloaded_gives_the_exact_command(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    model = ModelSpec(adapter="qwen_vl", label="q", tasks=["text"], hub_id="Qwen/Qwen2-VL-2B-Instruct",
                      revision=QWEN2_REV, options={"family": "qwen2_vl"})
    status = ADAPTER.availability(model)
    assert (status.available, status.status) == (False, "not downloaded")
    assert status.fix == f"hf download Qwen/Qwen2-VL-2B-Instruct --revision {QWEN2_REV}"
    with pytest.raises(FileNotFoundError, match="hf download"):
        ADAPTER("q", model, CPU).load()  # never downloads at load


def test_availability_of_an_incomplete_local_dir(tmp_path, tiny_models):  # noqa: F811
    shutil.copy(tiny_models["qwen_vl_2b"] / "config.json", tmp_path / "config.json")
    status = ADAPTER.availability(spec("qwen_vl", tmp_path, family="qwen2_vl"))
    assert status.status == "not downloaded" and "no weights" in status.reason
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    assert "model-1.safetensors" in ADAPTER.availability(spec("qwen_vl", tmp_path, family="qwen2_vl")).reason


def test_loads_from_the_hf_cache_snapshot(tmp_path, monkeypatch, tiny_models):  # noqa: F811
    repo = tmp_path / "models--Qwen--Qwen2-VL-2B-Instruct"
    shutil.copytree(tiny_models["qwen_vl_2b"], repo / "snapshots" / QWEN2_REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(QWEN2_REV)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    model = ModelSpec(adapter="qwen_vl", label="q", tasks=["text"], hub_id="Qwen/Qwen2-VL-2B-Instruct",
                      revision=QWEN2_REV, options={"family": "qwen2_vl", "max_pixels": 16 * 784, "min_pixels": 4 * 784})
    status = ADAPTER.availability(model)
    assert status.status == "ready" and QWEN2_REV in status.reason
    adapter = ADAPTER("qwen_vl_2b", model, CPU)
    adapter.load()
    result = adapter.run(page(), "text", RunOptions(max_new_tokens=3))
    assert result.tokens == 3
    adapter.close()


def test_availability_imports_no_torch(tiny_models):  # noqa: F811
    code = (
        "import sys\n"
        "from models.qwen_vl import ADAPTER as Q\n"
        "from models.dots_ocr import ADAPTER as D\n"
        "from tests.conftest_vlm import spec\n"
        f"assert Q.availability(spec('qwen_vl', {str(tiny_models['qwen_vl_2b'])!r}, family='qwen2_vl')).available\n"
        f"assert D.availability(spec('dots_ocr', {str(tiny_models['dots_ocr'])!r})).available\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_download_weights_reports_progress(tmp_path, monkeypatch):
    calls = {}

    def snapshot_download(repo_id, **kwargs):
        calls.update(kwargs, repo_id=repo_id)
        bar = kwargs["tqdm_class"](total=10, desc="Downloading bytes", file=io.StringIO())
        bar.update(4)
        bar.update(6)
        bar.close()
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    model = ModelSpec(adapter="qwen_vl", label="q", tasks=["text"], hub_id="Qwen/Qwen2-VL-2B-Instruct",
                      revision=QWEN2_REV, options={"family": "qwen2_vl"})
    seen = []
    assert weights.download_weights(model, lambda *progress: seen.append(progress)) == tmp_path
    assert (calls["repo_id"], calls["revision"], calls["local_dir"]) == ("Qwen/Qwen2-VL-2B-Instruct", QWEN2_REV, None)
    assert seen == [("Downloading bytes", 4.0, 10.0), ("Downloading bytes", 10.0, 10.0)]


def test_family_must_match_the_checkpoint(tiny_models):  # noqa: F811
    with pytest.raises(ValueError, match="qwen2_vl checkpoint"):
        ADAPTER("x", spec("qwen_vl", tiny_models["qwen_vl_2b"], family="qwen3_vl"), CPU).load()


# ---------------------------------------------------------------- prompts, template, pixels


def test_chat_template_and_task_prompts(adapter):
    family = adapter.options.family
    text_inputs, _ = adapter.prepare(page(), adapter.prompt_for("text", RunOptions()), RunOptions())
    prompt = decoded_prompt(adapter, text_inputs)
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if family == "qwen2_vl" else ""
    assert prompt.startswith(system + "<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert prompt.endswith("<|vision_end|>Please output only the text content from the image without any "
                           "additional descriptions or formatting.<|im_end|>\n<|im_start|>assistant\n")
    markdown = adapter.prompt_for("markdown", RunOptions())
    assert (markdown == "qwenvl markdown") == (family == "qwen3_vl")
    layout = adapter.prompt_for("layout", RunOptions())
    assert layout.startswith("Spotting all the text in the image with line-level") == (family == "qwen3_vl")
    assert ("<|box_start|>" in layout) == (family == "qwen2_vl")  # Qwen2-VL: its own grounding markup
    assert adapter.prompt_for("prompt", RunOptions(prompt="What is the total?")) == "What is the total?"
    with pytest.raises(ValueError, match="RunOptions.prompt"):
        adapter.prompt_for("prompt", RunOptions())


@pytest.mark.parametrize("size", [(600, 400), (2480, 3508), (10, 40), (900, 60)])
def test_visual_tokens_stay_inside_the_pixel_budget(adapter, size):
    unit = UNIT[adapter.name]
    for run in (RunOptions(), RunOptions(max_pixels=8 * unit * unit)):
        min_pixels, max_pixels = pixel_budget(adapter.options, run)
        inputs, (width, height) = adapter.prepare(page(*size), "x", run)
        t, h, w = inputs["image_grid_thw"][0].tolist()
        tokens = t * h * w // 4
        assert width % unit == 0 and height % unit == 0
        assert (h * (unit // 2), w * (unit // 2)) == (height, width)  # the processor did not resize again
        assert min_pixels // (unit * unit) <= tokens <= max_pixels // (unit * unit)
        image_pad = adapter._processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        assert int((inputs["input_ids"] == image_pad).sum()) == tokens


def test_extreme_aspect_ratio_is_refused_clearly(adapter):
    with pytest.raises(ValueError, match="aspect ratio"):
        adapter.run(page(4200, 20), "text", RunOptions())


# ---------------------------------------------------------------- generation


def test_generate_gets_greedy_settings_and_the_task_cap(adapter):
    captured: dict = {}
    original = spy_generate(adapter._model, captured, max_new_tokens=4)
    try:
        adapter.run(page(), "markdown", RunOptions(), on_token=lambda piece: None)
        assert captured["do_sample"] is False
        assert captured["max_new_tokens"] == adapter.options.max_new_tokens["markdown"]
        assert all(captured[k] is None for k in ("temperature", "top_p", "top_k"))
        assert captured["streamer"] is not None and captured["stopping_criteria"]
        assert "repetition_penalty" not in captured  # None in options: the checkpoint's own value
        captured.clear()
        adapter.run(page(), "text", RunOptions(max_new_tokens=9))
        assert captured["max_new_tokens"] == 9 and "streamer" not in captured
    finally:
        adapter._model.generate = original


def test_repetition_penalty_from_options(tiny_models):  # noqa: F811
    adapter = make(tiny_models, "qwen3_vl_2b", repetition_penalty=1.1)
    captured: dict = {}
    spy_generate(adapter._model, captured, max_new_tokens=2)
    adapter.run(page(), "text", RunOptions())
    assert captured["repetition_penalty"] == 1.1


def test_streaming_and_result_fields(tiny_models):  # noqa: F811
    adapter = make(tiny_models, "qwen_vl_2b", loop_guard={"enabled": False})
    pieces: list[str] = []
    result = adapter.run(page(), "prompt", RunOptions(prompt="Describe.", max_new_tokens=24), on_token=pieces.append)
    assert "".join(pieces).strip() == result.text and len(pieces) > 1
    assert (result.model, result.task, result.device, result.dtype) == ("qwen_vl_2b", "prompt", "cpu", "float32")
    assert result.tokens == 24 and result.truncated and "token cap" in result.warnings[-1]
    assert (result.width, result.height) == (600, 400) and result.seconds > 0


# An A4 page at 200 dpi and a text line on it at (200,300)-(1400,360) page pixels; on the models'
# 0..1000 grid relative to the image that line is (121,128)-(846,154).
A4 = (1654, 2339)
LINE = (200, 300, 1400, 360)
GRID = (121, 128, 846, 154)


def test_qwen2_boxes_are_on_a_1000_grid_relative_to_the_image(tiny_models):  # noqa: F811
    """Finding 1: Qwen2-VL's boxes are not the resized input's pixels (that came with Qwen2.5-VL)."""
    adapter = make(tiny_models, "qwen_vl_2b", min_pixels=512 * 784, max_pixels=2048 * 784)
    x1, y1, x2, y2 = GRID
    fake_generate(adapter._model, adapter._processor.tokenizer,
                  f'[{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "text_content": "Total"}}]')
    result = adapter.run(page(*A4), "layout", RunOptions())
    assert [b.text for b in result.blocks] == ["Total"]
    assert result.blocks[0].bbox == pytest.approx(LINE, abs=3)  # read as input pixels: (188,202)-(1315,243)


def test_qwen2_native_grounding_markup_survives_decoding(tiny_models):  # noqa: F811
    """Finding 2: the model's own box markup is special tokens; decoded without them no block remains."""
    adapter = make(tiny_models, "qwen_vl_2b", min_pixels=512 * 784, max_pixels=2048 * 784)
    tokenizer = adapter._processor.tokenizer
    x1, y1, x2, y2 = GRID
    reply = (f"<|object_ref_start|>Total<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>\n"
             "<|object_ref_start|>Paid<|object_ref_end|><|box_start|>(121,200),(300,220)<|box_end|>")
    fake_generate(adapter._model, tokenizer, reply)
    result = adapter.run(page(*A4), "layout", RunOptions())
    assert [b.text for b in result.blocks] == ["Total", "Paid"]
    assert result.blocks[0].bbox == pytest.approx(LINE, abs=3)
    assert result.raw == reply and result.text == "Total\nPaid"
    # The layout prompt asks for that markup in the model's own special tokens, not Qwen2.5-VL's JSON.
    prompt = adapter.prompt_for("layout", RunOptions())
    inputs, _ = adapter.prepare(page(), prompt, RunOptions())
    specials = tokenizer.convert_tokens_to_ids(["<|object_ref_start|>", "<|box_start|>"])
    assert all(int((inputs["input_ids"] == token).sum()) == 1 for token in specials)
    assert "JSON" not in prompt


def test_qwen3_layout_as_its_ocr_cookbook_runs_it(tiny_models):  # noqa: F811
    """Finding 3: the cookbook's spotting prompt, Python-literal answers, 8192 new tokens."""
    adapter = make(tiny_models, "qwen3_vl_2b")
    assert adapter.prompt_for("layout", RunOptions()) == (
        "Spotting all the text in the image with line-level, and output in JSON format as "
        "[{'bbox_2d': [x1, y1, x2, y2], 'text_content': 'text'}, ...].")
    assert adapter.options.max_new_tokens["layout"] == 8192
    fake_generate(adapter._model, adapter._processor.tokenizer,
                  "[{'bbox_2d': [100, 250, 500, 375], 'text_content': 'Invoice 42'}, "
                  "{'bbox_2d': [100, 400, 500, 450], 'text_content': \"O'Brien & Co\"}]")
    result = adapter.run(page(), "layout", RunOptions())
    assert [(b.bbox, b.text) for b in result.blocks] == [
        ((60.0, 100.0, 300.0, 150.0), "Invoice 42"), ((60.0, 160.0, 300.0, 180.0), "O'Brien & Co")]
    # A JSON answer still parses the same way.
    fake_generate(adapter._model, adapter._processor.tokenizer,
                  '[{"bbox_2d": [100, 250, 500, 375], "text_content": "Invoice 42"}]')
    result = adapter.run(page(), "layout", RunOptions())
    assert [(b.bbox, b.text) for b in result.blocks] == [((60.0, 100.0, 300.0, 150.0), "Invoice 42")]


def test_layout_output_without_boxes_is_kept_with_a_warning(tiny_models):  # noqa: F811
    adapter = make(tiny_models, "qwen3_vl_2b")
    fake_generate(adapter._model, adapter._processor.tokenizer, "Invoice 42")
    result = adapter.run(page(), "layout", RunOptions())
    assert result.blocks == [] and result.text == "Invoice 42"
    assert "could be parsed" in result.warnings[-1]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["qwen_vl_2b", "qwen3_vl_2b"])
def test_on_gpu_bf16_and_never_fp16_for_qwen2(tiny_models, name):  # noqa: F811
    unit = UNIT[name]
    model_spec = spec("qwen_vl", tiny_models[name], family=FAMILY[name], dtype="float16",
                      min_pixels=4 * unit * unit, max_pixels=48 * unit * unit)
    adapter = ADAPTER(name, model_spec, Profile(device="cuda"))
    adapter.load()
    result = adapter.run(page(), "text", RunOptions(max_new_tokens=8))
    assert result.device == "cuda" and result.tokens == 8
    assert result.dtype == ("bfloat16" if name == "qwen_vl_2b" else "float16")
    adapter.close()
