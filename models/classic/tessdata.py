"""Where Tesseract's language data lives and which languages it holds."""
from __future__ import annotations

import os
from pathlib import Path

TESSDATA_CANDIDATES = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
    "/opt/homebrew/share/tessdata",
)


def find_tessdata(configured: str | None = None) -> Path | None:
    for candidate in (configured, os.environ.get("TESSDATA_PREFIX"), *TESSDATA_CANDIDATES):
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*.traineddata")):
            return Path(candidate)
    return None


def installed_languages(tessdata: Path) -> list[str]:
    """Recognition languages in the folder; `osd` (orientation and script detection) is not one."""
    return sorted(p.stem for p in tessdata.glob("*.traineddata") if p.stem != "osd")


def missing_languages(languages: str, tessdata: Path) -> list[str]:
    return [lang for lang in languages.split("+") if not (tessdata / f"{lang}.traineddata").exists()]
