"""ORM and Core statements over encrypted columns and hybrids: UPDATE paths, ORDER BY, GROUP BY.

Every statement here runs on SQLite, PostgreSQL and MariaDB: an UPDATE with every
``synchronize_session`` strategy updates the row and the objects already loaded, and ordering
or grouping by an encrypted value is refused before any SQL is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import (
    Engine,
    Integer,
    String,
    Text,
    event,
    func,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sa_fieldcrypt import (
    BLIND_INDEX_LENGTH,
    BlindIndex,
    EncryptedText,
    Keyring,
    UnsupportedComparisonError,
    encrypted_hybrid,
)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "fc_stmt_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[str | None] = mapped_column(EncryptedText())
    title: Mapped[str | None] = mapped_column(String(50))


class Member(Base):
    __tablename__ = "fc_stmt_members"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    email_encrypted: Mapped[str | None] = mapped_column(Text)
    email_bidx: Mapped[str | None] = mapped_column(String(BLIND_INDEX_LENGTH))
    email = encrypted_hybrid("email_encrypted", blind_index=BlindIndex("email_bidx"))


SYNCHRONIZE = ["auto", "evaluate", "fetch", False]


@pytest.fixture
def db(engine: Engine, keyring: Keyring, index_keyring: Keyring) -> Iterator[Engine]:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Note(id=1, body="first", title="a"), Note(id=2, body="second")])
        session.add_all([Member(id=1, email="ada@example.com"), Member(id=2, email="bo@x.test")])
        session.commit()
    yield engine
    Base.metadata.drop_all(engine)


def _stored_body(engine: Engine, note_id: int) -> str | None:
    with Session(engine) as session:
        return session.get(Note, note_id).body


@pytest.mark.parametrize("synchronize", SYNCHRONIZE)
def test_orm_update_of_an_encrypted_column_works_with_every_synchronize_strategy(
    db: Engine, synchronize: Any
) -> None:
    """update(Note).where(...).values(body=...) writes, and a loaded object sees it unless False."""
    with Session(db) as session:
        loaded = session.get(Note, 1)
        assert "first" == loaded.body
        session.execute(
            update(Note).where(Note.id == 1).values(body="changed"),
            execution_options={"synchronize_session": synchronize},
        )
        if synchronize is not False:
            assert "changed" == loaded.body
        session.commit()
    assert "changed" == _stored_body(db, 1)
    assert "second" == _stored_body(db, 2)


@pytest.mark.parametrize("synchronize", SYNCHRONIZE)
def test_legacy_query_update_of_an_encrypted_column_works(db: Engine, synchronize: Any) -> None:
    """session.query(Note).filter(...).update({...}) updates the row and the loaded object."""
    with Session(db) as session:
        loaded = session.get(Note, 2)
        count = (
            session.query(Note)
            .filter(Note.id == 2)
            .update({Note.body: "via query"}, synchronize_session=synchronize)
        )
        assert 1 == count
        if synchronize is not False:
            assert "via query" == loaded.body
        session.commit()
    assert "via query" == _stored_body(db, 2)


def test_update_returning_an_encrypted_column_returns_plaintext(db: Engine) -> None:
    """update(...).returning(Note.body) gives the new plaintext where the database has RETURNING."""
    if not db.dialect.update_returning:
        pytest.skip(f"{db.dialect.name} has no UPDATE ... RETURNING")
    with Session(db) as session:
        rows = session.execute(
            update(Note).where(Note.id == 1).values(body="returned").returning(Note.id, Note.body)
        ).all()
        session.commit()
    assert [(1, "returned")] == [tuple(row) for row in rows]


def test_orm_bulk_update_by_primary_key_encrypts(db: Engine) -> None:
    """update(Note) with a list of parameter dicts (bulk UPDATE by primary key) encrypts each."""
    with Session(db) as session:
        session.execute(update(Note), [{"id": 1, "body": "one"}, {"id": 2, "body": "two"}])
        session.commit()
    assert ("one", "two") == (_stored_body(db, 1), _stored_body(db, 2))


def test_update_where_is_none_evaluates_in_python(db: Engine) -> None:
    """A WHERE on is_(None) of an encrypted column is evaluated for loaded objects too."""
    with Session(db) as session:
        loaded = session.get(Note, 2)
        session.execute(update(Note).where(Note.title.is_(None)).values(body="untitled"))
        assert "untitled" == loaded.body
        session.commit()
    assert "first" == _stored_body(db, 1)


@pytest.mark.parametrize("synchronize", SYNCHRONIZE)
def test_orm_update_through_a_hybrid_writes_value_and_index(db: Engine, synchronize: Any) -> None:
    """update(Member).values(email=...) with a WHERE on the hybrid re-encrypts and re-indexes."""
    with Session(db) as session:
        loaded = session.get(Member, 1)
        session.execute(
            update(Member).where(Member.email == "ada@example.com").values(email="new@example.com"),
            execution_options={"synchronize_session": synchronize},
        )
        if synchronize is not False:
            assert "new@example.com" == loaded.email
        session.commit()
    with Session(db) as session:
        found = session.scalars(select(Member.id).where(Member.email == "new@example.com")).all()
        assert [1] == list(found)
        assert [] == list(
            session.scalars(select(Member.id).where(Member.email == "ada@example.com")).all()
        )


def test_a_column_compared_with_itself_is_not_refused() -> None:
    """The ORM's own lookups compare a column object with itself; that is not a value comparison."""
    column = Note.__table__.c.body
    assert bool(column == column)
    with pytest.raises(UnsupportedComparisonError):
        _ = Note.body == Note.title


