"""User code that mypy --strict must accept, with the types it must reveal (see test_typing.py)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import reveal_type

from sqlalchemy import String, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    EncryptedBoolean,
    EncryptedBytes,
    EncryptedDate,
    EncryptedDateTime,
    EncryptedDecimal,
    EncryptedFloat,
    EncryptedHybrid,
    EncryptedInteger,
    EncryptedJSON,
    EncryptedText,
    EncryptedTime,
    EncryptedUUID,
    Scrypt,
    compound,
    compound_index,
    encrypted_hybrid,
    last_digits,
    normalize_email,
    normalize_phone,
    typed_normalizer,
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
    born_encrypted: Mapped[str | None] = mapped_column(Text)
    born_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    born = encrypted_hybrid(
        "born_encrypted",
        column_type=EncryptedDate(),
        blind_index=BlindIndex("born_bidx", normalizer=typed_normalizer(date), slow=Scrypt()),
    )
    seen_encrypted: Mapped[str | None] = mapped_column(Text)
    seen_at = encrypted_hybrid("seen_encrypted", column_type=EncryptedDateTime(timezone=False))
    calls_encrypted: Mapped[str | None] = mapped_column(Text)
    calls_at = encrypted_hybrid("calls_encrypted", column_type=EncryptedTime())
    points_encrypted: Mapped[str | None] = mapped_column(Text)
    points = encrypted_hybrid("points_encrypted", column_type=EncryptedInteger())
    score_encrypted: Mapped[str | None] = mapped_column(Text)
    score = encrypted_hybrid("score_encrypted", column_type=EncryptedFloat())
    balance_encrypted: Mapped[str | None] = mapped_column(Text)
    balance = encrypted_hybrid("balance_encrypted", column_type=EncryptedDecimal())
    verified_encrypted: Mapped[str | None] = mapped_column(Text)
    verified = encrypted_hybrid("verified_encrypted", column_type=EncryptedBoolean())
    ref_encrypted: Mapped[str | None] = mapped_column(Text)
    ref = encrypted_hybrid("ref_encrypted", column_type=EncryptedUUID())
    renewed: Mapped[date | None] = mapped_column(EncryptedDate())
    contact_encrypted: Mapped[str | None] = mapped_column(Text)
    contact_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    contact_last4: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    contact = encrypted_hybrid(
        "contact_encrypted",
        blind_index=[
            BlindIndex("contact_bidx", normalizer=normalize_phone),
            BlindIndex("contact_last4", normalizer=last_digits(4), bits=16),
        ],
    )
    verified_last4_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    verified_last4 = compound_index(
        BlindIndex(
            "verified_last4_bidx", normalizer=compound(verified=None, contact=last_digits(4))
        )
    )
    wakes_at: Mapped[time | None] = mapped_column(EncryptedTime())


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

# EXPECTED_TYPE: datetime.date
reveal_type(customer.born)

# EXPECTED_TYPE: datetime.datetime
reveal_type(customer.seen_at)

# EXPECTED_TYPE: datetime.time
reveal_type(customer.calls_at)

# EXPECTED_TYPE: int
reveal_type(customer.points)

# EXPECTED_TYPE: float
reveal_type(customer.score)

# EXPECTED_TYPE: Decimal
reveal_type(customer.balance)

# EXPECTED_TYPE: bool
reveal_type(customer.verified)

# EXPECTED_TYPE: UUID
reveal_type(customer.ref)

# EXPECTED_TYPE: datetime.date | None
reveal_type(customer.renewed)

# EXPECTED_TYPE: datetime.time | None
reveal_type(customer.wakes_at)

customer.email = "ada@example.com"
customer.phone = None
customer.prefs = {"lang": "en"}

# EXPECTED_MYPY: Incompatible types in assignment
customer.email = 42

# EXPECTED_MYPY: Incompatible types in assignment
customer.avatar = "not bytes"

customer.born = date(1815, 12, 10)
customer.seen_at = datetime(2024, 7, 1, 12)
customer.calls_at = time(9, 30)
customer.balance = Decimal("1.50")
customer.ref = uuid.uuid4()

# EXPECTED_MYPY: Incompatible types in assignment
customer.born = "1815-12-10"

# EXPECTED_MYPY: Incompatible types in assignment
customer.balance = 1.5

# EXPECTED_MYPY: Incompatible types in assignment
customer.calls_at = datetime(2024, 7, 1, 9, 30)

by_birthday = select(Customer.id).where(Customer.born == date(1815, 12, 10))

by_email = select(Customer.id).where(Customer.email == "ada@example.com")

by_last4 = select(Customer).where(Customer.contact.index("contact_last4") == "0000")

# EXPECTED_TYPE: IndexComparator
reveal_type(Customer.contact.index("contact_last4"))

# EXPECTED_TYPE: ColumnElement[bool]
reveal_type(Customer.contact.index("contact_last4").in_(["0000", "1234"]))

by_compound = select(Customer).where(Customer.verified_last4 == (True, "0000"))

# EXPECTED_TYPE: IndexComparator
reveal_type(Customer.verified_last4)

# EXPECTED_TYPE: str | None
reveal_type(customer.verified_last4)

# EXPECTED_TYPE: EncryptedText
reveal_type(EncryptedText())

# EXPECTED_TYPE: EncryptedDateTime
reveal_type(EncryptedDateTime(timezone=False))

# EXPECTED_MYPY: Argument "timezone" to "EncryptedDateTime" has incompatible type
EncryptedDateTime(timezone="UTC")
