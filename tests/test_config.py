from pathlib import Path

import pytest
import yaml

from utils.config import DEFAULT_CONFIG, ConfigError, cached_settings, load_settings


def write_config(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    mutate(data)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_shipped_config_and_cpu_profile_validate():
    settings = cached_settings()
    assert {"tesseract", "rapidocr"} <= set(settings.models)
    assert settings.default_models[0] == "tesseract"
    cpu = cached_settings("cpu_fallback")
    assert cpu.profile.name == "cpu" and cpu.profile.device == "cpu" and cpu.profile.dtype == "float32"
    assert cpu.models.keys() == settings.models.keys()


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["documents"].update(pdf_dpi="high"), "documents.pdf_dpi: Input should be a valid integer"),
    (lambda d: d["documents"].update(pdf_dpi=5), "documents.pdf_dpi: Input should be greater than or equal to 36"),
    (lambda d: d["profile"].update(device="tpu"), "profile.device: Input should be 'auto', 'cuda' or 'cpu'"),
    (lambda d: d["models"]["tesseract"].update(tasks=["poetry"]), "models.tesseract.tasks: Value error, expected"),
    (lambda d: d["models"]["tesseract"].update(colour="red"), "models.tesseract.colour: Extra inputs are not permitted"),
    (lambda d: d["models"]["tesseract"]["options"].update(psm=42), "models.tesseract.options.psm: Input should be less"),
    (lambda d: d["models"]["tesseract"]["options"].update(languages="rus eng"), "models.tesseract.options.languages"),
    (lambda d: d["models"]["tesseract"].update(adapter="nope"), "models.tesseract.adapter: expected a module"),
    (lambda d: d["models"]["rapidocr"].update(tasks=["markdown"]), "models.rapidocr.tasks: adapter rapidocr_ocr supports"),
    (lambda d: d.update(default_models=["ghost"]), "default_models names unknown models ['ghost']"),
])
def test_bad_value_is_reported_with_its_key(tmp_path, mutate, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, mutate))
    assert expected in str(info.value)
    assert str(info.value).startswith("config.yaml: ")


def test_overlay_is_validated_too(tmp_path):
    overlay = tmp_path / "cpu.yaml"
    overlay.write_text("profile:\n  threads: -1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config.yaml\+cpu.yaml: profile.threads: Input should be greater"):
        load_settings(DEFAULT_CONFIG, overlay)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_settings(broken)
