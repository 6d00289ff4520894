"""What every adapter provides. Adapters know their model and nothing of processes or UI."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict

from models.contract import Availability, PageResult, RunOptions, TokenCallback
from models.registry import ModelSpec, Profile


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


OptionsT = TypeVar("OptionsT", bound=BaseModel)


class ModelAdapter(Generic[OptionsT]):
    """Subclasses set Options and supported_tasks and implement availability/load/run."""

    Options: ClassVar[type[BaseModel]] = NoOptions
    supported_tasks: ClassVar[tuple[str, ...]] = ("text",)
    # A classic engine that never uses a GPU and loads in a moment: it runs in a worker of its own,
    # kept resident, so it never waits behind a GPU model.
    cpu_engine: ClassVar[bool] = False

    def __init__(self, name: str, spec: ModelSpec, profile: Profile):
        self.name = name
        self.spec = spec
        self.profile = profile
        self.options: OptionsT = self.Options.model_validate(spec.options)  # type: ignore[assignment]
        self.device = "cpu"
        self.dtype: str | None = None

    @classmethod
    def served(cls) -> type[ModelAdapter] | None:
        """The variant of this adapter that runs the model on an OpenAI-compatible server
        (`backend: openai`), or None when the model can only run in-process."""
        return None

    @classmethod
    def availability(cls, spec: ModelSpec) -> Availability:
        """Must not load weights, download, or initialise a GPU."""
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def run(self, image: Image.Image, task: str, options: RunOptions,
            on_token: TokenCallback | None = None) -> PageResult:
        raise NotImplementedError

    def chat(self, images: Sequence[Image.Image], options: RunOptions,
             on_token: TokenCallback | None = None) -> PageResult:
        """Answer options.prompt about the images after options.history (task "chat"); VLMs only."""
        raise ValueError(f"{self.name} cannot chat: it only recognises text")

    def close(self) -> None:
        """Release what load() took; the adapter is not used again afterwards."""

    def result(self, task: str, **fields: Any) -> PageResult:
        return PageResult(model=self.name, task=task, device=self.device, dtype=self.dtype,
                          profile=self.profile.name, **fields)
