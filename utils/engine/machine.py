"""What this machine offers the models apart from a GPU: cores, memory, and the engine and library versions.

Package versions come from the installed metadata, so neither torch nor transformers is imported here;
Tesseract's own version comes from tesserocr, which loads only the Tesseract library.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata

import psutil
from pydantic import BaseModel

MIB = 1024 * 1024
# The libraries whose versions decide what the engines do, in the order the System page lists them.
LIBRARIES = ("tesserocr", "rapidocr", "onnxruntime", "torch", "transformers")


class MachineInfo(BaseModel):
    cores: int | None  # logical CPUs
    physical_cores: int | None
    memory_total_mb: float
    memory_available_mb: float
    python: str
    versions: dict[str, str | None]  # "tesseract" (the engine) and LIBRARIES; None: not installed


@lru_cache(maxsize=1)
def tesseract_version() -> str | None:
    """The Tesseract library tesserocr runs (its wheel may bundle its own), e.g. "5.5.4"."""
    try:
        import tesserocr
    except ImportError:
        return None
    first_line = tesserocr.tesseract_version().splitlines()[0]  # "tesseract 5.5.4"
    return first_line.split()[-1]


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"tesseract": tesseract_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def snapshot() -> MachineInfo:
    memory = psutil.virtual_memory()
    return MachineInfo(cores=psutil.cpu_count(), physical_cores=psutil.cpu_count(logical=False),
                       memory_total_mb=round(memory.total / MIB, 1),
                       memory_available_mb=round(memory.available / MIB, 1),
                       python=platform.python_version(), versions=versions())


def process_memory_mb(pid: int | None) -> float | None:
    """Resident memory of one process (a worker), None when it is gone."""
    if pid is None:
        return None
    try:
        return round(psutil.Process(pid).memory_info().rss / MIB, 1)
    except psutil.Error:
        return None
