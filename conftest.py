"""README and docs examples are doctests: they run in a scratch directory with ``kvstore``
imported, so ``sqlite:///kv.db`` never lands in the checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import kvstore


@pytest.fixture(autouse=True)
def _docs_sandbox(doctest_namespace: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doctest_namespace["kvstore"] = kvstore
    monkeypatch.chdir(tmp_path)
