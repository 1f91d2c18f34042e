"""Length hiding: padding inside the encryption, authenticated, rotated in and out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Engine, Integer, MetaData, Table, Text, insert, select

import sa_fieldcrypt
from sa_fieldcrypt import (
    ConfigurationError,
    DecryptionError,
    EncryptedBytes,
    EncryptedJSON,
    EncryptedText,
    Keyring,
    generate_key,
    jobs,
)
from sa_fieldcrypt.alembic import render_item
from sa_fieldcrypt.cipher import (
    decrypt,
    encrypt,
    inspect_token,
    pad,
    padding_block,
    unpad,
)
from sa_fieldcrypt.config import swap_default_keys

KINDS = ("fernet", "aes-gcm-siv")
RINGS = {kind: Keyring({"k2": generate_key(kind), "k1": generate_key(kind)}) for kind in KINDS}
CONTEXT = "core.customers.email"
#: (context, row key): how a token is bound.
Binding = tuple[str | None, tuple[int] | None]
# Each binding a padded token can have.
BINDINGS: list[Binding] = [(None, None), (CONTEXT, None), (CONTEXT, (7,))]
CASES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
each_binding = pytest.mark.parametrize(
    ("kind", "binding"),
    [(k, b) for k in KINDS for b in BINDINGS],
    ids=lambda v: str(v),
)


# -- the padding itself ---------------------------------------------------------------------


@given(data=st.binary(max_size=300), block=st.integers(2, 256))
def test_padding_round_trips_to_whole_blocks(data: bytes, block: int) -> None:
    """pad() adds 1 to ``block`` bytes (0x80, then zeros) to a whole block; unpad() undoes it."""
    padded = pad(data, block)
    assert 0 == len(padded) % block
    assert len(data) < len(padded) <= len(data) + block
    assert padded.startswith(data + b"\x80")
    assert data == unpad(padded)


@given(data=st.binary(max_size=64).filter(lambda d: not d.rstrip(b"\x00").endswith(b"\x80")))
def test_unpadding_refuses_data_without_padding(data: bytes) -> None:
    """Data that does not end in 0x80 and zeros is refused with DecryptionError."""
    with pytest.raises(DecryptionError, match="padding is malformed"):
        unpad(data)


@pytest.mark.parametrize("padding", [0, 1, -16, 65537, "16", 1.5, None])
def test_invalid_padding_is_refused(padding: object) -> None:
    """padding is False, True or a block size from 2 to 65536; anything else is refused."""
    with pytest.raises(ConfigurationError, match="padding must be"):
        padding_block(padding)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="padding must be"):
        EncryptedText(padding=padding)  # type: ignore[arg-type]


def test_padding_true_means_sixteen_byte_blocks() -> None:
    """True is 16, an int is itself, False is none."""
    assert (16, 64, None) == (padding_block(True), padding_block(64), padding_block(False))


# -- padded tokens ----------------------------------------------------------------------------


def _encrypt(kind: str, binding: Binding, data: bytes, **kw: object) -> str:
    context, row = binding
    return encrypt(RINGS[kind], data, context=context, row_key=row, **kw)  # type: ignore[arg-type]


def _decrypt(kind: str, binding: Binding, token: str) -> bytes:
    context, row = binding
    return decrypt(RINGS[kind], token, context=context, row_key=row)


@each_binding
@CASES
@given(data=st.binary(max_size=40))
def test_padded_tokens_round_trip(kind: str, binding: Binding, data: bytes) -> None:
    """A padded token of any binding decrypts to exactly its data, and says it is padded."""
    token = _encrypt(kind, binding, data, padding=True)
    info = inspect_token(token)
    assert info.padded
    assert ({None: None, CONTEXT: "c"}[binding[0]] if binding[1] is None else "r") == info.flag
    assert data == _decrypt(kind, binding, token)


@each_binding
def test_every_value_shorter_than_a_block_gives_one_token_length(
    kind: str, binding: tuple[str | None, tuple[int] | None]
) -> None:
    """With 16-byte blocks, 0 to 15 bytes give one token length, 16 to 31 another, longer."""
    short = {len(_encrypt(kind, binding, b"x" * n, padding=True)) for n in range(16)}
    longer = {len(_encrypt(kind, binding, b"x" * n, padding=True)) for n in range(16, 32)}
    assert 1 == len(short) == len(longer)
    assert min(longer) > max(short)
    # A 64-byte block: one length for 0 to 63 bytes.
    assert 1 == len({len(_encrypt(kind, binding, b"x" * n, padding=64)) for n in range(64)})


@each_binding
@CASES
@given(data=st.binary(max_size=40), flag_edit=st.sampled_from(["drop", "add", "swap"]))
def test_the_padding_flag_cannot_be_removed_or_added(
    kind: str, binding: Binding, data: bytes, flag_edit: str
) -> None:
    """Dropping a padded token's ``p`` (or giving one to an unpadded token) fails to decrypt.

    Otherwise a column of bytes would return the padding as data, or lose trailing bytes.
    """
    padded = _encrypt(kind, binding, data, padding=True)
    plain = _encrypt(kind, binding, data)
    head, _, payload = padded.rpartition(":")
    plain_head, _, plain_payload = plain.rpartition(":")
    fields = head.split(":")
    if flag_edit == "drop":  # the padded payload under the unpadded header
        edited = f"{plain_head}:{payload}"
    elif flag_edit == "add":  # the unpadded payload under the padded header
        edited = f"{head}:{plain_payload}"
    else:  # a padded payload whose binding letter changed
        other = {"p": "cp", "cp": "rp", "rp": "p"}[fields[2]]
        edited = ":".join([*fields[:2], other, payload])
    with pytest.raises(DecryptionError):
        _decrypt(kind, binding, edited)


@each_binding
@CASES
@given(data=st.binary(max_size=24), edit=st.data())
def test_any_single_character_edit_of_a_padded_token_is_refused(
    kind: str, binding: Binding, data: bytes, edit: st.DataObject
) -> None:
    """Any one character inserted, deleted or substituted anywhere: refused, never other data."""
    token = _encrypt(kind, binding, data, padding=True)
    at = edit.draw(st.integers(0, len(token) - 1))
    char = edit.draw(st.sampled_from("AZaz09-_=:.+/ p"))
    how = edit.draw(st.sampled_from(["insert", "delete", "substitute"]))
    if how == "insert":
        edited = token[:at] + char + token[at:]
    elif how == "delete":
        edited = token[:at] + token[at + 1 :]
    else:
        edited = token[:at] + char + token[at + 1 :]
    if edited == token:
        return
    try:
        result = _decrypt(kind, binding, edited)
    except DecryptionError:
        return
    pytest.fail(
        f"an edited token decrypted (to {'its own data' if result == data else 'other data'})"
    )


def test_a_strict_column_refuses_unbound_padded_tokens() -> None:
    """An unbound padded token is unbound: a strict column refuses it like any other."""
    ring = RINGS["aes-gcm-siv"]
    token = encrypt(ring, b"x", padding=True)
    column = EncryptedText(keyring=ring, context=CONTEXT, allow_unbound=False)
    with pytest.raises(DecryptionError, match="allow_unbound=False"):
        column.process_result_value(token, None)
    assert "x" == EncryptedText(keyring=ring, context=CONTEXT).process_result_value(token, None)


# -- columns --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("column_type", "values"),
    [
        (EncryptedText, ["", "a", "ada@example.com", "x" * 15]),
        (EncryptedBytes, [b"", b"\x80", b"\x80\x00", b"\x00" * 15]),
        (EncryptedJSON, [0, "a", [1, 2], {"k": None}]),
    ],
    ids=["text", "bytes", "json"],
)
def test_a_padded_column_hides_the_length_of_short_values(
    kind: str, column_type: type, values: list[object]
) -> None:
    """Every value shorter than a block gives a token of one length, and reads back exactly."""
    column = column_type(keyring=RINGS[kind], context=CONTEXT, padding=True)
    tokens = [column.process_bind_param(v, None) for v in values]
    assert 1 == len({len(t) for t in tokens})
    assert values == [column.process_result_value(t, None) for t in tokens]


def test_reads_accept_padded_and_unpadded_tokens_whatever_the_column_writes() -> None:
    """Turning padding on or off needs no migration first: both kinds keep reading."""
    ring = RINGS["fernet"]
    padded = EncryptedText(keyring=ring, context=CONTEXT, padding=32)
    unpadded = EncryptedText(keyring=ring, context=CONTEXT)
    assert "ada" == unpadded.process_result_value(padded.process_bind_param("ada", None), None)
    assert "ada" == padded.process_result_value(unpadded.process_bind_param("ada", None), None)


def test_padding_renders_in_migrations() -> None:
    """repr() and so Alembic's rendering keep the padding argument."""

    class Context:
        def __init__(self) -> None:
            self.imports: set[str] = set()

    context = Context()
    assert "EncryptedText(padding=True)" == repr(EncryptedText(padding=True))
    assert "sa_fieldcrypt.EncryptedBytes(context=False, padding=64)" == render_item(
        "type", EncryptedBytes(context=False, padding=64), context
    )
    assert {"import sa_fieldcrypt"} == context.imports


