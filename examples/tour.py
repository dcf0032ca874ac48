"""A two-minute tour of kvstore on the embedded SQLite default (creates ./kvstore.db)."""

import json

import kvstore

with kvstore.connect("sqlite:///kvstore.db", namespace="tour") as store:
    store.delete_many(store.keys())  # start the tour from scratch each run

    # key-value, minimalkv-compatible
    store.put("greeting", b"hello, world")
    print("get:", store.get("greeting").decode())

    # several keys change together, or not at all
    with store.transaction() as tx:
        order = tx.incr("orders-count")
        tx.put(f"order-{order}", json.dumps({"email": "ada@example.org", "total": 42}).encode())
    print("keys:", store.keys())

    # a unique secondary index over a JSON field
    store.create_index("by_email", kvstore.json_field("email"), unique=True)
    print("find:", store.find("by_email", "ada@example.org"))
    try:
        store.put("order-2", json.dumps({"email": "ada@example.org"}).encode())
    except kvstore.UniqueViolation as exc:
        print("refused:", exc)

    # persistent collections: live views, durable when each call returns
    settings = store.dict("settings")
    settings["theme"] = "dark"
    events = store.list("events")
    events.extend(["started", "ordered"])
    print("dict:", dict(settings), "list:", list(events), "len:", len(events))
    settings.clear()
    events.clear()
    store.drop_index("by_email")
