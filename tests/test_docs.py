"""Docs that cannot drift: the API reference documents exactly the exported names, and every
page the reference or the README links to exists."""

from __future__ import annotations

import re
from pathlib import Path

import kvstore

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def documented_names(markdown: str) -> set[str]:
    """The names the API reference documents: the identifier that opens each code span of a
    table row's first cell (`connect(bind, ...)` documents ``connect``; a cell may name
    several) and of a heading. Prose mentions and the other cells document nothing."""
    names: set[str] = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            cells = [line.lstrip("#")]
        elif line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line):
            cells = [line.split("|")[1]]
        else:
            continue
        for span in re.findall(r"`([^`]+)`", cells[0]):
            m = re.match(r"[A-Za-z_]\w*", span)
            # `transfer.import_lines` documents a submodule's function, not a top-level export
            if m and span[m.end() : m.end() + 1] != ".":
                names.add(m.group(0))
    return names


def test_documented_names_are_exact() -> None:
    text = (
        "| `StoreDecorator` | uses `Store` |\n| name | `cached(store)` |\n## `Transaction`\n`put`"
        "\n| `transfer.import_lines(store)` | a submodule's |"
    )
    assert documented_names(text) == {"StoreDecorator", "Transaction"}


def test_every_export_is_in_the_api_reference() -> None:
    documented = documented_names((DOCS / "api.md").read_text())
    missing = sorted(set(kvstore.__all__) - documented)
    assert missing == []
    # and the reference documents no name that is not exported
    assert sorted(documented - set(kvstore.__all__)) == []


def test_links_between_pages_resolve() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
