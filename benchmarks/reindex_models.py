"""The model ``benchmarks/rotation.py`` reindexes: its rotation table, with a blind index.

A module of its own, so that reindex worker processes import it by name.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_fieldcrypt import BLIND_INDEX_LENGTH, BlindIndex, encrypted_hybrid, normalize_email


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