REFUSED: list[tuple[str, Callable[[], Any]]] = [
    ("ORDER BY", lambda: select(Note.id).order_by(Note.body)),
    ("ORDER BY", lambda: select(Note).order_by(Note.id, Note.body)),
    ("ORDER BY", lambda: select(Note.body.label("b")).order_by("b")),
    ("ORDER BY", lambda: select(Note.id).order_by(func.coalesce(Note.body, ""))),
    ("ORDER BY", lambda: select(Note.id).order_by(select(Note.body).limit(1).scalar_subquery())),
    ("ORDER BY", lambda: union_all(select(Note.body), select(Note.body)).order_by("body")),
    ("GROUP BY", lambda: select(Note.body, func.count()).group_by(Note.body)),
    ("PARTITION BY", lambda: select(func.row_number().over(partition_by=Note.body))),
    ("ORDER BY", lambda: select(func.row_number().over(order_by=Note.body))),
    ("ORDER BY", lambda: select(Member.id).order_by(Member.email)),
    ("GROUP BY", lambda: select(func.count()).select_from(Member).group_by(Member.email)),
    ("ORDER BY", lambda: select(Note.id).where(Note.id.in_(select(Note.id).order_by(Note.body)))),
]


@pytest.mark.parametrize(("clause", "make"), REFUSED)
def test_ordering_or_grouping_by_an_encrypted_value_is_refused_before_sql_is_sent(
    db: Engine, clause: str, make: Callable[[], Any]
) -> None:
    """ORDER BY, GROUP BY and window clauses over ciphertext raise, naming column and remedy."""
    sent: list[str] = []
    event.listen(db, "before_cursor_execute", lambda *args: sent.append(args[2]))
    with Session(db) as session, pytest.raises(UnsupportedComparisonError) as info:
        session.execute(make())
    message = str(info.value)
    assert f"cannot {clause} an encrypted value" in message
    assert "fc_stmt_notes.body" in message or "fc_stmt_members.email_encrypted" in message
    assert ("sort in Python" in message) or ("blind index" in message)
    assert [] == sent


def test_legacy_query_order_by_is_refused(db: Engine) -> None:
    """session.query(Note).order_by(Note.body) is refused like select()."""
    with Session(db) as session, pytest.raises(UnsupportedComparisonError, match="ORDER BY"):
        session.query(Note).order_by(Note.body).all()


def test_ordering_by_other_columns_and_by_the_blind_index_still_works(db: Engine) -> None:
    """Selecting ciphertext ordered by a plain column, or grouping by an index, works."""
    with Session(db) as session:
        assert ["second", "first"] == list(
            session.scalars(select(Note.body).order_by(Note.id.desc())).all()
        )
        groups = session.execute(
            select(Member.email_bidx, func.count()).group_by(Member.email_bidx)
        ).all()
        assert [1, 1] == [count for _, count in groups]
        assert 2 == len(session.scalars(select(Note).order_by(literal_column("id"))).all())
