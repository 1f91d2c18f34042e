"""Alembic autogenerate, run for real: rendering with imports, and no drift afterwards."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Column, Engine, MetaData, Table, create_engine, inspect
from sqlalchemy import types as sa_types
from sqlalchemy.dialects import mysql

import sa_fieldcrypt
from conftest import CONNECT_ARGS, server_url
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    EncryptedBoolean,
    EncryptedDate,
    EncryptedDateTime,
    EncryptedDecimal,
    EncryptedFloat,
    EncryptedInteger,
    EncryptedJSON,
    EncryptedText,
    EncryptedTime,
    EncryptedType,
    EncryptedUUID,
)
from sa_fieldcrypt.alembic import compare_type, render_item

MODELS = """
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from sqlalchemy import MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sa_fieldcrypt import (
    SubstringIndex,
    encrypted_hybrid,
    EncryptedBoolean,
    EncryptedBytes,
    EncryptedDate,
    EncryptedDateTime,
    EncryptedDecimal,
    EncryptedFloat,
    EncryptedInteger,
    EncryptedJSON,
    EncryptedText,
    EncryptedTime,
    EncryptedUUID,
)


class Base(DeclarativeBase):
    metadata = MetaData()


class Customer(Base):
    __tablename__ = "fc_alembic_customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column("email_encrypted", EncryptedText())
    avatar: Mapped[bytes | None] = mapped_column(EncryptedBytes())
    prefs: Mapped[Any] = mapped_column(EncryptedJSON(), nullable=True)
    notes: Mapped[str | None] = mapped_column(EncryptedText(context=False), nullable=True)
    phone: Mapped[str | None] = mapped_column(
        EncryptedText(context="crm.phone", allow_unbound=False), nullable=True
    )
    born: Mapped[date | None] = mapped_column(EncryptedDate())
    seen_at: Mapped[datetime | None] = mapped_column(EncryptedDateTime())
    local_time: Mapped[datetime | None] = mapped_column(EncryptedDateTime(timezone=False))
    contact_time: Mapped[time | None] = mapped_column(EncryptedTime())
    points: Mapped[int | None] = mapped_column(EncryptedInteger())
    score: Mapped[float | None] = mapped_column(EncryptedFloat())
    balance: Mapped[Decimal | None] = mapped_column(EncryptedDecimal(context="crm.balance"))
    verified: Mapped[bool | None] = mapped_column(EncryptedBoolean())
    ref: Mapped[uuid.UUID | None] = mapped_column(EncryptedUUID())


class Memo(Base):
    __tablename__ = "fc_alembic_memos"
    id: Mapped[int] = mapped_column(primary_key=True)
    body_encrypted: Mapped[str | None] = mapped_column(Text)
    body = encrypted_hybrid("body_encrypted", substring=SubstringIndex("fc_alembic_memo_trigrams"))
"""

#: Every table the models declare, dependents first.
TABLES = ("fc_alembic_memo_trigrams", "fc_alembic_memos", "fc_alembic_customers", "alembic_version")

ENV = """
from alembic import context
from sqlalchemy import create_engine

from fc_alembic_models import Base
from sa_fieldcrypt.alembic import compare_type, render_item

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_item=render_item,
        compare_type=compare_type,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""


