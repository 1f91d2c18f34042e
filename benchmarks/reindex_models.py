"""The models ``benchmarks/rotation.py`` reindexes: its rotation table, with a blind index,
and a table of notes with a substring index.

A module of its own, so that reindex worker processes import it by name.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    SubstringIndex,
    encrypted_hybrid,
    normalize_email,
)


class Base(DeclarativeBase):
    pass


class BenchRow(Base):
    __tablename__ = "fc_bench_rotation"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email_encrypted: Mapped[str | None] = mapped_column("email", Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )


class BenchNote(Base):
    """Free text with a substring index: each owner has a side row per distinct trigram."""

    __tablename__ = "fc_bench_rotation_notes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    notes_encrypted: Mapped[str | None] = mapped_column("notes", Text)
    notes = encrypted_hybrid(
        "notes_encrypted",
        substring=SubstringIndex("fc_bench_rotation_notes_trigrams", bits=16),
    )
