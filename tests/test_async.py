"""The column types under AsyncSession, with aiosqlite, asyncpg, psycopg and aiomysql."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Index, Integer, String, Text, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, load_only, mapped_column

from conftest import server_url
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    EncryptedJSON,
    EncryptedText,
    Keyring,
    SubstringIndex,
    UnsupportedComparisonError,
    compound,
    compound_index,
    encrypted_hybrid,
    last_digits,
    normalize_email,
    normalize_phone,
)
from sa_fieldcrypt.testing import assert_encrypted_at_rest


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "fc_async_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[str | None] = mapped_column(EncryptedText())
    meta: Mapped[Any] = mapped_column(EncryptedJSON(), nullable=True)


class Guest(Base):
    """Both hybrid styles: ciphertext in a plain Text column, and an EncryptedText column."""

    __tablename__ = "fc_async_guests"
    __table_args__ = (Index("uq_fc_async_guest_email", "email_bidx", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("email_bidx", normalizer=normalize_email)
    )
    _phone: Mapped[str | None] = mapped_column("phone", EncryptedText())
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "_phone", blind_index=BlindIndex("phone_bidx", normalizer=normalize_phone)
    )


@pytest.fixture(params=["aiosqlite", "asyncpg", "psycopg", "aiomysql"])
def async_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An async driver URL for SQLite, PostgreSQL or MariaDB."""
    if request.param == "aiosqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'async.sqlite3'}"
    server, scheme = {
        "asyncpg": ("postgresql", "postgresql+asyncpg"),
        "psycopg": ("postgresql", "postgresql+psycopg"),
        "aiomysql": ("mariadb", "mysql+aiomysql"),
    }[request.param]
    return f"{scheme}://" + server_url(server).split("://", 1)[1]


async def _scenario(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        session.add_all(
            [
                Note(id=1, body="ünïcode \U0001f600", meta={"tags": ["a"]}),
                Note(id=2, body=None, meta=None),
                Note(id=3, body="", meta=[]),
            ]
        )
        await session.commit()
    async with sessions() as session:
        notes = (await session.scalars(select(Note).order_by(Note.id))).all()
        assert [("ünïcode \U0001f600", {"tags": ["a"]}), (None, None), ("", [])] == [
            (n.body, n.meta) for n in notes
        ]
        empty = await session.scalars(select(Note.id).where(Note.body.is_(None)))
        assert [2] == empty.all()
        checked = await session.run_sync(lambda s: assert_encrypted_at_rest(s, Note))
        assert 4 == checked
        raw = await session.scalar(text("SELECT body FROM fc_async_notes WHERE id = 1"))
        assert raw.startswith("fc1:k2:")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)


def _with_tables(
    async_url: str, scenario: Callable[[async_sessionmaker[AsyncSession]], Awaitable[None]]
) -> None:
    """Run ``scenario`` with sessions on new tables of the models, dropped after it."""

    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
                await conn.run_sync(Base.metadata.create_all)
            await scenario(async_sessionmaker(engine, expire_on_commit=False))
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_async_round_trip(async_url: str, fieldcrypt_keyring: Keyring) -> None:
    """AsyncSession writes tokens and reads plaintext back, NULLs and "" included."""

    async def main() -> None:
        engine = create_async_engine(async_url)
        try:
            await _scenario(engine)
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_async_comparisons_refuse_like_sync() -> None:
    """Comparison refusal happens at statement construction, identical for async code."""
    with pytest.raises(UnsupportedComparisonError):
        select(Note).where(Note.body == "x")


