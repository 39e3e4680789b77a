"""README.md documents every setting of shared/config.py with its current default."""
import pathlib
import re

import pytest

from shared.config import SETTINGS

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def settings_section() -> str:
    text = README.read_text()
    match = re.search(r"^## Settings\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Settings' section"
    return match.group(1)


def table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in settings_section().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([A-Z0-9_<>]+)`", cells[0]) if cells else None
        if name:
            rows[name.group(1)] = cells[1:]
    return rows


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_documented_with_its_default(setting):
    rows = table_rows()
    assert setting.name in rows, f"{setting.name} is missing from the Settings table of README.md"
    default_cell = rows[setting.name][0]
    expected = "(empty)" if setting.default == "" else f"`{setting.default}`"
    assert default_cell.startswith(expected), (
        f"README.md gives {setting.name} the default {default_cell!r}, shared/config.py says {expected}")


def test_broker_uri_is_documented():
    assert "AMQP_URI" in table_rows()
