"""Models whose jobs' labels coincide, importable by name (jobs find their targets again).

Two databases' models in one module, each with a table ``fc_twin_notes`` and its side
table; and a side table ``fc_twin_audit.notes_trigrams`` beside a column ``notes_trigrams`` of
a table ``fc_twin_audit``: one label for a substring index and an encrypted column.
"""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import Integer, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_fieldcrypt import EncryptedText, SubstringIndex, encrypted_hybrid


class MainBase(DeclarativeBase):
    pass


class ArchiveBase(DeclarativeBase):
    pass


class MainNote(MainBase):
    __tablename__ = "fc_twin_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid("body_encrypted", substring=SubstringIndex("fc_twin_note_trigrams"))


class ArchivedNote(ArchiveBase):
    __tablename__ = "fc_twin_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid("body_encrypted", substring=SubstringIndex("fc_twin_note_trigrams"))


class AuditBase(DeclarativeBase):
    pass


class AuditNote(AuditBase):
    __tablename__ = "notes"
    __table_args__: ClassVar[dict[str, str]] = {"schema": "fc_twin_audit"}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid("body_encrypted", substring=SubstringIndex("notes_trigrams"))


class Audit(AuditBase):
    __tablename__ = "fc_twin_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notes_trigrams: Mapped[str | None] = mapped_column(EncryptedText())
