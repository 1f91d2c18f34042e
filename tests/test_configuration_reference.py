"""docs/configuration.md lists every setting, exactly as the settings model defines it."""

from __future__ import annotations

from pathlib import Path

from pydantic.fields import FieldInfo

from sa_fieldcrypt.settings import FieldCryptSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BEGIN = "<!-- settings table: generated from FieldCryptSettings, checked by a test -->"
END = "<!-- end of settings table -->"


def _variable(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    return alias if isinstance(alias, str) else f"FIELDCRYPT_{name.upper()}"


def _default(field: FieldInfo) -> str:
    return "unset" if field.default is None else f"`{field.default}`"


def settings_table() -> str:
    """The markdown table of every setting: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in FieldCryptSettings.model_fields.items():
        lines.append(f"| `{_variable(name, field)}` | {_default(field)} | {field.description} |")
    return "\n".join(lines)


def test_every_setting_is_documented_as_defined() -> None:
    """The table in docs/configuration.md is the one the settings model generates."""
    text = DOC.read_text()
    documented = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert settings_table() == documented, (
        "docs/configuration.md is out of date; replace its table with:\n" + settings_table()
    )


def test_every_setting_has_a_description() -> None:
    """No setting reaches users without an explanation."""
    undocumented = [n for n, f in FieldCryptSettings.model_fields.items() if not f.description]
    assert [] == undocumented


if __name__ == "__main__":
    # Regenerate the table in place: python tests/test_configuration_reference.py
    head, rest = DOC.read_text().split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n{settings_table()}\n{END}{rest.split(END, 1)[1]}")
