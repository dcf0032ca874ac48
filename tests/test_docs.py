"""Docs that cannot drift: every exported name is in the API reference, and every page the
reference or the README links to exists."""

from __future__ import annotations

import re
from pathlib import Path

import kvstore

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_every_export_is_in_the_api_reference() -> None:
    text = (DOCS / "api.md").read_text()
    missing = [name for name in kvstore.__all__ if f"`{name}" not in text]
    assert missing == []


def test_links_between_pages_resolve() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
