"""The collections are generic for type checkers: real mypy runs (``mypy.api``) on small
programs that use ``PersistentDict[K, V]``, ``PersistentList[T]`` and ``PersistentSet[T]``,
one that must type-check and one whose every marked line must be an error; and the same
subscriptions at runtime.

mypy reads the checkout's ``kvstore`` (``mypy_path``), under ``--strict``, with a cache of its
own in a temporary directory, and runs once for the module: the first run analyses
SQLAlchemy's stubs too, which takes some seconds.
"""

from __future__ import annotations

import pickle
import re
import textwrap
from collections.abc import MutableMapping, MutableSequence, MutableSet
from pathlib import Path
from typing import Any

import pytest
from mypy import api

import kvstore
from kvstore import PersistentDict, PersistentList, PersistentSet

ROOT = Path(__file__).resolve().parents[1]

# Code a user writes: every line must type-check, and each reveal_type shows what the
# methods return.
GOOD = """
from collections.abc import ItemsView, KeysView, ValuesView

import kvstore
from kvstore import PersistentDict, PersistentList, PersistentSet

store = kvstore.connect("sqlite://")

d: PersistentDict[str, int] = store.dict("scores")
d["a"] = 1
d.update({"b": 2}, c=3)
d.update([("d", 4)])
d.set_many({"e": 5})
reveal_type(d["a"])  # R: int
reveal_type(d.get("a"))  # R: int | None
reveal_type(d.get("a", 0))  # R: int
reveal_type(d.get("a", "none"))  # R: int | str
reveal_type(d.pop("a"))  # R: int
reveal_type(d.pop("a", None))  # R: int | None
reveal_type(d.setdefault("z", 0))  # R: int
reveal_type(d.popitem())  # R: tuple[str, int]
reveal_type(d.copy())  # R: dict[str, int]
reveal_type(d | {"x": 1.5})  # R: dict[str, int | float]
reveal_type(d.get_many(["a", "b"]))  # R: dict[str, int]
reveal_type(d.find("by_score", 1))  # R: list[str]
keys: KeysView[str] = d.keys()
values: ValuesView[int] = d.values()
items: ItemsView[str, int] = d.items()
total: int = sum(d.values())
for key, value in d.items():
    reveal_type(key)  # R: str
    reveal_type(value)  # R: int
with PersistentDict[str, int]("sqlite://", "settings") as opened:
    reveal_type(opened)  # R: PersistentDict[str, int]
made = PersistentDict.fromkeys(["a", "b"], 0, store=store, name="zeros")
reveal_type(made)  # R: PersistentDict[str, int]
untyped = store.dict("anything")
reveal_type(untyped)  # R: PersistentDict[Any, Any]

lst: PersistentList[int] = store.list("numbers")
lst.append(1)
lst.extend([2, 3])
lst.insert(0, 0)
lst[0] = 10
lst[1:2] = [20, 21]
lst += [4]
reveal_type(lst[0])  # R: int
reveal_type(lst[1:3])  # R: list[int]
reveal_type(lst.pop())  # R: int
reveal_type(lst.copy())  # R: list[int]
reveal_type(lst + ["x"])  # R: list[int | str]
reveal_type(lst * 2)  # R: list[int]
reveal_type(list(reversed(lst)))  # R: list[int]
reveal_type(store.list("anything"))  # R: PersistentList[Any]

tags: PersistentSet[str] = store.set("tags")
tags.add("x")
tags.discard("y")
tags |= {"z"}
reveal_type(tags.pop())  # R: str
reveal_type(tags.copy())  # R: set[str]
reveal_type(tags | {1})  # R: set[str | int]
reveal_type(tags & {"x"})  # R: set[str]
reveal_type(tags - {"x"})  # R: set[str]
reveal_type(tags.union([1]))  # R: set[str | int]
reveal_type(tags.intersection(["x"]))  # R: set[str]
for tag in tags:
    reveal_type(tag)  # R: str
reveal_type(store.set("anything"))  # R: PersistentSet[Any]
"""

# Mistakes a type checker must catch: each line marked ``# E`` is an error, and no other.
BAD = """
import kvstore
from kvstore import PersistentDict, PersistentList, PersistentSet

store = kvstore.connect("sqlite://")

d: PersistentDict[str, int] = store.dict("scores")
text: str = d["a"]  # E
d["b"] = "two"  # E
d[3] = 3  # E
d.update({"c": "three"})  # E
d.update(c="three")  # E
wrong: dict[str, str] = d.copy()  # E
by_int: PersistentDict[int, int] = store.dict("by_int")
by_int.update(a=1)  # E

lst: PersistentList[int] = store.list("numbers")
lst.append("x")  # E
lst.extend(["x"])  # E
name: str = lst[0]  # E
names: list[str] = lst[0:2]  # E

tags: PersistentSet[str] = store.set("tags")
tags.add(1)  # E
number: int = tags.pop()  # E

too_many: PersistentDict[str, int, int]  # E
"""