# -- rotation ---------------------------------------------------------------------------------


@pytest.fixture
def ring() -> Iterator[Keyring]:
    keyring = Keyring({"k1": generate_key("aes-gcm-siv")})
    previous = swap_default_keys(None)
    sa_fieldcrypt.configure(keyring=keyring)
    yield keyring
    swap_default_keys(previous)


def _table(engine: Engine) -> Table:
    table = Table(
        "fc_padding",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", Text),
    )
    table.metadata.drop_all(engine)
    table.metadata.create_all(engine)
    return table


@pytest.mark.parametrize("context", [True, False], ids=["bound", "unbound"])
def test_rotation_pads_and_unpads_a_column_as_it_says(
    engine: Engine, ring: Keyring, context: bool
) -> None:
    """status counts values padded otherwise than the column; rotate re-encrypts only those."""
    table = _table(engine)
    bound_to = "fc_padding.email" if context else None
    try:
        plain = [f"user{i}@example.com" for i in range(12)]
        with engine.begin() as conn:
            conn.execute(
                insert(table),
                [
                    {"id": i, "email": encrypt(ring, v.encode(), context=bound_to)}
                    for i, v in enumerate(plain)
                ],
            )
        # Unbound, the unpadded header (fc1:id:) is a prefix of the padded one (fc1:id:p:).
        for padding, flag in ((True, True), (False, False), (48, True)):
            column = jobs.reflect_column(
                engine, "fc_padding", "email", EncryptedText(padding=padding, context=context)
            )
            before = jobs.status(engine, [column]).columns[0]
            assert (12, 12) == (before.repad, before.pending)
            assert 12 == jobs.rotate(engine, [column]).written
            after = jobs.status(engine, [column]).columns[0]
            assert (0, 0) == (after.repad, after.pending)
            assert 0 == jobs.rotate(engine, [column]).written
            with engine.connect() as conn:
                stored = conn.execute(select(table.c.email).order_by(table.c.id)).scalars().all()
            assert {flag} == {inspect_token(t).padded for t in stored}
            assert {bound_to is not None} == {inspect_token(t).flag is not None for t in stored}
            assert plain == [column.codec.process_result_value(t, None) for t in stored]
            if padding == 48:
                assert 1 == len({len(t) for t in stored})  # every email under 48 bytes
    finally:
        table.metadata.drop_all(engine)
