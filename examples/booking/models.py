"""The booking app's models, as the database has them: schemas ``identity`` and ``core``.

``core.customers`` keeps email and phone encrypted (columns ``email_encrypted`` and
``phone_encrypted``, read and written as plaintext through :class:`EncryptedText`), each with
a blind index (``email_bidx``, ``phone_bidx``) so customers can be looked up by email or phone
and an email is unique per station. ``email`` and ``phone`` are the plaintext attributes.

On SQLite, which has no schemas, run with ``SQLITE_SCHEMA_MAP`` as the connection's
``schema_translate_map`` (MariaDB too, where a schema is a separate database). MariaDB has no
partial indexes, so there the one-active-booking-per-slot index is not created.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    EncryptedText,
    encrypted_hybrid,
    normalize_email,
    normalize_phone,
)

#: Schema translation for SQLite, which has a single namespace.
SQLITE_SCHEMA_MAP: dict[str | None, str | None] = {"core": None, "identity": None}

ACTIVE_STATUSES = ("new", "deposit_pending", "confirmed")


class Base(DeclarativeBase):
    pass


class BookingStatus(enum.StrEnum):
    NEW = "new"
    DEPOSIT_PENDING = "deposit_pending"
    CONFIRMED = "confirmed"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"


class Station(Base):
    __tablename__ = "stations"
    __table_args__ = (
        Index("ix_identity_stations_code", "code", unique=True),
        Index("ix_identity_stations_email", "email", unique=True),
        {"schema": "identity"},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    code: Mapped[str] = mapped_column(String(20))
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(255))
    phone: Mapped[str] = mapped_column(String(20))
    address_line1: Mapped[str] = mapped_column(String(255))
    city: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(2))
    postal_code: Mapped[str] = mapped_column(String(10))
    country: Mapped[str] = mapped_column(String(2))
    timezone: Mapped[str] = mapped_column(String(50))

    customers: Mapped[list[Customer]] = relationship(back_populates="station")


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (
        # The seed declared this on (station_id, email_encrypted), which randomized encryption
        # makes meaningless; the blind index makes it enforce one email per station.
        Index("idx_customer_station_email", "station_id", "email_bidx", unique=True),
        # That index serves lookups by station and email; a lookup by email alone needs one
        # that starts with email_bidx.
        Index("idx_customer_email_bidx", "email_bidx"),
        Index("idx_customer_phone_bidx", "phone_bidx"),
        {"schema": "core"},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    station_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("identity.stations.id", ondelete="RESTRICT"), nullable=False
    )
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    # The columns keep the database's names; `email` and `phone` are the plaintext attributes,
    # and `Customer.email == "..."` in a query compares the blind index.
    _email: Mapped[str] = mapped_column("email_encrypted", EncryptedText())
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "_email", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )
    _phone: Mapped[str | None] = mapped_column("phone_encrypted", EncryptedText())
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "_phone", blind_index=BlindIndex("phone_bidx", normalizer=normalize_phone)
    )
    consent_sms: Mapped[bool] = mapped_column(Boolean, default=False)
    consent_email: Mapped[bool] = mapped_column(Boolean, default=False)
    consent_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    timezone: Mapped[str] = mapped_column(String(50))
    tags: Mapped[list[str] | None] = mapped_column(
        JSON().with_variant(ARRAY(String(50)), "postgresql")
    )
    notes: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    station: Mapped[Station] = relationship(back_populates="customers")
    bookings: Mapped[list[Booking]] = relationship(back_populates="customer")


class Booking(Base):
    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint("deposit_due_cents >= 0", name="check_deposit_non_negative"),
        CheckConstraint("party_adults > 0", name="check_party_adults_positive"),
        CheckConstraint("party_kids >= 0", name="check_party_kids_non_negative"),
        CheckConstraint("total_due_cents >= deposit_due_cents", name="check_total_gte_deposit"),
        # One active booking per slot; cancelled and finished ones do not hold it. Only where
        # partial indexes exist: elsewhere it would wrongly forbid rebooking a cancelled slot.
        Index(
            "idx_booking_date_slot_active",
            "date",
            "slot",
            unique=True,
            postgresql_where=text("status IN ('new', 'deposit_pending', 'confirmed')"),
            sqlite_where=text("status IN ('new', 'deposit_pending', 'confirmed')"),
        ).ddl_if(dialect=("postgresql", "sqlite")),
        {"schema": "core"},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    customer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("core.customers.id", ondelete="RESTRICT")
    )
    date: Mapped[date] = mapped_column(Date)
    slot: Mapped[str] = mapped_column(String(20))
    status: Mapped[BookingStatus] = mapped_column(
        Enum(
            BookingStatus,
            name="booking_status",
            values_callable=lambda e: [m.value for m in e],
        ),
        default=BookingStatus.NEW,
    )
    party_adults: Mapped[int] = mapped_column(Integer)
    party_kids: Mapped[int] = mapped_column(Integer, default=0)
    deposit_due_cents: Mapped[int] = mapped_column(Integer, default=0)
    total_due_cents: Mapped[int] = mapped_column(Integer, default=0)
    sms_consent: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    sms_consent_timestamp: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    customer: Mapped[Customer] = relationship(back_populates="bookings")


def station_kwargs(code: str, **overrides: Any) -> dict[str, Any]:
    """Field values for a test or demo station (the seed's Phase 5 fixture)."""
    values: dict[str, Any] = {
        "name": f"Station {code}",
        "code": code,
        "display_name": f"Station {code}",
        "email": f"{code.lower()}@station.example",
        "phone": "+1234567890",
        "address_line1": "123 Test St",
        "city": "Test City",
        "state": "CA",
        "postal_code": "90001",
        "country": "US",
        "timezone": "America/Los_Angeles",
    }
    values.update(overrides)
    return values
