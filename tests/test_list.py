"""PersistentList: CPython's own list tests, a state machine against ``list``, errors,
transactions, namespaces, durability and concurrency, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from test import list_tests  # CPython's own tests for list and UserList

import kvstore
from kvstore.lists import PersistentList

from conftest import Backend


# -- helpers ----------------------------------------------------------------------------------
def _positions(pl: PersistentList) -> tuple[int, list[int]]:
    """The header's length and the stored positions, straight from the tables."""
    store = pl.store
    sql = store._b.sql(
        "test.list_positions",
        "SELECT h.length, i.pos FROM {l} h LEFT JOIN {li} i ON i.list_id = h.id"
        " WHERE h.namespace = :ns AND h.name = :name ORDER BY i.pos",
    )
    with store._connection() as conn:
        rows = conn.execute(sql, {"ns": store._ns, "name": pl.name}).fetchall()
    if not rows:
        return 0, []
    return int(rows[0][0]), [int(r[1]) for r in rows if r[1] is not None]


def _check_contiguous(pl: PersistentList) -> None:
    length, positions = _positions(pl)
    assert positions == list(range(length))


def _outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("raised", type(exc), str(exc))


# -- CPython's list tests ---------------------------------------------------------------------
class _ByReference:
    """A serializer that keeps each object in this process and stores only a token.

    CPython's list tests store objects of classes defined inside the test functions (which no
    serializer can encode), a list inside itself, and check object identity (``assertIs``).
    They test sequence behaviour, not serialization, so here every value is kept by
    reference: the positions, lengths, shifting and slicing still all happen in SQL.
    """

    def __init__(self) -> None:
        self._objects: dict[int, Any] = {}
        self._ids = itertools.count()

    def dumps(self, obj: Any) -> bytes:
        token = next(self._ids)
        self._objects[token] = obj
        return str(token).encode()

    def loads(self, data: bytes) -> Any:
        return self._objects[int(data)]


class _CPythonListTests(list_tests.CommonTest):
    """``type2test(iterable)`` makes a new PersistentList on a store made for each test."""

    __test__ = False

    def open_store(self) -> kvstore.Store:
        raise NotImplementedError

    def setUp(self) -> None:
        store = self.open_store()
        self.addCleanup(store.close)
        serializer = _ByReference()
        names = itertools.count()

        class FreshList(PersistentList):
            def __init__(self, iterable: Any = (), /) -> None:
                if "_store" not in self.__dict__:
                    super().__init__(store, f"l{next(names)}", serializer=serializer)
                else:  # list.__init__ on an existing list replaces its items
                    self.clear()
                self.extend(iterable)

        self.type2test = FreshList

    def test_pickle(self) -> None:
        # Overridden: a PersistentList is a live view on a database connection, so pickling
        # it refuses with a hint rather than copying (the inherited test expects a copy that
        # compares equal). Its items pickle as a plain list.
        lst = self.type2test([4, 5, 6, 7])
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            with self.assertRaisesRegex(TypeError, "cannot be pickled"):
                pickle.dumps(lst, proto)
            self.assertEqual(pickle.loads(pickle.dumps(list(lst), proto)), lst)


class TestCPythonListTestsSQLite(_CPythonListTests):
    __test__ = True

    def open_store(self) -> kvstore.Store:
        return kvstore.connect("sqlite://")


class TestCPythonListTestsPostgres(_CPythonListTests):
    __test__ = True

    @pytest.fixture(autouse=True)
    def _postgres(self, pg_engine: sa.Engine) -> Iterator[None]:
        self._engine = pg_engine
        self._namespace = "t" + uuid.uuid4().hex[:12]
        yield
        lists = kvstore.models.tables().lists
        with pg_engine.begin() as conn:  # the items go with their headers (ON DELETE CASCADE)
            conn.execute(lists.delete().where(lists.c.namespace == self._namespace))

    def open_store(self) -> kvstore.Store:
        return kvstore.connect(self._engine, namespace=self._namespace)
