"""The OCR page with a VLM: real status in the sidebar, a local snapshot folder, a run through the worker."""
import json

from tests.conftest_vlm import tiny_models  # noqa: F401 — the session fixture


def test_vlm_from_a_local_folder_runs_on_the_page(app_test, tiny_models, ru_en_png):  # noqa: F811
    at = app_test(timeout=240)
    at.sidebar.selectbox[0].set_value("qwen_vl_2b").run()
    assert at.sidebar.error[0].value.startswith("not downloaded:")
    assert at.sidebar.code[0].value.startswith("hf download Qwen/Qwen2-VL-2B-Instruct --revision ")

    at.sidebar.text_input[0].set_value("/nonexistent/folder")
    next(b for b in at.sidebar.button if b.label == "Use this folder").click().run()
    assert "/nonexistent/folder is not a directory" in [e.value for e in at.sidebar.error][-1]

    at.sidebar.text_input[0].set_value(str(tiny_models["qwen_vl_2b"]))
    next(b for b in at.sidebar.button if b.label == "Use this folder").click().run()
    assert not at.sidebar.error, [e.value for e in at.sidebar.error]
    assert at.sidebar.caption[0].value.startswith("Ready")

    at.file_uploader[0].upload("invoice.png", ru_en_png, "image/png").run()
    assert [o for o in next(s for s in at.selectbox if s.label == "Task").options] == [
        "Plain text", "Markdown", "Layout (boxes + categories)", "Free prompt"]
    next(b for b in at.button if b.label.startswith("Run Qwen2-VL")).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.session_state["_tab_ocr"] = "JSON"  # only the open tab is drawn
    at.run()
    shown = json.loads(at.json[0].value)
    assert shown["model"] == "qwen_vl_2b" and shown["device"] == "cpu" and shown["dtype"] == "float32"
    assert shown["text"] and shown["tokens"] > 0  # random weights: gibberish, but generated
    assert any(c.value.startswith("cpu (float32) · ") for c in at.caption)  # one line, not cut-off metric tiles
