"""What a user sets in the UI and expects to keep: a small JSON file under data/, never config.yaml.

config.yaml is the project's, under version control; this file is this machine's. Today it holds the
local snapshot folder chosen for a model; the app applies it when it starts, until it is changed.
OCR_LOCAL_SETTINGS points elsewhere (tests, a second instance).
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from pydantic import BaseModel, ValidationError

from utils.config import ROOT

ENV_PATH = "OCR_LOCAL_SETTINGS"
DEFAULT_PATH = ROOT / "data" / "local_settings.json"
_write_lock = threading.Lock()  # sessions of one server changing it at once: one write at a time


class LocalSettingsError(ValueError):
    """The file cannot be read; one line naming it."""


class LocalSettings(BaseModel):
    model_paths: dict[str, str] = {}  # model name -> local snapshot folder


def settings_path() -> Path:
    configured = os.environ.get(ENV_PATH)
    return Path(configured).expanduser() if configured else DEFAULT_PATH


def load(path: Path | None = None) -> LocalSettings:
    """The saved settings; empty when there is no file yet."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LocalSettings()
    except OSError as exc:
        raise LocalSettingsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return LocalSettings.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise LocalSettingsError(f"{path}: not valid local settings ({first['msg']}); "
                                 "fix or delete the file") from None


def _save(settings: LocalSettings, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a crash mid-write never leaves half a file behind.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".part", encoding="utf-8") as handle:
        handle.write(settings.model_dump_json(indent=2))
    os.replace(handle.name, path)


def set_model_path(model: str, folder: str | None, path: Path | None = None) -> None:
    """Remember `folder` as `model`'s snapshot (None: forget it, back to the Hugging Face cache)."""
    path = path or settings_path()
    with _write_lock:
        try:
            settings = load(path)
        except LocalSettingsError:
            settings = LocalSettings()  # a damaged file is replaced by the user's new choice
        paths = dict(settings.model_paths)
        if folder is None:
            paths.pop(model, None)
        else:
            paths[model] = folder
        _save(settings.model_copy(update={"model_paths": paths}), path)
