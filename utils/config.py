"""Settings in one validated object: config.yaml, optionally overlaid by a profile file.

Every value is checked on load; a bad one is reported as `file: key.path: what was expected`.
"""
from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from models.registry import EntryError, ModelSpec, Profile, check_entry

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config.yaml"
CPU_FALLBACK_CONFIG = ROOT / "config_cpu_fallback.yaml"
CONFIG_ENV = "OCR_CONFIG"  # another registry and settings file in place of config.yaml (e.g. one with servers)


def config_path() -> Path:
    """The settings file the app, CLI and API start from: $OCR_CONFIG, else config.yaml."""
    chosen = os.environ.get(CONFIG_ENV, "").strip()
    return Path(chosen).expanduser() if chosen else DEFAULT_CONFIG


class ConfigError(ValueError):
    """A config file is unreadable or holds a bad value; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentLimits(_Strict):
    pdf_dpi: int = Field(default=200, ge=36, le=600)
    max_file_mb: float = Field(default=100, gt=0)
    max_page_pixels: int = Field(default=80_000_000, gt=0)
    max_pages: int = Field(default=300, gt=0)


class GuardSettings(_Strict):
    request_timeout_s: float = Field(300, gt=0)
    load_timeout_s: float = Field(900, gt=0)
    probe_timeout_s: float = Field(90, gt=0)
    fatal_limit: int = Field(3, ge=1)
    fatal_window_s: float = Field(600, gt=0)
    max_resident_models: int = Field(1, ge=1)
    # After an out-of-memory error the request is retried at the next smaller pixel budget, then token cap.
    oom_pixel_steps: list[PositiveInt] = Field(default_factory=lambda: [1_003_520, 501_760, 250_880])
    oom_token_steps: list[PositiveInt] = Field(default_factory=lambda: [2048, 1024, 512])


class StoreSettings(_Strict):
    """The results store: a SQLite file, and the kept source documents (for page images) beside it."""

    path: str = "data/results.db"  # relative paths are under the project folder
    files_dir: str | None = None  # None: "files" beside the database
    max_files_mb: float = Field(default=2048, ge=0)  # kept documents beyond this are dropped, least recently used first


class Settings(_Strict):
    default_models: list[str]
    documents: DocumentLimits = DocumentLimits()
    store: StoreSettings = StoreSettings()
    profile: Profile = Profile()
    guard: GuardSettings = GuardSettings()
    models: dict[str, ModelSpec]

    @model_validator(mode="after")
    def _defaults_exist(self) -> Settings:
        missing = [m for m in self.default_models if m not in self.models]
        if missing:
            raise ValueError(f"default_models names unknown models {missing}; expected keys of models")
        return self

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise KeyError(f"unknown model '{name}'; known: {', '.join(self.models)}")
        return self.models[name]


def _deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.name}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a mapping at the top level")
    return data


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        got_txt = "" if isinstance(got, dict) else f", got {got!r}"
        lines.append(f"{source}: {key}: {err['msg']}{got_txt}")
    return "; ".join(lines)


def load_settings(path: str | Path | None = None, overlay: str | Path | None = None) -> Settings:
    """Read, overlay and validate. Raises ConfigError with the offending key."""
    path = Path(path) if path else config_path()
    data = _read_yaml(path)
    source = path.name
    if overlay:
        overlay = Path(overlay)
        data = _deep_merge(data, _read_yaml(overlay))
        source = f"{path.name}+{overlay.name}"
    return _validated(data, source)


def with_overlay(settings: Settings, overlay: str | Path) -> Settings:
    """Settings already loaded (and perhaps changed in code) overlaid with a profile file, validated again."""
    overlay = Path(overlay)
    return _validated(_deep_merge(settings.model_dump(), _read_yaml(overlay)), f"settings+{overlay.name}")


def with_backend(settings: Settings, model: str, backend: str | None = None, base_url: str | None = None,
                 concurrency: int | None = None) -> Settings:
    """Settings with `model` run elsewhere: `backend` ("local" or "openai"), the server's base URL (a
    comma-separated list for replicas) and its concurrency limit replacing those in config.yaml.
    Validated again; a bad value is a ConfigError naming the key."""
    data = settings.model_dump()
    entry = data["models"][model]
    entry["backend"] = backend or entry["backend"]
    if base_url is not None or concurrency is not None:
        server = dict(entry.get("server") or {})
        if base_url is not None:
            server["base_url"] = [url.strip() for url in base_url.split(",") if url.strip()]
        if concurrency is not None:
            server["concurrency"] = concurrency
        entry["server"] = server
    return _validated(data, "command line")


def _validated(data: dict, source: str) -> Settings:
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None
    for name, spec in settings.models.items():
        try:
            check_entry(spec)
        except EntryError as exc:
            raise ConfigError(f"{source}: models.{name}.{exc}") from None
    return settings


@lru_cache(maxsize=4)
def cached_settings(profile: Literal["default", "cpu_fallback"] = "default") -> Settings:
    if profile == "cpu_fallback":
        return load_settings(config_path(), CPU_FALLBACK_CONFIG)
    return load_settings(config_path())
