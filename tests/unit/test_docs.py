"""The docs describe the code as built: the settings table and the module table cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from gpuops.settings import SETTINGS, markdown_table

DOCS = Path(__file__).resolve().parents[2] / "docs"
PACKAGE = Path(__file__).resolve().parents[2] / "gpuops"


def test_configuration_page_shows_the_settings_table_as_generated():
    page = (DOCS / "configuration.md").read_text()
    assert markdown_table() in page, "regenerate it: python -c 'from gpuops.settings import markdown_table; " \
                                     "print(markdown_table())'"


def test_every_setting_has_help_and_a_default_or_says_none():
    for key, s in SETTINGS.items():
        assert s.help.strip(), key
        assert re.fullmatch(r"[a-z][a-z0-9_]*", key), key


def test_development_page_names_every_module_of_the_package():
    page = (DOCS / "development.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name in ("__init__.py", "__main__.py") or rel.parts[0] == "demo":
            continue  # packages are named by their modules; demo/ has its own page (demo.md)
        if rel.parts[0] == "probes" and rel.parts[1] == "loadtest":
            continue  # listed as one row (probes/loadtest/), each module in its package docstring
        if rel.parts[0] == "hosts":
            continue  # listed as one row (hosts/), each module in its package docstring
        if f"`{rel.as_posix()}`" not in page:
            missing.append(rel.as_posix())
    assert missing == [], f"docs/development.md's module table lacks {missing}"
