"""The model registry's schema: one entry of config.yaml's `models:` and the adapter it names.

Each adapter validates its own `options:` block with its Options model; `check_entry` applies it,
so a bad option is reported with its key wherever settings are loaded.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.contract import ALL_TASKS
from models.vlm.server import ServerOptions

if TYPE_CHECKING:
    from models.base import ModelAdapter


class Profile(BaseModel):
    """Where and how models run: the default profile, or the CPU profile after a fallback."""

    model_config = ConfigDict(extra="forbid")
    name: str = "default"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    threads: int = Field(0, ge=0, description="torch/engine CPU threads; 0 = library default")


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(description="module name under models/ that defines ADAPTER")
    label: str
    tasks: list[str]
    hub_id: str | None = None
    revision: str | None = None
    local_path: str | None = None
    # Deadline for one page of this model, loading included; None = guard.request_timeout_s
    # (+ load_timeout_s on a cold worker). Fast engines set it low so a hang is caught quickly.
    timeout_s: float | None = Field(None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    # Where the model runs: "local" in the supervised worker process, "openai" on an OpenAI-compatible
    # server (vLLM, a gateway) described by `server:`, with the same prompts and parsing.
    backend: Literal["local", "openai"] = "local"
    server: ServerOptions | None = None

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        bad = [t for t in tasks if t not in ALL_TASKS]
        if bad or not tasks:
            raise ValueError(f"expected a non-empty list of {', '.join(ALL_TASKS)}; got {tasks}")
        return tasks


class EntryError(ValueError):
    """A registry entry is wrong; the message starts with the key path under the entry."""


def adapter_class(spec: ModelSpec) -> type[ModelAdapter]:
    cls = importlib.import_module(f"models.{spec.adapter}").ADAPTER
    if spec.backend == "openai":
        served = cls.served()
        if served is None:
            raise EntryError(f"backend: adapter {spec.adapter} runs in-process only")
        return served
    return cls


def served_model_name(spec: ModelSpec) -> str:
    """The name the server knows the model by: `vllm serve <hub id>` serves it under the hub id."""
    assert spec.server is not None
    name = spec.server.served_model_name or spec.hub_id
    if not name:
        raise EntryError("server.served_model_name: needed when the entry has no hub_id")
    return name


def _error_lines(exc: ValidationError, prefix: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        got_txt = "" if isinstance(got, dict) else f", got {got!r}"
        lines.append(f"{prefix}{key}: {err['msg']}{got_txt}")
    return "; ".join(lines)


def check_entry(spec: ModelSpec) -> None:
    """Validate `spec.options` with its adapter's Options (filling defaults in place) and its tasks
    against what the adapter supports. Raises EntryError naming the key."""
    try:
        module = importlib.import_module(f"models.{spec.adapter}")
    except ModuleNotFoundError:
        raise EntryError(f"adapter: expected a module in models/, got {spec.adapter!r}") from None
    cls = getattr(module, "ADAPTER", None)
    if cls is None:
        raise EntryError(f"adapter: models/{spec.adapter}.py defines no ADAPTER")
    try:
        spec.options = cls.Options.model_validate(spec.options).model_dump()
    except ValidationError as exc:
        raise EntryError(_error_lines(exc, "options.")) from None
    if spec.backend == "openai":
        if spec.server is None:
            raise EntryError("server: backend openai needs a server block with at least base_url")
        if cls.served() is None:
            raise EntryError(f"backend: adapter {spec.adapter} runs in-process only; backend openai "
                             "serves the vision-language models")
        served_model_name(spec)
    unsupported = [t for t in spec.tasks if t not in cls.supported_tasks]
    if unsupported:
        raise EntryError(f"tasks: adapter {spec.adapter} supports {list(cls.supported_tasks)}, got {unsupported}")