def test_async_hybrids_and_blind_index_queries(
    async_url: str, fieldcrypt_keyring: Keyring, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """Hybrid attributes, lookups through blind indexes and the unique index work async."""

    async def scenario(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session:
            session.add(Guest(id=1, email="Ada@Example.com", phone="+1 (555) 010-0000"))
            await session.commit()
        async with sessions() as session:
            by_email = await session.scalar(select(Guest).where(Guest.email == "  ada@example.COM"))
            assert by_email is not None
            assert ("Ada@Example.com", "+1 (555) 010-0000") == (by_email.email, by_email.phone)
            by_phone = await session.scalars(
                select(Guest.id).where(Guest.phone.in_(["+15550100000", "+1999"]))
            )
            assert [1] == by_phone.all()
            by_email.email = "grace@example.com"
            await session.commit()
            moved = await session.scalar(select(Guest.id).where(Guest.email == "GRACE@example.com"))
            assert 1 == moved
        async with sessions() as session:
            session.add(Guest(id=2, email=" grace@EXAMPLE.com"))
            with pytest.raises(IntegrityError):
                await session.commit()

    _with_tables(async_url, scenario)


class Caller(Base):
    """A phone with a full-size and a 4-bit index of its last four digits, and a compound."""

    __tablename__ = "fc_async_callers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone_last4: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone_last4_tiny: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    phone = encrypted_hybrid(
        "phone_encrypted",
        blind_index=[
            BlindIndex("phone_last4", normalizer=last_digits(4)),
            BlindIndex("phone_last4_tiny", normalizer=last_digits(4), bits=4),
        ],
    )
    consent_sms: Mapped[bool] = mapped_column(default=False)
    sms_last4_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    sms_last4 = compound_index(
        BlindIndex(
            "sms_last4_bidx", normalizer=compound(consent_sms=None, phone=last_digits(4)), bits=4
        )
    )


def test_async_truncated_lookups_return_exact_matches(
    async_url: str, fieldcrypt_keyring: Keyring, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """Through AsyncSession, 4-bit indexes' candidates are filtered to the exact matches."""
    phones = {i: f"+1 555 {i:03d} {['0000', '1234', f'{i:04d}'][i % 3]}" for i in range(200)}
    expected = sorted(i for i, p in phones.items() if p.endswith("0000"))
    texting = sorted(i for i in expected if i % 2)

    async def scenario(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session:
            session.add_all(
                Caller(id=i, phone=p, consent_sms=bool(i % 2)) for i, p in phones.items()
            )
            await session.commit()
        async with sessions() as session:
            for index in ("phone_last4", "phone_last4_tiny"):
                condition = Caller.phone.index(index) == "0000"
                found = await session.scalars(select(Caller).where(condition))
                assert expected == sorted(c.id for c in found)
                rows = await session.execute(select(Caller).where(condition))
                assert expected == sorted(c.id for (c,) in rows)
            consenting = select(Caller).where(Caller.sms_last4 == (True, "0000"))
            assert texting == sorted(c.id for c in await session.scalars(consenting))
            tiny = Caller.phone.index("phone_last4_tiny") == "0000"
            with pytest.raises(UnsupportedComparisonError):
                await session.scalars(select(Caller.id).where(tiny))

    _with_tables(async_url, scenario)


def test_async_reads_of_a_part_load_no_index_column(
    async_url: str, fieldcrypt_keyring: Keyring, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """A hybrid read from a row loaded without its index columns (load_only) loads none of
    them to check it: under AsyncSession that load would fail."""

    async def scenario(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session:
            session.add(Caller(id=1, phone="+1 555 010 0000", consent_sms=True))
            await session.commit()
        async with sessions() as session:
            only = load_only(Caller.id, Caller.phone_encrypted)
            caller = (await session.scalars(select(Caller).options(only))).one()
            assert "+1 555 010 0000" == caller.phone

    _with_tables(async_url, scenario)


class Memo(Base):
    """Notes searched by substring, through a 4-bit substring index."""

    __tablename__ = "fc_async_memos"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid(
        "body_encrypted", substring=SubstringIndex("fc_async_memo_trigrams", bits=4)
    )


def test_async_contains_returns_exact_matches(
    async_url: str, fieldcrypt_keyring: Keyring, fieldcrypt_blind_index_keyring: Keyring
) -> None:
    """Through AsyncSession, the side table is kept at flush and contains() is exact."""
    bodies = {
        i: f"note {i}: {['call Ada Lovelace', 'email Grace', 'visit Alan'][i % 3]}"
        for i in range(60)
    }

    def expected(term: str) -> list[int]:
        return sorted(i for i, b in bodies.items() if term.lower() in b.lower())

    async def scenario(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session:
            session.add_all(Memo(id=i, body=b) for i, b in bodies.items())
            await session.commit()
        async with sessions() as session:
            for term in ("lovelace", "GRACE", "note 1", "zzz"):
                found = await session.scalars(select(Memo).where(Memo.body.contains(term)))
                assert expected(term) == sorted(m.id for m in found)
            memo = await session.get(Memo, 1)
            assert memo is not None
            memo.body = "now about Lovelace"
            bodies[1] = memo.body
            await session.delete(await session.get(Memo, 0))
            del bodies[0]
            await session.commit()
            found = await session.scalars(select(Memo).where(Memo.body.contains("lovelace")))
            assert expected("lovelace") == sorted(m.id for m in found)
            with pytest.raises(UnsupportedComparisonError):
                await session.scalars(select(Memo.id).where(Memo.body.contains("grace")))

    _with_tables(async_url, scenario)
