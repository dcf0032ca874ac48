"""The properties a namespace-sharded database relies on (docs/sharding.md), checked
mechanically: every table's keys lead with the namespace, and every statement kvstore runs in
a namespace names ``namespace = ...`` for every kvstore table it reads or writes.

A distributed PostgreSQL (Citus, distributed by ``namespace``) then keeps each namespace's rows
of every table on one node and routes each statement to that node alone.
"""

from __future__ import annotations

import os
import re
import uuid

import _sql
import pytest
import sqlalchemy as sa

import kvstore
from kvstore import _dialect
from kvstore._schema import tables

KVSTORE_BACKENDS = ["sqlite-file", "postgresql", "mariadb"]

# What the statement check does not apply to, and why:
CROSS_NAMESPACE = (
    # Store.namespaces(): one row per namespace, over all of them by definition
    "GROUP BY namespace",
)


def _leads_with_namespace(columns: list[str]) -> bool:
    return bool(columns) and columns[0] == "namespace"


def test_every_table_key_and_constraint_leads_with_the_namespace() -> None:
    t = tables()
    for table in t.metadata.sorted_tables:
        assert _leads_with_namespace([c.name for c in table.primary_key.columns]), table.name
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint | sa.ForeignKeyConstraint):
                cols = [c.name for c in constraint.columns]
                assert _leads_with_namespace(cols), (table.name, constraint.name, cols)
            if isinstance(constraint, sa.ForeignKeyConstraint):
                referred = [e.column.name for e in constraint.elements]
                assert _leads_with_namespace(referred), (table.name, constraint.name)
        for index in table.indexes:
            cols = [c.name for c in index.columns]
            assert _leads_with_namespace(cols), (table.name, index.name, cols)


def test_the_database_has_the_keys_the_models_say(store: kvstore.Store) -> None:
    """The live schema, as the dialect reflects it. MariaDB's index entries are the one
    exception, on purpose (kvstore._dialect.mysql_primary_key: InnoDB's key length limit)."""
    engine = _sql.engine(store)
    assert engine is not None
    inspector = sa.inspect(engine)
    mysql = store.dialect_name in ("mysql", "mariadb")
    for table in tables().metadata.sorted_tables:
        pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
        if mysql and table.name == tables().index_entries.name:
            assert pk == ["index_id", "ivalue", "key"]
        else:
            assert _leads_with_namespace(pk), (table.name, pk)
        for uq in inspector.get_unique_constraints(table.name):
            assert _leads_with_namespace(uq["column_names"]), (table.name, uq)
        for fk in inspector.get_foreign_keys(table.name):
            assert _leads_with_namespace(fk["constrained_columns"]), (table.name, fk)
            assert _leads_with_namespace(fk["referred_columns"]), (table.name, fk)
        for ix in inspector.get_indexes(table.name):
            if ix.get("unique") and mysql and ix["name"] == "PRIMARY":
                continue
            assert _leads_with_namespace(list(ix["column_names"])), (table.name, ix)


_REF = re.compile(
    r"\b(FROM|JOIN|UPDATE|INTO)\s+`?(?P<table>kv_[a-z_]+)`?(?:\s+(?:AS\s+)?(?P<alias>(?!WHERE\b|"
    r"SET\b|ON\b|USING\b|JOIN\b|LEFT\b|VALUES\b|SELECT\b|ORDER\b|GROUP\b|LIMIT\b|\()[a-z_]\w*))?",
    re.IGNORECASE,
)


def unpinned(sql: str) -> list[str]:
    """The references to kvstore tables in ``sql`` that do not name the namespace: an INSERT
    whose column list lacks it, or a read/update/delete of a table (by its alias) without a
    ``namespace =`` condition on it."""
    out = []
    flat = " ".join(sql.replace("`", "").split())
    # one table read: an unqualified "namespace =" can only be its own (INSERT ... SELECT)
    reads = [m for m in _REF.finditer(flat) if m.group(1).upper() != "INTO"]
    for m in _REF.finditer(flat):
        table, alias = m.group("table"), m.group("alias")
        if table.endswith("alembic_version"):
            continue
        if m.group(1).upper() == "INTO":
            if not re.match(r"\s*\(\s*namespace\b", flat[m.end("table") :]):
                out.append(f"INSERT INTO {table} without the namespace")
            continue
        name = alias or table
        qualified = rf"\b{re.escape(name)}\.namespace\s*="
        bare = r"(?<![.\w])namespace\s*="
        alone = alias is None or len(reads) == 1
        if not (re.search(qualified, flat) or (alone and re.search(bare, flat))):
            out.append(f"{table} {alias or ''}".strip())
    return out


