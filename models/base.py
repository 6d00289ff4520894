"""What every adapter provides. Adapters know their model and nothing of processes or UI."""
from __future__ import annotations

import importlib
from typing import Callable, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict

from utils.config import ModelSpec, Profile
from utils.result import PageResult


class Availability(BaseModel):
    available: bool
    status: str  # "ready", "not installed", "not downloaded", "no server", ...
    reason: str = ""
    fix: str | None = None  # the exact command or step that makes it available


class RunOptions(BaseModel):
    """Per-request knobs; the supervisor lowers the budgets when retrying after OOM."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    max_pixels: int | None = None
    max_new_tokens: int | None = None


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


TokenCallback = Callable[[str], None]


class ModelAdapter:
    """Subclasses set Options and supported_tasks and implement availability/load/run."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    supported_tasks: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, name: str, spec: ModelSpec, profile: Profile):
        self.name = name
        self.spec = spec
        self.profile = profile
        self.options = self.Options.model_validate(spec.options)
        self.device = "cpu"
        self.dtype: str | None = None

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        """Must not load weights, download, or initialise a GPU."""
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def run(self, image: Image.Image, task: str, options: RunOptions,
            on_token: TokenCallback | None = None) -> PageResult:
        raise NotImplementedError

    def close(self) -> None:
        """Release what load() took; the adapter is not used again afterwards."""

    def result(self, task: str, **fields) -> PageResult:
        return PageResult(model=self.name, task=task, device=self.device, dtype=self.dtype,
                          profile=self.profile.name, **fields)


def adapter_class(spec: ModelSpec) -> type[ModelAdapter]:
    return importlib.import_module(f"models.{spec.adapter}").ADAPTER
