"""What the parent and a worker process say to each other over their pipe, and how errors are classed.

The parent first sends (settings, max_resident); then per request a Request and the page's raw pixels;
the worker answers with any number of Token messages and one Reply. `None` asks the worker to exit.
A Request may name a fault to inject (utils/engine/fault_injection.py): the parent decides which
request is faulted, the worker only acts on it.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal

from PIL import Image

from models.contract import PageResult, RunOptions

# CUDA runtime errors after which the context is unusable until the process exits (cudaError_t values).
STICKY_CUDA_CODES = frozenset({700, 702, 710, 716, 717, 718, 719})
NO_KERNEL_IMAGE = 209
GPU_GONE_CODES = frozenset({46, 100})  # devices unavailable, no CUDA-capable device
# After these the worker replies and exits at once: its CUDA context cannot be trusted any more.
EXIT_AFTER_REPLY = frozenset({"fatal", "unsupported_arch", "gpu_lost"})

ReplyKind = Literal["ok", "error", "oom", "fatal", "unsupported_arch", "gpu_lost"]


@dataclass
class Request:
    model: str
    task: str
    options: RunOptions
    stream: bool
    mode: str
    size: tuple[int, int]
    palette: list[int] | None
    fault: str | None = None  # a fault_injection kind the worker must act out instead of running the model
    # Further images of the request (a chat about several pages): (mode, size, palette), pixels follow the first's.
    extra: tuple[tuple[str, tuple[int, int], list[int] | None], ...] = ()


@dataclass
class Token:
    text: str


@dataclass
class Reply:
    kind: ReplyKind
    result: PageResult | None = None
    error_type: str = "builtins:RuntimeError"  # "module:qualname"; a class would make the parent import its module
    message: str = ""
    code: int | None = None
    resident: tuple[str, ...] = ()

    def exception(self) -> Exception:
        """The worker's exception type with its one-line message, if the parent knows that type already."""
        module, _, qualname = self.error_type.partition(":")
        found = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if isinstance(found, type) and issubclass(found, Exception):
            try:
                return found(self.message)
            except Exception:  # a constructor that wants more than a message
                pass
        return RuntimeError(f"{qualname.rsplit('.', 1)[-1]}: {self.message}")


def _is_out_of_memory(exc: BaseException, text: str) -> bool:
    torch = sys.modules.get("torch")
    oom_class = getattr(torch, "OutOfMemoryError", None) if torch else None
    return (isinstance(exc, MemoryError) or (oom_class is not None and isinstance(exc, oom_class))
            or "out of memory" in text.lower())


def classify(exc: BaseException) -> tuple[ReplyKind, int | None]:
    """Error class and CUDA error code: by torch.AcceleratorError.error_code when present, else by message."""
    code = getattr(exc, "error_code", None)
    code = code if isinstance(code, int) else None
    text = str(exc)
    if code == NO_KERNEL_IMAGE or "no kernel image is available" in text:
        return "unsupported_arch", code
    if code in GPU_GONE_CODES or "no CUDA-capable device is detected" in text:
        return "gpu_lost", code
    if code in STICKY_CUDA_CODES:
        return "fatal", code
    if _is_out_of_memory(exc, text):
        return "oom", code
    if "CUDA error" in text:  # any other CUDA error: the context can no longer be trusted
        return "fatal", code
    return "error", code


def _palette(image: Image.Image) -> list[int] | None:
    return image.getpalette() if image.mode in ("P", "PA") else None


def send_images(conn: Connection, request_fields: dict, images: Sequence[Image.Image]) -> None:
    """Header, then each image's raw pixels: copied once on each side, never pickled."""
    first, *rest = images
    extra = tuple((image.mode, image.size, _palette(image)) for image in rest)
    conn.send(Request(**request_fields, mode=first.mode, size=first.size, palette=_palette(first), extra=extra))
    for image in images:
        conn.send_bytes(image.tobytes())


def _image(mode: str, size: tuple[int, int], palette: list[int] | None, data: bytes) -> Image.Image:
    image = Image.frombytes(mode, size, data)
    if palette is not None:
        image.putpalette(palette)
    return image


def receive_images(conn: Connection, request: Request) -> list[Image.Image]:
    """The request's images, in the order send_images sent them."""
    headers = [(request.mode, request.size, request.palette), *request.extra]
    return [_image(*header, conn.recv_bytes()) for header in headers]
