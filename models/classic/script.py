"""Which writing system a page is in: from the letters an engine recognised, or from Tesseract's
orientation-and-script detection (OSD) where its data is installed."""
from __future__ import annotations

import importlib.util
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from models.classic.tessdata import find_tessdata

# Tesseract language data -> the script it reads. Languages not listed count as "unknown script"
# and are never dropped from a page.
_SCRIPT_LANGUAGES = {
    "Latin": "afr aze bos bre cat ceb ces cos cym dan deu enm eng epo est eus fao fil fin fra frk frm fry gla "
             "gle glg hat hrv hun ind isl ita jav lat lav lit ltz mlt mri msa nld nor oci pol por que ron slk slv "
             "spa sqi srp_latn sun swa swe ton tur uzb vie yor",
    "Cyrillic": "bak bel bul kaz kir mkd mon rus srp tat tgk ukr uzb_cyrl",
    "Greek": "ell grc",
    "Arabic": "ara fas pus snd uig urd",
    "Hebrew": "heb yid",
    "Han": "chi_sim chi_sim_vert chi_tra chi_tra_vert",
    "Japanese": "jpn jpn_vert",
    "Hangul": "kor kor_vert",
    "Devanagari": "hin mar nep san",
    "Thai": "tha",
}
LANGUAGE_SCRIPTS = {lang: script for script, langs in _SCRIPT_LANGUAGES.items() for lang in langs.split()}

# Unicode character-name prefixes -> script names as Tesseract's OSD spells them.
_NAME_SCRIPTS = {"CJK": "Han", "HIRAGANA": "Japanese", "KATAKANA": "Japanese", "HANGUL": "Hangul"}
_OSD_SCRIPTS = {"Katakana": "Japanese", "Hiragana": "Japanese", "Fraktur": "Latin"}


def language_script(language: str) -> str | None:
    return LANGUAGE_SCRIPTS.get(language)


def letter_script(char: str) -> str | None:
    if not char.isalpha():
        return None
    head = unicodedata.name(char, "").split(" ", 1)[0]
    return _NAME_SCRIPTS.get(head, head.capitalize() or None)


def script_letters(words: Iterable[str], min_letters: int = 3) -> Counter[str]:
    """Letters per script, counted in words of at least `min_letters` letters: the one- and two-letter
    "words" an engine finds in tables, stamps and noise come out in whichever script fits the blot."""
    counts: Counter[str] = Counter()
    for word in words:
        letters = [letter_script(ch) for ch in word if ch.isalpha()]
        if len(letters) >= min_letters:
            counts.update(s for s in letters if s)
    return counts


def dominant_script(counts: Counter[str], share: float = 0.8, min_letters: int = 12) -> str | None:
    """The script of at least `share` of the letters; None on mixed pages or with fewer letters than
    three or four words hold (too little to tell)."""
    total = sum(counts.values())
    if total < min_letters:
        return None
    script, count = counts.most_common(1)[0]
    return script if count >= share * total else None


def unread_share(lines: list[str]) -> float:
    """Share of the word slots in recognised lines that hold no letter or digit. An engine that drops the
    letters it does not know (RapidOCR on Cyrillic) leaves the spaces around them: "от 24 октября" comes
    back as " 24 ", three slots of which two are empty."""
    slots = empty = 0
    for text in lines:
        for token in text.split(" "):
            slots += 1
            empty += not any(ch.isalnum() for ch in token)
    return empty / slots if slots else 0.0


def split_by_script(languages: list[str], script: str) -> tuple[list[str], list[str]]:
    """The languages that read `script` and the languages known to read another script."""
    own = [lang for lang in languages if language_script(lang) == script]
    other = [lang for lang in languages if language_script(lang) not in (script, None)]
    return own, other


class OsdScriptDetector:
    """Tesseract's orientation-and-script detection: a fraction of a second per page, used only where an
    engine's own output cannot say (RapidOCR's models drop letters they do not know)."""

    MAX_SIDE = 2000  # OSD needs letters, not resolution: big scans are shrunk first, which keeps it fast
    MIN_CONFIDENCE = 2.0  # below this OSD's answer on receipts and tables was a guess

    def __init__(self, tessdata: Path):
        import tesserocr

        self._api: Any = tesserocr.PyTessBaseAPI(path=str(tessdata) + "/", lang="osd",
                                                 psm=tesserocr.PSM.OSD_ONLY, oem=tesserocr.OEM.TESSERACT_ONLY)

    @classmethod
    def create(cls) -> OsdScriptDetector | None:
        """None where tesserocr or `osd.traineddata` is not installed."""
        if importlib.util.find_spec("tesserocr") is None:
            return None
        tessdata = find_tessdata()
        if tessdata is None or not (tessdata / "osd.traineddata").exists():
            return None
        return cls(tessdata)

    def detect(self, image: Image.Image) -> str | None:
        """The page's script, or None when OSD is not confident."""
        scale = self.MAX_SIDE / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        try:
            self._api.SetImage(image)
            found = self._api.DetectOrientationScript()
        except RuntimeError:  # too few characters to tell
            return None
        finally:
            self._api.Clear()
        if not found or found.get("script_conf", 0.0) < self.MIN_CONFIDENCE:
            return None
        name = found.get("script_name") or ""
        return _OSD_SCRIPTS.get(name, name) or None

    def close(self) -> None:
        self._api.End()
