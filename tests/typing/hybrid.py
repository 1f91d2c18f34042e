"""User code that mypy --strict must accept, with the types it must reveal (see test_typing.py)."""

from __future__ import annotations

from typing import reveal_type

from sqlalchemy import String, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    EncryptedBytes,
    EncryptedHybrid,
    EncryptedJSON,
    EncryptedText,
    encrypted_hybrid,
    normalize_email,
)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    email_encrypted: Mapped[str] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone: EncryptedHybrid[str | None] = encrypted_hybrid("phone_encrypted")
    prefs_encrypted: Mapped[str | None] = mapped_column(Text)
    prefs = encrypted_hybrid("prefs_encrypted", column_type=EncryptedJSON())
    _avatar: Mapped[bytes] = mapped_column("avatar", EncryptedBytes())
    avatar: EncryptedHybrid[bytes] = encrypted_hybrid("_avatar")
    notes: Mapped[str] = mapped_column(EncryptedText())


customer = Customer()

# EXPECTED_TYPE: str
reveal_type(customer.email)

# EXPECTED_TYPE: str | None
reveal_type(customer.phone)

# EXPECTED_TYPE: Any
reveal_type(customer.prefs)

# EXPECTED_TYPE: bytes
reveal_type(customer.avatar)

# EXPECTED_TYPE: str
reveal_type(customer.notes)

customer.email = "ada@example.com"
customer.phone = None
customer.prefs = {"lang": "en"}

# EXPECTED_MYPY: Incompatible types in assignment
customer.email = 42

# EXPECTED_MYPY: Incompatible types in assignment
customer.avatar = "not bytes"

by_email = select(Customer.id).where(Customer.email == "ada@example.com")

# EXPECTED_TYPE: EncryptedText
reveal_type(EncryptedText())
