"""Field extractions kept in the store, with the values people corrected by hand.

An extraction is written once, as the engine gave it, and never changed; a correction of one field is
a row of its own beside it, the newest per field counting. Reopening a document with the same template
and model finds the newest extraction and its corrections, after a refresh or a restart alike.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from utils.extraction.result import Correction, Extraction, Value

if TYPE_CHECKING:
    from utils.documents.reader import Document
    from utils.store.store import Store


@dataclass(frozen=True)
class StoredExtraction:
    id: int
    digest: str
    document_name: str
    created_at: datetime
    extraction: Extraction  # as the engine gave it
    corrections: list[Correction]  # oldest first; per field the last one counts


class Extractions:
    """The store's extractions and field_corrections tables; reached as Store.extractions."""

    def __init__(self, store: Store):
        self._store = store

    def save(self, document: Document, extraction: Extraction, name: str | None = None) -> int:
        """Keep an extraction of `document` (and a copy of the document); returns its id."""
        self._store.keep(document, name)
        with self._store.transaction() as con:
            cursor = con.execute(
                """INSERT INTO extractions (digest, document_name, template, model, extraction, created_at)
                   VALUES (?, ?, ?, ?, ?, ?)""",
                (document.digest, name or document.name, extraction.template, extraction.model,
                 extraction.model_dump_json(), time.time()))
        return int(cursor.lastrowid or 0)

    def correct(self, extraction_id: int, field: str, value: Value) -> None:
        """Keep a person's value of one field. The engine's own value drops that field's corrections,
        so the field counts as read, not corrected."""
        with self._store.transaction() as con:
            row = con.execute("SELECT extraction FROM extractions WHERE id = ?", (extraction_id,)).fetchone()
            if row is None:
                raise KeyError(f"no stored extraction {extraction_id}")
            fields = Extraction.model_validate_json(row["extraction"]).fields
            if field not in fields:
                raise KeyError(f"no field '{field}' in stored extraction {extraction_id}")
            if value == fields[field].value:
                con.execute("DELETE FROM field_corrections WHERE extraction_id = ? AND field = ?",
                            (extraction_id, field))
            else:
                con.execute("INSERT INTO field_corrections (extraction_id, field, value, created_at) "
                            "VALUES (?, ?, ?, ?)", (extraction_id, field, json.dumps(value, ensure_ascii=False),
                                                    time.time()))

    def get(self, extraction_id: int) -> StoredExtraction | None:
        with self._store.connect() as con:
            row = con.execute("SELECT * FROM extractions WHERE id = ?", (extraction_id,)).fetchone()
            return self._stored(con, row) if row is not None else None

    def latest(self, digest: str, template: str, model: str) -> StoredExtraction | None:
        """The newest extraction of this document with this template and model."""
        with self._store.connect() as con:
            row = con.execute(
                """SELECT * FROM extractions WHERE digest = ? AND template = ? AND model = ?
                   ORDER BY created_at DESC, id DESC LIMIT 1""", (digest, template, model)).fetchone()
            return self._stored(con, row) if row is not None else None

    @staticmethod
    def _stored(con, row) -> StoredExtraction:
        extraction = Extraction.model_validate_json(row["extraction"])
        values = extraction.values()
        corrections = []
        for correction in con.execute("SELECT field, value, created_at FROM field_corrections WHERE extraction_id = ? "
                                      "ORDER BY created_at, id", (row["id"],)):
            after = json.loads(correction["value"])
            at = datetime.fromtimestamp(correction["created_at"], UTC).isoformat(timespec="seconds")
            corrections.append(Correction(field=correction["field"], before=values.get(correction["field"]),
                                          after=after, at=at))
            values[correction["field"]] = after
        return StoredExtraction(id=row["id"], digest=row["digest"], document_name=row["document_name"],
                                created_at=datetime.fromtimestamp(row["created_at"], UTC), extraction=extraction,
                                corrections=corrections)
