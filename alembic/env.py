"""Alembic environment of kvstore's own migrations.

Run three ways, all ending up in :func:`run`:

* ``kvstore.migrations.upgrade(bind)`` (and ``kvstore db upgrade``) pass a Connection in
  ``config.attributes["connection"]`` and the prefix in ``config.attributes["table_prefix"]``
  (the Alembic cookbook's "sharing a connection" pattern): the migrations run in that
  connection's transaction and the caller decides when it commits.
* ``alembic upgrade head -x url=URL -x table_prefix=PREFIX`` from a source checkout: the URL
  comes from ``-x url``, else ``$KVSTORE_URL``, else ``sqlalchemy.url`` in the ini file, else
  ``sqlite:///kvstore.db``; every revision runs in one transaction, committed at the end.
* ``alembic upgrade head --sql ...`` renders the SQL instead (offline mode).

The revision is recorded in ``<prefix>alembic_version``, so kvstore never reads or writes the
application's own ``alembic_version``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from sqlalchemy.engine import Connection

from alembic import context
from kvstore import migrations
from kvstore._schema import DEFAULT_TABLE_PREFIX, check_table_prefix, tables

config = context.config
_x = context.get_x_argument(as_dictionary=True)
prefix = check_table_prefix(
    config.attributes.get("table_prefix") or _x.get("table_prefix") or DEFAULT_TABLE_PREFIX
)
target_metadata = tables(prefix).metadata
options = migrations.context_options(prefix)

# Only the alembic command line configures logging, and only from an ini file that has logging
# sections: a program that calls kvstore.migrations.upgrade() keeps its own logging set-up.
if (
    config.config_file_name is not None
    and "connection" not in config.attributes
    and config.file_config.has_section("loggers")
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return (
        _x.get("url")
        or os.environ.get("KVSTORE_URL")
        or config.get_main_option("sqlalchemy.url")
        or "sqlite:///kvstore.db"
    )


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, **options)
    with context.begin_transaction():
        context.run_migrations(table_prefix=prefix)


if context.is_offline_mode():
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        **options,
    )
    with context.begin_transaction():
        context.run_migrations(table_prefix=prefix)
elif (given := config.attributes.get("connection")) is not None:
    run(given)
else:
    with migrations.begin(_url()) as conn:
        run(conn)
