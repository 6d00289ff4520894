"""What a batch reads: files, folders (walked in name order) and zips (folders inside kept in the names).

A Source is named as the user sees it ("scans/2024/a.png") and read only when needed, so a job over
many large files never holds them all in memory.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utils.documents.reader import EXTENSIONS


class InputError(ValueError):
    """An input that cannot be read at all; one line naming it."""


@dataclass(frozen=True)
class Source:
    name: str
    path: str | None = None  # a file on disk (the command line)
    member: str | None = None  # an entry of the zip at `path`
    data: bytes | None = None  # an upload held in memory (no path)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise InputError(f"{self.name}: no data")
        try:
            if self.member is None:
                return Path(self.path).read_bytes()
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.member)
        except FileNotFoundError:
            raise InputError(f"{self.name}: no such file ({self.path})") from None
        except KeyError:
            raise InputError(f"{self.name}: no longer in {self.path}") from None
        except (OSError, zipfile.BadZipFile) as exc:
            raise InputError(f"{self.name}: cannot be read ({exc})") from None


def _supported(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in EXTENSIONS


def _zip_entries(archive: zipfile.ZipFile, max_bytes: int) -> tuple[list[zipfile.ZipInfo], list[str]]:
    """Supported documents inside, in name order; notes for what was left out."""
    entries, notes = [], []
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if not _supported(info.filename):
            notes.append(f"{info.filename}: skipped (not an image or PDF)")
        elif info.file_size > max_bytes:
            notes.append(f"{info.filename}: skipped ({info.file_size / 2**20:.1f} MB, over the file size limit)")
        else:
            entries.append(info)
    return entries, notes


def is_zip(name: str, data: bytes | None = None) -> bool:
    return name.lower().endswith(".zip") or (data is not None and data[:4] == b"PK\x03\x04")


def expand_upload(name: str, data: bytes, max_bytes: int) -> tuple[list[Source], list[str]]:
    """An uploaded file: itself, or every supported document inside it when it is a zip."""
    if not is_zip(name, data):
        return [Source(name=name, data=data)], []
    stem = PurePosixPath(name).stem
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries, notes = _zip_entries(archive, max_bytes)
            sources = [Source(name=f"{stem}/{info.filename}", data=archive.read(info)) for info in entries]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{name}: not a readable zip ({exc})") from None
    if not sources:
        notes.append(f"{name}: no images or PDFs inside")
    return sources, [f"{name}: {note}" for note in notes]


def expand_paths(inputs: Sequence[str], max_bytes: int) -> tuple[list[Source], list[str]]:
    """Command-line inputs -> sources in the order given (folders and zips in name order), and one line
    for each input that was skipped or could not be read."""
    sources: list[Source] = []
    notes: list[str] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _supported(p.name)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                notes.append(f"{given}: no images or PDFs in this folder")
            sources += [Source(name=f"{path.resolve().name}/{p.relative_to(path).as_posix()}", path=str(p))
                        for p in found]
        elif path.is_file() and is_zip(path.name):
            try:
                with zipfile.ZipFile(path) as archive:
                    entries, skipped = _zip_entries(archive, max_bytes)
            except (zipfile.BadZipFile, OSError) as exc:
                notes.append(f"{given}: not a readable zip ({exc})")
                continue
            notes += [f"{given}: {note}" for note in skipped]
            sources += [Source(name=f"{path.stem}/{info.filename}", path=str(path), member=info.filename)
                        for info in entries]
        else:
            # Missing files and unsupported types are reported by the reader with its usual one line.
            sources.append(Source(name=path.name, path=str(path)))
    return sources, notes