def _parse(output: str, filename: str) -> tuple[dict[int, str], set[int]]:
    """mypy's output for one file: revealed types by line, and the lines with errors."""
    revealed: dict[int, str] = {}
    errors: set[int] = set()
    for line in output.splitlines():
        m = re.match(rf"{re.escape(filename)}:(\d+): (error|note): (.*)", line)
        if m is None:
            continue
        lineno, kind, text = int(m.group(1)), m.group(2), m.group(3)
        if kind == "error":
            errors.add(lineno)
        elif (r := re.match(r'Revealed type is "(.*)"', text)) is not None:
            revealed[lineno] = r.group(1)
    return revealed, errors


def _short(type_text: str) -> str:
    """A revealed type without module qualifiers, as mypy >= 2 prints it anyway
    (``builtins.int`` is ``int``, ``kvstore.collections.PersistentDict`` is ``PersistentDict``)."""
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", type_text)


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One mypy run over both programs (its result, and where each program's lines are)."""
    tmp = tmp_path_factory.mktemp("typing")
    (tmp / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp / "bad.py").write_text(textwrap.dedent(BAD))
    config = tmp / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\npython_version = 3.11\nmypy_path = {ROOT}\n")
    stdout, stderr, status = api.run(
        [
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp / "cache"),
            "--no-error-summary",
            "--show-absolute-path",
            str(tmp / "good.py"),
            str(tmp / "bad.py"),
        ]
    )
    assert stderr == "", stderr
    return {"out": stdout, "status": status, "dir": tmp}


def _marked(source: str, mark: str) -> dict[int, str]:
    """Line number -> what follows ``# <mark>`` on that line, in the dedented source."""
    out = {}
    for lineno, line in enumerate(textwrap.dedent(source).splitlines(), start=1):
        if f"# {mark}" in line:
            out[lineno] = line.split(f"# {mark}", 1)[1].lstrip(":").strip()
    return out


def test_correct_code_type_checks_and_methods_return_the_parameters(
    mypy_run: dict[str, Any],
) -> None:
    revealed, errors = _parse(mypy_run["out"], str(mypy_run["dir"] / "good.py"))
    assert errors == set(), mypy_run["out"]
    expected = _marked(GOOD, "R")
    assert {line: _short(t) for line, t in revealed.items()} == expected, mypy_run["out"]


def test_wrong_code_is_an_error_on_every_marked_line_and_no_other(
    mypy_run: dict[str, Any],
) -> None:
    _, errors = _parse(mypy_run["out"], str(mypy_run["dir"] / "bad.py"))
    assert errors == set(_marked(BAD, "E")), mypy_run["out"]
    assert mypy_run["status"] == 1


def _line_of(source: str, start: str) -> int:
    lines = textwrap.dedent(source).splitlines()
    return next(i for i, line in enumerate(lines, start=1) if line.startswith(start))


def test_the_errors_say_what_was_expected(mypy_run: dict[str, Any]) -> None:
    out = mypy_run["out"]
    # d["a"] is an int, not the str it is assigned to
    line = _line_of(BAD, 'text: str = d["a"]')
    assert re.search(
        rf'bad\.py:{line}: error: Incompatible types in assignment \(expression has type "int", '
        r'variable has type "str"\)',
        out,
    ), out
    line = _line_of(BAD, 'lst.append("x")')
    assert re.search(
        rf'bad\.py:{line}: error: Argument 1 to "append" of "PersistentList" has incompatible '
        r'type "str"; expected "int"',
        out,
    ), out


# -- runtime ------------------------------------------------------------------------------------
def test_subscription_works_at_runtime() -> None:
    alias = PersistentDict[str, int]
    assert alias.__origin__ is PersistentDict
    assert alias.__args__ == (str, int)
    assert PersistentList[int].__origin__ is PersistentList
    assert PersistentSet[str].__args__ == (str,)
    assert kvstore.PersistentDict[str, list[int]].__args__ == (str, list[int])
    # the parameters default to Any (PEP 696): one given, the other is Any
    assert PersistentDict[str].__args__ == (str, Any)
    with pytest.raises(TypeError, match="Too many arguments"):
        PersistentDict[str, int, int]  # type: ignore[misc]
    with pytest.raises(TypeError, match="Too many arguments"):
        PersistentList[int, int]  # type: ignore[misc]


def test_the_abc_bases_are_kept() -> None:
    assert issubclass(PersistentDict, MutableMapping)
    assert issubclass(PersistentList, MutableSequence)
    assert issubclass(PersistentSet, MutableSet)


def test_a_subscripted_class_opens_a_working_collection(store: kvstore.Store) -> None:
    d = PersistentDict[str, int](store, "typed")
    d["a"] = 1
    assert type(d) is PersistentDict
    assert store.dict("typed") == {"a": 1}
    lst = PersistentList[int](store, "typed")
    lst.append(2)
    assert type(lst) is PersistentList and store.list("typed") == [2]
    s = PersistentSet[str](store, "typed")
    s.add("x")
    assert type(s) is PersistentSet and store.set("typed") == {"x"}


def test_a_subscripted_dict_still_pickles(tmp_path: Path) -> None:
    with PersistentDict[str, int](f"sqlite:///{tmp_path / 'p.db'}", "typed") as d:
        d["a"] = 1
        with pickle.loads(pickle.dumps(d)) as again:
            assert type(again) is PersistentDict
            assert again == {"a": 1}