def test_the_checker_catches_an_unpinned_statement() -> None:
    assert unpinned("SELECT data FROM kv_chunks WHERE blob_id = ?") == ["kv_chunks"]
    assert unpinned("INSERT INTO kv_chunks (blob_id, n) VALUES (?, ?)")
    assert unpinned(
        "SELECT i.key FROM kv_index_entries i JOIN kv_entries e ON e.namespace = ? "
        "WHERE i.index_id = ?"
    ) == ["kv_index_entries i"]
    assert unpinned("SELECT 1 FROM kv_entries e WHERE e.namespace = ? AND e.key = ?") == []


def _workload(store: kvstore.Store) -> None:
    """Every kind of call a namespace sees: key-value, blobs, TTL, CAS, batches, copy/move,
    indexes, transactions, and the collections."""
    s = store
    s.put("a", b"1")
    s.get("a")
    assert "a" in s
    s.put("b", b'{"tag": "x", "n": 2}', ttl_secs=3600)
    s.put_many({f"m{i}": b'{"tag": "y", "n": 1}' for i in range(5)})
    s.get_many(["a", "b", "m1", "zz"])
    s.keys(prefix="m")
    list(s.iter_prefixes("1"))
    len(s)
    s.stat("a")
    s.incr("counter", 2)
    v = s.stat("a").version
    s.put("a", b"2", expected_version=v)
    s.put("big", os.urandom(3 * 1024), ttl_secs=3600)
    s.get("big")
    with s.open("big") as f:
        f.read()
    s.copy("big", "big2")
    s.move("big2", "big3")
    s.create_index("by_tag", kvstore.json_field("tag"))
    s.create_index("by_n", kvstore.json_field("n"), unique=False)
    s.create_index("u", kvstore.json_field("email"), unique=True)
    s.put("e1", b'{"email": "a@x", "tag": "z"}')
    with pytest.raises(kvstore.UniqueViolation):
        s.put("e2", b'{"email": "a@x"}')
    s.find("by_tag", "y")
    s.find("by_tag", in_=["x", "y"])
    s.find("by_n", ge=1, limit=2)
    s.count("by_tag", "y")
    s.rebuild_index("by_n")
    s.put_many({"m1": b'{"tag": "w"}'})
    s.copy("b", "b2")
    with s.transaction() as tx:
        tx.put("t1", b'{"tag": "t"}')
        tx.get("a")
        tx.delete("m2")
    s.delete("m3")
    s.delete_many(["m4", "t1"])
    s.drop_index("by_n")
    d = s.dict("d")
    d["x"] = 1
    d.get("x")
    d.setdefault("y", 2)
    d.pop("x")
    list(d.items())
    len(d)
    st = s.set("s")
    st.add(1)
    st.discard(1)
    lst = s.list("l")
    lst.extend([1, 2, 3])
    lst.insert(1, 9)
    lst[0] = 5
    lst[1:2]
    del lst[0]
    lst.reverse()
    lst *= 2
    lst.pop()
    list(lst)
    lst.sort()
    lst.clear()
    s.purge_expired()
    s.delete("big")
    s.delete_many(s.keys())


def test_every_statement_in_a_namespace_names_the_namespace(store: kvstore.Store) -> None:
    ns_store = kvstore.connect(
        _sql.engine(store), namespace="layout-" + uuid.uuid4().hex[:8], create=False
    )
    try:
        with _sql.recorded(ns_store) as rec:
            _workload(ns_store)
        seen = [st.sql for st in rec if re.search(r"\bkv_", st.sql)]
        assert len(seen) > 50  # the workload ran through the recorder
        bad = {
            sql: unpinned(sql)
            for sql in seen
            if unpinned(sql) and not any(x in sql for x in CROSS_NAMESPACE)
        }
        assert bad == {}
    finally:
        ns_store.close()


def test_every_trigger_statement_names_the_namespace() -> None:
    for dialect in ("sqlite", "postgresql", "mariadb"):
        for trigger in _dialect.trigger_sql(dialect, "kv_"):
            if "BEGIN" not in trigger:
                continue  # (PostgreSQL's CREATE TRIGGER: its function is checked)
            body = trigger.split("BEGIN", 1)[1]
            for stmt in re.split(r";", body):
                if re.search(r"\b(DELETE|UPDATE|INSERT)\b", stmt):
                    assert re.search(r"\b(OLD|NEW|o|ix)\.namespace\b|VALUES \(NEW\.namespace", stmt), (
                        dialect,
                        stmt,
                    )