@pytest.fixture(params=["postgresql", "mariadb"])
def alembic_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Config, Engine]]:
    """A migration environment over a real server, with models using every encrypted type."""
    url = server_url(request.param)
    engine = create_engine(url, connect_args=CONNECT_ARGS)
    _drop(engine)
    (tmp_path / "fc_alembic_models.py").write_text(MODELS)
    config = Config(str(tmp_path / "alembic.ini"))
    command.init(config, str(tmp_path / "migrations"), template="generic")
    config = Config(str(tmp_path / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    (tmp_path / "migrations" / "env.py").write_text(textwrap.dedent(ENV))
    sys.path.insert(0, str(tmp_path))
    try:
        yield config, engine
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fc_alembic_models", None)
        _drop(engine)
        engine.dispose()


def _drop(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in TABLES:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")


INDEX_MODELS = """
from sqlalchemy import MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    compound,
    compound_index,
    email_domain,
    encrypted_hybrid,
    first_chars,
    last_digits,
    letters_lower,
    normalize_phone,
)


class Base(DeclarativeBase):
    metadata = MetaData()


class Member(Base):
    __tablename__ = "fc_alembic_members"
    id: Mapped[int] = mapped_column(primary_key=True)
    consent_sms: Mapped[bool] = mapped_column(default=False)
    phone_encrypted: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH), index=True)
    phone_last4: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH), index=True)
    phone = encrypted_hybrid(
        "phone_encrypted",
        blind_index=[
            BlindIndex("phone_bidx", normalizer=normalize_phone, bits=16),
            BlindIndex("phone_last4", normalizer=last_digits(4)),
        ],
    )
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_domain_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid(
        "email_encrypted", blind_index=BlindIndex("email_domain_bidx", normalizer=email_domain)
    )
    last_name_encrypted: Mapped[str | None] = mapped_column(Text)
    last_name = encrypted_hybrid("last_name_encrypted")
    initial_surname_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    initial_surname = compound_index(
        BlindIndex(
            "initial_surname_bidx",
            normalizer=compound(email=first_chars(1), last_name=letters_lower),
        )
    )
"""


@pytest.fixture(params=["postgresql", "mariadb"])
def index_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Config, Engine]]:
    """A migration environment over a real server, with several and compound blind indexes."""
    url = server_url(request.param)
    engine = create_engine(url, connect_args=CONNECT_ARGS)

    def drop() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS fc_alembic_members")
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")

    drop()
    (tmp_path / "fc_alembic_models.py").write_text(INDEX_MODELS)
    config = Config(str(tmp_path / "alembic.ini"))
    command.init(config, str(tmp_path / "migrations"), template="generic")
    config = Config(str(tmp_path / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    (tmp_path / "migrations" / "env.py").write_text(textwrap.dedent(ENV))
    sys.path.insert(0, str(tmp_path))
    try:
        yield config, engine
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fc_alembic_models", None)
        drop()
        engine.dispose()


def _revision_text(config: Config, message: str) -> str:
    script = command.revision(config, message=message, autogenerate=True)
    assert script is not None
    return Path(script.path).read_text()  # type: ignore[union-attr]


def test_autogenerate_renders_types_with_import_then_no_drift(
    alembic_env: tuple[Config, Engine],
) -> None:
    """The first migration imports sa_fieldcrypt and creates the table; the next one is empty."""
    config, engine = alembic_env
    first = _revision_text(config, "create customers")
    assert "import sa_fieldcrypt" in first
    assert "sa_fieldcrypt.EncryptedText()" in first
    assert "sa_fieldcrypt.EncryptedBytes()" in first
    assert "sa_fieldcrypt.EncryptedJSON()" in first
    assert "sa_fieldcrypt.EncryptedText(context=False)" in first
    assert "sa_fieldcrypt.EncryptedText(context='crm.phone', allow_unbound=False)" in first
    for rendered in (
        "sa_fieldcrypt.EncryptedDate()",
        "sa_fieldcrypt.EncryptedDateTime()",
        "sa_fieldcrypt.EncryptedDateTime(timezone=False)",
        "sa_fieldcrypt.EncryptedTime()",
        "sa_fieldcrypt.EncryptedInteger()",
        "sa_fieldcrypt.EncryptedFloat()",
        "sa_fieldcrypt.EncryptedDecimal(context='crm.balance')",
        "sa_fieldcrypt.EncryptedBoolean()",
        "sa_fieldcrypt.EncryptedUUID()",
    ):
        assert rendered in first

    command.upgrade(config, "head")
    assert "fc_alembic_customers" in inspect(engine).get_table_names()

    second = _revision_text(config, "nothing changed")
    upgrade_body = second.split("def upgrade()", 1)[1].split("def downgrade()", 1)[0]
    assert "op." not in upgrade_body
    assert "pass" in upgrade_body


def test_autogenerate_emits_a_substring_index_side_table(
    alembic_env: tuple[Config, Engine],
) -> None:
    """The side table a substring index declares is in the migration, key, index and all."""
    config, engine = alembic_env
    first = _revision_text(config, "create memos")
    created = first.split("op.create_table('fc_alembic_memo_trigrams'", 1)[1].split("\n    )", 1)[0]
    assert "sa.Column('owner_id', sa.Integer(), nullable=False)" in created
    assert "sa.Column('trigram', sa.String(length=97), nullable=False)" in created
    assert (
        "['owner_id'], ['fc_alembic_memos.id'], onupdate='CASCADE', ondelete='CASCADE'" in created
    )
    assert "sa.PrimaryKeyConstraint('owner_id', 'trigram')" in created
    assert (
        "op.create_index('ix_fc_alembic_memo_trigrams_trigram', 'fc_alembic_memo_trigrams'" in first
    )
    command.upgrade(config, "head")
    assert "fc_alembic_memo_trigrams" in inspect(engine).get_table_names()


def test_autogenerate_emits_the_columns_of_several_and_compound_blind_indexes(
    index_env: tuple[Config, Engine],
) -> None:
    """Every index column (several per hybrid, truncated, compound) is created; then no drift."""
    config, engine = index_env
    first = _revision_text(config, "create members")
    for name in ("phone_bidx", "phone_last4", "email_domain_bidx", "initial_surname_bidx"):
        assert f"sa.Column('{name}', sa.String(length={BLIND_INDEX_LENGTH})" in first
    for name in ("phone_encrypted", "email_encrypted", "last_name_encrypted"):
        assert f"sa.Column('{name}', sa.Text()" in first
    assert "op.f('ix_fc_alembic_members_phone_last4')" in first

    command.upgrade(config, "head")
    columns = {c["name"] for c in inspect(engine).get_columns("fc_alembic_members")}
    assert {"phone_bidx", "phone_last4", "email_domain_bidx", "initial_surname_bidx"} <= columns

    second = _revision_text(config, "nothing changed")
    upgrade_body = second.split("def upgrade()", 1)[1].split("def downgrade()", 1)[0]
    assert "op." not in upgrade_body


@pytest.mark.parametrize(
    ("inspected", "expected"),
    [
        (sa_types.Text(), False),
        (mysql.LONGTEXT(), False),
        (sa_types.String(), False),
        (sa_types.String(255), True),
        (sa_types.Integer(), True),
    ],
)
def test_compare_type_accepts_only_unbounded_text(
    inspected: sa_types.TypeEngine[object], expected: bool
) -> None:
    """An encrypted column over TEXT is unchanged; over VARCHAR(255) it must be widened."""
    assert expected is compare_type(None, None, None, inspected, EncryptedText())


def test_compare_type_defers_other_types() -> None:
    """Columns that are not ours are left to Alembic's own comparison."""
    assert compare_type(None, None, None, sa_types.Text(), sa_types.Text()) is None


class _AutogenContext:
    """Stands in for the context Alembic passes to render_item."""

    def __init__(self) -> None:
        self.imports: set[str] = set()


@pytest.mark.parametrize(
    "declared",
    [
        EncryptedText(),
        EncryptedText(context=False),
        EncryptedText(context="crm.notes", allow_unbound=False),
        EncryptedJSON(allow_unbound=True),
        EncryptedDate(),
        EncryptedDateTime(),
        EncryptedDateTime(timezone=False, context="crm.local_time"),
        EncryptedTime(context="crm.contact_time"),
        EncryptedInteger(context=False),
        EncryptedFloat(),
        EncryptedDecimal(allow_unbound=False),
        EncryptedBoolean(),
        EncryptedUUID(),
    ],
    ids=[
        "bound",
        "unbound",
        "named-strict",
        "lenient",
        "date",
        "datetime",
        "naive-datetime-named",
        "time-named",
        "integer-unbound",
        "float",
        "decimal-strict",
        "boolean",
        "uuid",
    ],
)
def test_render_item_renders_types_as_declared(declared: EncryptedType) -> None:
    """A rendered type, evaluated in a migration, is the type the model declares."""
    rendered = render_item("type", declared, _AutogenContext())
    assert isinstance(rendered, str)
    rebuilt = eval(rendered, {"sa_fieldcrypt": sa_fieldcrypt})  # noqa: S307 - our own output
    assert (type(declared), repr(declared)) == (type(rebuilt), repr(rebuilt))
    assert (declared.context, declared.allow_unbound) == (rebuilt.context, rebuilt.allow_unbound)
    assert getattr(declared, "timezone", None) == getattr(rebuilt, "timezone", None)


def test_a_naive_datetime_column_renders_its_argument() -> None:
    """EncryptedDateTime(timezone=False) renders with it, and with the import."""
    context = _AutogenContext()
    rendered = render_item("type", EncryptedDateTime(timezone=False, context=False), context)
    assert "sa_fieldcrypt.EncryptedDateTime(timezone=False, context=False)" == rendered
    assert {"import sa_fieldcrypt"} == context.imports


def test_render_item_renders_an_attached_type_as_declared() -> None:
    """A type on a table renders without its column's name: the migration's type binds alike."""
    table = Table("fc_alembic_named", MetaData(), Column("email", EncryptedText()))
    assert "fc_alembic_named.email" == table.c.email.type.context
    assert "sa_fieldcrypt.EncryptedText()" == render_item(
        "type", table.c.email.type, _AutogenContext()
    )
