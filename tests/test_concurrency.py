"""Many threads through one engine and one key cache, with a key refresh mid-way."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine, Integer, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sa_fieldcrypt import EncryptedText, Keyring, generate_key
from sa_fieldcrypt.testing import temporary_keys

THREADS = 8
PER_THREAD = 40


class Base(DeclarativeBase):
    pass


class Message(Base):
    __tablename__ = "fc_concurrency_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(EncryptedText())


class RotatingProvider:
    """Serves keyring A until switched, then A plus a new primary B."""

    def __init__(self) -> None:
        self.first = Keyring({"a": generate_key()})
        self.second = Keyring([Keyring({"b": generate_key()}).primary, *self.first])
        self.switched = threading.Event()

    def load(self) -> Keyring:
        return self.second if self.switched.is_set() else self.first


def test_threads_encrypt_and_decrypt_correctly_across_a_refresh(engine: Engine) -> None:
    """Every value written by any thread reads back exactly, before and after the refresh."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    provider = RotatingProvider()
    halfway = threading.Barrier(THREADS)

    def worker(thread: int) -> list[tuple[int, str]]:
        written = []
        for i in range(PER_THREAD):
            # Halfway, all threads meet; one of them brings in the new key meanwhile.
            if i == PER_THREAD // 2 and halfway.wait() == 0:
                provider.switched.set()
                cache.refresh()
            row_id = thread * 1000 + i
            body = f"thread {thread} message {i} \U0001f512"
            with Session(engine) as session:
                session.add(Message(id=row_id, body=body))
                session.commit()
            with Session(engine) as session:
                assert body == session.get(Message, row_id).body
            written.append((row_id, body))
        return written

    with temporary_keys(provider):
        from sa_fieldcrypt.config import default_key_cache

        cache = default_key_cache()
        with ThreadPoolExecutor(THREADS) as pool:
            results = [row for rows in pool.map(worker, range(THREADS)) for row in rows]
        with Session(engine) as session:
            stored = dict(session.execute(select(Message.id, Message.body)).all())
            raw = session.connection().exec_driver_sql("SELECT body FROM fc_concurrency_messages")
            key_ids = {value.split(":")[1] for (value,) in raw}
    assert dict(results) == stored
    assert THREADS * PER_THREAD == len(stored)
    assert {"a", "b"} == key_ids
    Base.metadata.drop_all(engine)
