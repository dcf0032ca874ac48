"""The ``kvstore`` command line: a thin client of the library.

Every command parses its arguments, calls public library functions and prints the result.
Errors never show a traceback: :class:`KVStoreGroup` turns each one into a single line on
stderr (``kvstore: error: ...``, with any password in a database URL masked) and an exit
status: 0 success, 1 a missing key or index (and ``db check`` differences, and any failure of
the database or of the data, such as a unique index violation), 2 bad usage (click's usage
errors, an invalid key, a bad URL, bad JSON). The library never imports this module.

Commands that write open the store with ``create=True``; commands that only read (marked
with :func:`reads`) open it with ``create=False`` and create nothing, not even a SQLite file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import re
import stat as stat_module
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import click
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from . import __version__, migrations, transfer
from ._dialect import engine_from_url
from ._indexing import json_field
from ._validate import check_key, check_prefix
from .base import EntryInfo, NamespaceInfo
from .collections import PersistentDict
from .errors import (
    DatabaseError,
    DatabaseUnavailableError,
    InvalidKeyError,
    KVStoreError,
    LockTimeoutError,
    NotFoundError,
    StorageFullError,
    UnknownIndexError,
)
from .store import Store, Transaction, connect

__all__ = ["KVStoreGroup", "cli", "main"]

DEFAULT_URL = "sqlite:///kvstore.db"
#: Inputs and outputs with more lines than this get a progress bar (when stderr is a terminal).
PROGRESS_THRESHOLD = 1000
IMPORT_BATCH = transfer.DEFAULT_BATCH_SIZE

EXIT_OK, EXIT_MISSING, EXIT_USAGE = 0, 1, 2

P = ParamSpec("P")
R = TypeVar("R")

# ``scheme://user:password@host``: the password is whatever lies between the user's colon and
# the last ``@`` before the host, so a password containing ``@`` or ``:`` is masked whole.
_URL_PASSWORD_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^\s]*)@")
_DRIVER_MODULES = {
    "sqlite3",
    "_sqlite3",
    "psycopg",
    "psycopg2",
    "psycopg_binary",
    "pymysql",
    "mariadb",
}


# -- errors and exit codes ---------------------------------------------------------------------
class CommandError(Exception):
    """A failure the CLI has already put into words, with its exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _one_line(text: str, limit: int = 600) -> str:
    # Driver messages span lines ("... failed: Connection refused\n\tIs the server running
    # ..."); the contract is one line, so whitespace runs collapse to one space.
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _secrets(args: Sequence[str]) -> list[str]:
    """Every password that appears in a URL among the arguments or in ``$KVSTORE_URL``."""
    from urllib.parse import quote, unquote

    found: set[str] = set()
    for text in [*args, os.environ.get("KVSTORE_URL", "")]:
        for m in _URL_PASSWORD_RE.finditer(text):
            pw = m.group("pw")
            if pw:
                found |= {pw, unquote(pw), quote(unquote(pw), safe="")}
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_secrets(message: str, secrets: Iterable[str] = ()) -> str:
    """``message`` with URL passwords replaced by ``***``: those in URL syntax, and the given
    literal ``secrets`` wherever they appear (drivers sometimes echo them without the URL)."""
    message = _URL_PASSWORD_RE.sub(lambda m: m.group("head") + "***@", message)
    for secret in secrets:
        message = message.replace(secret, "***")
    return message


def _is_driver_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in _DRIVER_MODULES


def _database_error(exc: BaseException) -> str:
    if isinstance(exc, sqlalchemy.exc.DBAPIError | DatabaseError) and exc.orig is not None:
        # SQLAlchemy's text adds the SQL and a link to its docs; the driver's says what happened.
        return str(exc.orig) or type(exc.orig).__name__
    return str(exc) or type(exc).__name__


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit status and the (unmasked) one-line message for an exception."""
    if isinstance(exc, CommandError):
        return exc.exit_code, exc.message
    if isinstance(exc, click.UsageError):
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        return EXIT_USAGE, exc.format_message() + hint
    if isinstance(exc, click.ClickException):
        return exc.exit_code, exc.format_message()
    if isinstance(exc, click.Abort | KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, UnknownIndexError):
        return EXIT_MISSING, str(exc)
    if isinstance(exc, NotFoundError):
        return EXIT_MISSING, f"no such key: {exc.key!r}"
    if isinstance(exc, InvalidKeyError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, DatabaseError):
        return 1, f"database error: {_database_error(exc)}"
    if isinstance(exc, KVStoreError):
        # ConflictError, UniqueViolation, IndexNotDeclaredError, TransactionError, ...:
        # the request was well formed but the data refused it.
        return 1, str(exc)
    if isinstance(exc, sqlalchemy.exc.ArgumentError | sqlalchemy.exc.NoSuchModuleError):
        return EXIT_USAGE, f"bad database URL: {exc}"
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError) or _is_driver_error(exc):
        return 1, f"database error: {_database_error(exc)}"
    if isinstance(exc, ValueError | TypeError):
        return EXIT_USAGE, str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return 1, f"{exc.strerror or exc}{where}"
    return 1, f"unexpected {type(exc).__name__}: {exc}"


class KVStoreGroup(click.Group):
    """A click group whose ``main`` reports every error as one line and an exit status.

    click's own standalone mode prints usage errors over several lines and lets any other
    exception escape as a traceback; this ``main`` runs click in non-standalone mode and
    handles both. With ``standalone_mode=False`` it returns the exit status instead of exiting.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        argv = list(sys.argv[1:] if args is None else args)
        code = EXIT_OK
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            # click returns a command's return value, or the status of ctx.exit()/--help
            code = rv if isinstance(rv, int) else EXIT_OK
        except BrokenPipeError:
            # `kvstore ls | head`: the reader is gone, which is not an error worth a message.
            # stdout now points at /dev/null so the interpreter's final flush cannot fail
            # again; the status is 1, as Python's own handling of a broken pipe gives.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            code = 1
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.exceptions.NoArgsIsHelpError as exc:
            # `kvstore`, `kvstore db`, `kvstore index` alone: click's convention, the group's
            # whole help on stderr and the usage status, not squeezed into one error line.
            exc.show()
            code = exc.exit_code
        except (Exception, KeyboardInterrupt) as exc:
            code, message = classify(exc)
            line = _one_line(mask_secrets(message, _secrets(argv)))
            with contextlib.suppress(Exception):
                click.echo(f"kvstore: error: {line}", err=True)
        if standalone_mode:
            sys.exit(code)
        return code


# -- shared state and helpers --------------------------------------------------------------------
@dataclasses.dataclass
class Settings:
    url: str
    namespace: str
    table_prefix: str
    store: Store | None = None
    #: set by @reads: open the store without creating anything
    read_only: bool = False


def _settings() -> Settings:
    obj = click.get_current_context().find_object(Settings)
    assert obj is not None  # set by the group callback before any command runs
    return obj


def masked_url(url: str) -> str:
    return mask_secrets(url)


def open_store() -> Store:
    """The store for this invocation, closed when it ends. A write command creates kvstore's
    tables (and a SQLite file) when they are missing; a read command (see :func:`reads`)
    creates nothing: a missing SQLite file is an error before anything is opened."""
    s = _settings()
    if s.store is None:
        if s.read_only:
            require_database_file(s.url)
        with _connecting(s.url):
            s.store = connect(
                s.url,
                namespace=s.namespace,
                table_prefix=s.table_prefix,
                create=not s.read_only,
            )
        click.get_current_context().call_on_close(s.store.close)
    return s.store


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names, as the user wrote it (relative paths stay relative);
    ``None`` for other databases, in-memory ones and SQLite URIs that never create a file
    (``mode=ro``/``rw``/``memory``). An unparseable URL is also ``None``: connecting reports it."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database or ""
    if str(parsed.query.get("uri", "")).lower() in ("true", "1", "yes", "on"):
        # sqlite:///file:data.db?mode=ro&uri=true: the rest of the query goes to SQLite
        if parsed.query.get("mode") in ("ro", "rw", "memory"):
            return None
        from urllib.parse import unquote

        name = name.removeprefix("file:")
        if name.startswith("//"):  # file://localhost/abs/path or file:///abs/path
            name = name[name.find("/", 2) :] if "/" in name[2:] else ""
        name = unquote(name)
    if name in ("", ":memory:"):
        return None
    return name


def require_database_file(url: str) -> None:
    """Refuse a SQLite URL whose file does not exist (sqlite3 would create it on opening)."""
    path = sqlite_file(url)
    if path is None or os.path.isfile(path):
        return
    if os.path.isdir(path):
        raise CommandError(f"cannot open database {path}: it is a directory", EXIT_USAGE)
    raise CommandError(
        f"cannot open database {path}: no such file; nothing was created (a write such as "
        "`kvstore put`, or `kvstore db upgrade`, creates it)",
        EXIT_USAGE,
    )


def database_name(url: str) -> str:
    """How messages name the database: a SQLite file's path as given, else the URL with its
    password masked."""
    return sqlite_file(url) or masked_url(url)


def missing_tables_message(url: str, table_prefix: str) -> str | None:
    """Why a read failed when kvstore's tables are not all there (none, or some), asked of
    the database itself; ``None`` when they are all there, so the failure was something else.
    A database that cannot even be inspected is reported as one that cannot be opened."""
    wanted = migrations.table_names(table_prefix) - {migrations.version_table(table_prefix)}
    with _engine(create=False) as engine, _connecting(url):
        present = set(sqlalchemy.inspect(engine).get_table_names())
    missing = wanted - present
    where = database_name(url)
    if missing == wanted:
        return (
            f"no kvstore tables (table prefix {table_prefix}) in {where}; run `kvstore db "
            "upgrade` or write something first"
        )
    if missing:
        return (
            f"kvstore's tables in {where} are incomplete (no {', '.join(sorted(missing))}); "
            "run `kvstore db upgrade`"
        )
    return None


def reads(command: Callable[P, R]) -> Callable[P, R]:
    """Mark a command as read-only: it opens the store with ``create=False`` (and refuses a
    missing SQLite file), and a failure caused by missing tables says so, with status 1,
    instead of showing the driver's "no such table". A database that cannot be reached is a
    usage error (status 2), as it is for the commands that open with ``create=True``."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        s = _settings()
        s.read_only = True
        try:
            return command(*args, **kwargs)
        except DatabaseUnavailableError as exc:
            raise CommandError(
                f"cannot open database {masked_url(s.url)}: {_database_error(exc)}", EXIT_USAGE
            ) from exc
        except (LockTimeoutError, StorageFullError):
            raise  # about the database's state, not its tables: inspecting it could only wait
        except DatabaseError as exc:
            message = missing_tables_message(s.url, s.table_prefix)
            if message is None:
                raise
            raise CommandError(message, EXIT_MISSING) from exc
        except Exception as exc:
            # With create=False the first connection is made by the first read, and a
            # failure to make it reaches here as the driver's own exception.
            if _is_driver_error(exc):
                raise CommandError(
                    f"cannot open database {masked_url(s.url)}: {_database_error(exc)}",
                    EXIT_USAGE,
                ) from exc
            raise

    return run


@contextlib.contextmanager
def _connecting(url: str) -> Iterator[None]:
    """Errors while opening the database named by --url, as usage errors: an unparseable
    URL, an unsupported database, a missing driver, an unreachable or unopenable database.
    The URL is what the user can fix (host, password, path), so exit status 2 rather than
    the 1 of a failed operation."""
    try:
        yield
    except ImportError as exc:
        raise CommandError(
            f"the database driver for {masked_url(url)} is not installed ({exc})", EXIT_USAGE
        ) from exc
    except (ValueError, TypeError, sqlalchemy.exc.ArgumentError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except Exception as exc:
        if isinstance(exc, sqlalchemy.exc.SQLAlchemyError | DatabaseError) or _is_driver_error(exc):
            raise CommandError(
                f"cannot open database {masked_url(url)}: {_database_error(exc)}", EXIT_USAGE
            ) from exc
        raise


# The streams are looked up at each call, not at import: click's CliRunner (and pytest)
# swap sys.stdout and friends per invocation.
def _stdout() -> IO[bytes]:
    return sys.stdout.buffer


def _stdin() -> IO[bytes]:
    return sys.stdin.buffer


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _iso(value: dt.datetime | None, timespec: str = "auto") -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec=timespec)


def _short_time(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def info_dict(info: EntryInfo) -> dict[str, Any]:
    """An :class:`EntryInfo` as JSON-ready values (timestamps in ISO-8601, UTC)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(info):
        value = getattr(info, f.name)
        out[f.name] = _iso(value) if isinstance(value, dt.datetime) else value
    return out


# -- parameter callbacks (validation before any database work) ----------------------------
def _key_param(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    try:
        if isinstance(value, tuple):
            return tuple(check_key(v) for v in value)
        return None if value is None else check_key(value)
    except InvalidKeyError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _prefix_param(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    try:
        return check_prefix(value or "")
    except InvalidKeyError as exc:
        raise click.BadParameter(
            f"no key can start with {value!r}: {exc.reason}", ctx=ctx, param=param
        ) from None


def _metadata_param(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is None:
        return None
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})", ctx=ctx, param=param) from None
    if not isinstance(doc, dict):
        raise click.BadParameter(
            f"must be a JSON object, got {type(doc).__name__}", ctx=ctx, param=param
        )
    return doc


_TTL_TYPE = click.FloatRange(min=0.0)


# -- the group ---------------------------------------------------------------------------------
@click.group(cls=KVStoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="KVSTORE_URL",
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    metavar="URL",
    help="Database URL (SQLite, PostgreSQL or MySQL/MariaDB), e.g. postgresql://user@host/db.",
)
@click.option(
    "--namespace",
    "-n",
    default="default",
    show_default=True,
    help="Namespace to work in; namespaces never see each other's keys.",
)
@click.option(
    "--table-prefix",
    default="kv_",
    show_default=True,
    help="Prefix of kvstore's table names.",
)
@click.version_option(__version__, "-V", "--version", prog_name="kvstore")
@click.pass_context
def cli(ctx: click.Context, url: str, namespace: str, table_prefix: str) -> None:
    """Key-value storage in the SQL database you already have (SQLite, PostgreSQL, MariaDB).

    Exit status: 0 success, 1 missing key or index (or a refused write, or `db check`
    differences), 2 bad usage (bad option, invalid key, bad URL, bad JSON).
    """
    ctx.obj = Settings(url, namespace, table_prefix)


# -- key-value commands ------------------------------------------------------------------------
@cli.command()
@click.argument("key", callback=_key_param)
@click.argument("value", required=False)
@click.option(
    "--file",
    "-f",
    "file",
    type=click.Path(dir_okay=False, allow_dash=True, exists=True),
    help="Read the value from this file ('-' for stdin), streamed.",
)
@click.option("--ttl", type=_TTL_TYPE, metavar="SECONDS", help="Expire the entry after SECONDS.")
@click.option(
    "--content-type", metavar="TYPE", help="Content type to record, e.g. application/json."
)
@click.option(
    "--metadata",
    metavar="JSON",
    callback=_metadata_param,
    help='Metadata to record, a JSON object, e.g. \'{"owner": "ada"}\'.',
)
def put(
    key: str,
    value: str | None,
    file: str | None,
    ttl: float | None,
    content_type: str | None,
    metadata: dict[str, Any] | None,
) -> None:
    """Store VALUE under KEY (insert or replace).

    The value is the VALUE argument (encoded as UTF-8), the contents of --file, or standard
    input when VALUE is '-'. Files and standard input are streamed, so values larger than
    memory are fine.
    """
    if value is not None and file is not None:
        raise click.UsageError("give either VALUE or --file, not both")
    if value is None and file is None:
        raise click.UsageError(
            "missing value: give VALUE, '-' to read standard input, or --file PATH"
        )
    source: IO[bytes] | str | None = None
    if value == "-" or file == "-":
        source = _stdin()
    elif file is not None:
        source = file
    store = open_store()
    if source is None:
        assert value is not None
        # surrogateescape gives back the exact bytes the shell passed, even those that are
        # not UTF-8 (Python decoded argv with it), rather than failing on them
        data = value.encode("utf-8", "surrogateescape")
        store.put(key, data, ttl, metadata=metadata, content_type=content_type)
    else:
        store.put_file(key, source, ttl, metadata=metadata, content_type=content_type)


@cli.command()
@click.argument("key", callback=_key_param)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write the value to this file instead of standard output (streamed; the file is "
    "replaced only once the whole value is written).",
)
@reads
def get(key: str, output: str | None) -> None:
    """Write the value of KEY to standard output, as raw bytes.

    Exits with status 1 when KEY is missing or expired.
    """
    store = open_store()
    if output is None or output == "-":
        out = _stdout()
        store.get_file(key, out)
        out.flush()
        return
    _write_atomically(output, lambda f: store.get_file(key, f))


def _write_atomically(target: str, write: Callable[[IO[bytes]], object]) -> None:
    # A temporary file beside the target, renamed over it at the end: a failure half-way
    # (missing key, lost connection) never leaves a truncated file where a good one was.
    # Errors name the target as the user wrote it, never the temporary file.
    path = Path(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # no such directory, not a directory, not writable
        raise CommandError(f"cannot write {target}: {exc.strerror or exc}", EXIT_USAGE) from exc
    try:
        # mkstemp makes the file private (0600); give it the mode `> FILE` would have: the
        # replaced file's, or the umask's default for a new one.
        try:
            mode = stat_module.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, KVStoreError):
            # the disk filled up, the target became a directory, ...
            raise CommandError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise


@cli.command()
@click.argument("keys", nargs=-1, required=True, callback=_key_param, metavar="KEY...")
@click.option("--force", "-f", is_flag=True, help="Do not complain about keys that do not exist.")
def rm(keys: tuple[str, ...], force: bool) -> None:
    """Delete one or more keys, in one transaction.

    Keys that exist are deleted even when others are missing; without --force, a missing
    key is then reported and the exit status is 1.
    """
    store = open_store()
    wanted = list(dict.fromkeys(keys))

    def run(tx: Transaction) -> list[str]:
        missing = [k for k in wanted if k not in tx]
        tx.delete_many(wanted)
        return missing

    missing = store.run_in_transaction(run)
    if missing and not force:
        listed = ", ".join(repr(k) for k in missing)
        raise CommandError(f"no such key{'s' if len(missing) > 1 else ''}: {listed}", EXIT_MISSING)


@cli.command(name="ls")
@click.argument("prefix", required=False, callback=_prefix_param)
@click.option(
    "--long",
    "-l",
    "long_",
    is_flag=True,
    help="Also show size (bytes), version, updated_at and expires_at (UTC).",
)
@reads
def ls(prefix: str, long_: bool) -> None:
    """List keys (starting with PREFIX), one per line, sorted.

    With --long each line is: size, version, updated_at, expires_at ('-' for never) and the
    key, separated by spaces.
    """
    store = open_store()
    out = sys.stdout
    # one write per key without click.echo's flush per line: listings can be millions long
    if not long_:
        for key in store.iter_keys(prefix):
            out.write(key + "\n")
    else:
        # the details come with the keys, a batch per statement
        for info in store.iter_stat(prefix):
            out.write(
                f"{info.size:>10} {info.version:>6} {_short_time(info.updated_at)} "
                f"{_short_time(info.expires_at):<20} {info.key}\n"
            )
    out.flush()


@cli.command()
@click.argument("key", callback=_key_param)
@reads
def stat(key: str) -> None:
    """Show the details of KEY as JSON.

    Size, version, timestamps (ISO-8601, UTC), expiry, content type, metadata and SHA-256
    checksum. Exits with status 1 when KEY is missing or expired.
    """
    info = open_store().stat(key)
    click.echo(json.dumps(info_dict(info), indent=2, ensure_ascii=False))


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("key", callback=_key_param)
@click.argument("delta", type=int, default=1, required=False)
@click.option(
    "--initial", type=int, default=0, show_default=True, help="Starting value of a missing key."
)
def incr(key: str, delta: int, initial: int) -> None:
    """Add DELTA (default 1; may be negative) to the integer at KEY and print the result.

    Atomic under concurrency. A missing key starts at --initial.
    """
    click.echo(str(open_store().incr(key, delta, initial)))


@cli.command()
def purge() -> None:
    """Delete the namespace's expired entries, and say how many on stderr.

    Expired entries are invisible already (get, ls and export skip them); purging gives their
    space back. Only the namespace's own keys: not those of its collections and caches, which
    live in namespaces of their own.
    """
    n = open_store().purge_expired()
    click.echo(f"kvstore: deleted {_plural(n, 'expired entry', 'expired entries')}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead.")
@reads
def namespaces(as_json: bool) -> None:
    """List the namespaces that hold live entries, with entry count and size.

    Every namespace of the tables, whatever --namespace says, the derived namespaces of
    collections and caches (NAMESPACE/d/NAME, ...) included; size is the bytes of the values.
    On a terminal this is a table; otherwise one line per namespace, sorted: name, entries
    and size, separated by tabs. Reads every entry (one aggregate query).
    """
    infos = open_store().namespaces()
    if as_json:
        rows = [dataclasses.asdict(i) for i in infos]
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif _stdout_is_terminal():
        _print_namespace_table(infos)
    else:
        out = sys.stdout
        for i in infos:
            out.write(f"{i.name}\t{i.entries}\t{i.size}\n")
        out.flush()


def _print_namespace_table(infos: Sequence[NamespaceInfo]) -> None:
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table
    from rich.text import Text

    table = Table()
    table.add_column("NAMESPACE")
    table.add_column("ENTRIES", justify="right")
    table.add_column("SIZE", justify="right")
    for i in infos:
        # Text, not a str: a name may hold [brackets], which rich would read as markup
        table.add_row(Text(i.name), f"{i.entries:,}", decimal(i.size))
    Console(file=sys.stdout, highlight=False).print(table)


# -- import / export ---------------------------------------------------------------------------
class _Progress:
    """A rich progress bar on stderr, shown only once the work proves large.

    ``mode`` None means "when stderr is a terminal"; True forces it (rendered even to a
    pipe), False disables it. The bar appears after ``PROGRESS_THRESHOLD`` items, so small
    jobs print nothing; it never writes to stdout, which may be carrying the data.
    """

    def __init__(self, mode: bool | None, description: str, total: int | None, unit: str) -> None:
        self.enabled = _stderr_is_terminal() if mode is None else mode
        self.forced = mode is True
        self.description = description
        self.total = total
        self.unit = unit
        self.items = 0
        self.completed = 0
        self._progress: Any = None
        self._task: Any = None

    def update(self, items: int, completed: int | None = None) -> None:
        """``items`` done so far, and the bar's position when it counts something else (the
        bytes of a file whose size is the total)."""
        self.items = items
        self.completed = items if completed is None else completed
        if not self.enabled:
            return
        if self._progress is None:
            if self.items < PROGRESS_THRESHOLD and not self.forced:
                return
            self._start()
        self._progress.update(self._task, completed=self.completed, items=self.items)

    def set_total(self, done: int, total: int) -> None:
        self.total = total
        self.items = self.completed = done
        if self.enabled and self._progress is None and (total > PROGRESS_THRESHOLD or self.forced):
            self._start()
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total, items=done)

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=sys.stderr, force_terminal=self.forced or None)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[items]:,} " + self.unit),
            TimeElapsedColumn(),
            console=console,
            transient=not self.forced,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self.description, total=self.total, completed=self.completed, items=self.items
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr. Default: when stderr is a terminal and there are "
    f"more than {PROGRESS_THRESHOLD} entries.",
)


class _CountedLines:
    """The lines of a binary stream, counting the bytes handed out (the import bar's position)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for raw in self.stream:
            self.bytes += len(raw)
            yield raw


def _import_error(exc: transfer.ImportFailed, atomic: bool) -> CommandError:
    """The one-line message and exit status for a failed import: a bad line is bad usage, a
    refused write is classified like any other error of the library."""
    cause = exc.__cause__ or exc
    if isinstance(cause, transfer.BadLine):
        code, message = EXIT_USAGE, str(cause)
    else:
        code, message = classify(cause)
    where = f"line {exc.line}" if exc.line == exc.last_line else f"lines {exc.line}-{exc.last_line}"
    if atomic:
        status = "nothing was imported (--atomic)"
    else:
        status = (
            f"the {exc.committed} entries before line {exc.resume_line} were imported, "
            "nothing from there on"
        )
    return CommandError(f"{where}: {message}; {status}", code)


@cli.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, exists=True), default="-")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=IMPORT_BATCH,
    show_default=True,
    help="Entries per transaction.",
)
@click.option(
    "--atomic", is_flag=True, help="Import the whole file in one transaction: all or nothing."
)
@_progress_option
def import_(file: str, batch_size: int, atomic: bool, progress: bool | None) -> None:
    """Load entries from a JSON Lines FILE ('-' or omitted: standard input).

    Each line is an object: {"key": ..., "value": TEXT} or {"key": ..., "value_b64": BASE64},
    with optional "metadata" (object), "content_type", and "expires_at" (ISO-8601) or
    "ttl_secs". Existing keys are replaced; blank lines are skipped; entries whose expires_at
    has passed are skipped.

    Entries are written in transactions of --batch-size: each batch is all-or-nothing, and a
    bad line stops the import with the batches before it committed. --atomic makes the whole
    file one transaction.
    """
    store = open_store()
    own = file != "-"
    stream = open(file, "rb") if own else _stdin()  # noqa: SIM115
    total = os.fstat(stream.fileno()).st_size if own and os.path.isfile(file) else None
    try:
        with _Progress(progress, "importing", total, "lines") as bar:
            lines = _CountedLines(stream)
            result = transfer.import_lines(
                store,
                lines,
                batch_size=batch_size,
                atomic=atomic,
                progress=lambda n: bar.update(n, lines.bytes),
            )
    except transfer.ImportFailed as exc:
        raise _import_error(exc, atomic) from exc
    finally:
        if own:
            stream.close()
    note = f", skipped {result.skipped} already expired" if result.skipped else ""
    click.echo(f"kvstore: imported {_plural(result.imported, 'entry', 'entries')}{note}", err=True)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@click.option(
    "--prefix", default="", callback=_prefix_param, help="Only keys starting with PREFIX."
)
@click.option(
    "--snapshot",
    is_flag=True,
    help="Read one consistent snapshot of the database (for backups).",
)
@_progress_option
@reads
def export(file: str, prefix: str, snapshot: bool, progress: bool | None) -> None:
    """Write entries as JSON Lines to FILE ('-' or omitted: standard output).

    One object per line, sorted by key, in the format `import` reads: text values as
    "value", other bytes as "value_b64", plus "content_type", "metadata" and "expires_at"
    when set. A FILE is replaced only once the export is complete. --snapshot reads every
    entry from one snapshot (a read-only transaction: on SQLite it does not block writers).
    """
    store = open_store()
    total = len(store) if not prefix else None

    def write(out: IO[bytes]) -> None:
        with _Progress(progress, "exporting", total, "entries") as bar:
            lines = transfer.export_lines(store, prefix, progress=bar.update, snapshot=snapshot)
            for line in lines:
                out.write(line.encode("utf-8"))

    if file == "-":
        out = _stdout()
        write(out)
        out.flush()
    else:
        _write_atomically(file, write)


# -- indexes -------------------------------------------------------------------------------------
@cli.group()
def index() -> None:
    """Secondary indexes: list, create, rebuild, drop, find.

    Only json_field indexes (an index on a field of JSON values) can be created here: a
    Python-callable index lives in the program that defines the function, which must call
    store.create_index() itself.
    """


@index.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@reads
def index_list(as_json: bool) -> None:
    """List the namespace's indexes: name, kind, definition, unique."""
    infos = open_store().indexes()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    if not infos:
        return
    table = [["NAME", "KIND", "DEFINITION", "UNIQUE"]]
    for i in infos:
        # a callable index another process declared: this one cannot maintain it
        kind = i.kind if i.declared or i.kind != "callable" else "callable (not declared here)"
        table.append([i.name, kind, i.definition, "yes" if i.unique else "no"])
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _index_progress(progress: bool | None, description: str) -> _Progress:
    return _Progress(progress, description, None, "entries")


@index.command(name="create")
@click.argument("name")
@click.option(
    "--json-field",
    "path",
    metavar="PATH",
    help="Dotted path of the field to index in JSON values, e.g. address.city.",
)
@click.option("--unique", is_flag=True, help="Reject two keys with the same index value.")
@_progress_option
def index_create(name: str, path: str | None, unique: bool, progress: bool | None) -> None:
    """Create index NAME on a field of JSON values and back-fill it.

    Running it again with the same definition does nothing; a different definition under an
    existing name is an error. A Python-callable index cannot be created from the command
    line: call store.create_index() in the program that defines the function.
    """
    if path is None:
        raise click.UsageError(
            "--json-field PATH is required: only json_field indexes can be created from the "
            "command line (a callable index must be created with store.create_index() in Python)"
        )
    extractor = json_field(path)
    store = open_store()
    with _index_progress(progress, f"indexing {name}") as bar:
        store.create_index(name, extractor, unique=unique, progress=bar.set_total)


@index.command(name="rebuild")
@click.argument("name")
@_progress_option
def index_rebuild(name: str, progress: bool | None) -> None:
    """Recompute every entry of index NAME from the current values."""
    store = open_store()
    with _index_progress(progress, f"rebuilding {name}") as bar:
        store.rebuild_index(name, progress=bar.set_total)


@index.command(name="drop")
@click.argument("name")
def index_drop(name: str) -> None:
    """Drop index NAME and its entries (the values are not touched)."""
    open_store().drop_index(name)


def _index_value(text: str | None, as_string: bool) -> Any:
    """An index value from the command line: JSON scalars (42, 1.5, true, "42") are typed,
    anything else is a string, so `find by_city Paris` needs no quotes."""
    if text is None or as_string:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, str | int | float) and not (
        isinstance(value, float) and not math.isfinite(value)
    ):
        return value
    raise click.BadParameter(
        f"{text!r} is JSON {type(value).__name__}; index values are strings, numbers or "
        "booleans (use --string to search for it as text)"
    )


@index.command(name="find")
@click.argument("name")
@click.argument("value", required=False)
@click.option("--gt", metavar="V", help="Index value greater than V.")
@click.option("--ge", metavar="V", help="Index value greater than or equal to V.")
@click.option("--lt", metavar="V", help="Index value less than V.")
@click.option("--le", metavar="V", help="Index value less than or equal to V.")
@click.option("--prefix", metavar="TEXT", help="String index value starting with TEXT.")
@click.option(
    "--string",
    "-s",
    "as_string",
    is_flag=True,
    help="Take VALUE and bounds as text, never as numbers.",
)
@click.option("--order", type=click.Choice(["asc", "desc"]), default="asc", show_default=True)
@click.option("--limit", type=click.IntRange(min=0), help="At most this many keys.")
@click.option(
    "--after", metavar="KEY", help="Continue after KEY, the last key of the previous page."
)
@reads
def index_find(
    name: str,
    value: str | None,
    gt: str | None,
    ge: str | None,
    lt: str | None,
    le: str | None,
    prefix: str | None,
    as_string: bool,
    order: str,
    limit: int | None,
    after: str | None,
) -> None:
    """Print the keys whose index value matches, one per line, in index order.

    VALUE and the bounds are JSON scalars when they parse as one (42, 1.5, true, "42") and
    text otherwise. Give VALUE, or a range (--gt/--ge/--lt/--le), or --prefix.
    """
    bounds = {"gt": gt, "ge": ge, "lt": lt, "le": le}
    query: dict[str, Any] = {
        k: _index_value(v, as_string) for k, v in bounds.items() if v is not None
    }
    if prefix is not None:
        query["prefix"] = prefix
    if value is not None and query:
        raise click.UsageError("give VALUE or range/--prefix options, not both")
    if value is None and not query:
        raise click.UsageError("give VALUE, a range (--gt/--ge/--lt/--le) or --prefix")
    store = open_store()
    args = () if value is None else (_index_value(value, as_string),)
    for key in store.find(name, *args, order=order, limit=limit, after=after, **query):
        click.echo(key)


# -- persistent dicts ----------------------------------------------------------------------------
@dataclasses.dataclass
class DictTarget:
    """The dict named on the command line (``kvstore dict NAME ...``)."""

    name: str


@cli.group(name="dict")
@click.argument("name")
@click.pass_context
def dict_group(ctx: click.Context, name: str) -> None:
    """Read the persistent dict NAME of the namespace: get a value, list the keys.

    The dict is the library's store.dict(NAME), with str keys. Values are printed as JSON,
    the default serializer's format (--serializer raw: as the bytes stored). These commands
    only read: they never create anything.
    """
    ctx.obj = DictTarget(name)


_serializer_option = click.option(
    "--serializer",
    type=click.Choice(["json", "raw"]),
    default="json",
    show_default=True,
    help="How the dict's values were stored: json (store.dict's default) or raw bytes.",
)


def _open_dict(serializer: str) -> PersistentDict:
    target = click.get_current_context().find_object(DictTarget)
    assert target is not None  # set by the dict group before its commands run
    return open_store().dict(target.name, serializer=serializer)


def _not_json(d: PersistentDict, exc: ValueError, key: str | None = None) -> CommandError:
    which = f"the value of {key!r}" if key is not None else "a value"
    return CommandError(
        f"{which} in dict {d.name!r} is not JSON ({_one_line(str(exc), 200)}); "
        "--serializer raw reads it as bytes",
        EXIT_MISSING,
    )


def _write_text(text: str) -> None:
    # surrogatepass: JSON text decoded with it (the json serializer's loads) goes back out
    # byte for byte
    _stdout().write(text.encode("utf-8", "surrogatepass"))


@dict_group.command(name="get")
@click.argument("key")
@_serializer_option
@reads
def dict_get(key: str, serializer: str) -> None:
    """Print the value of KEY in the dict, as JSON.

    With --serializer raw, the value's bytes are written as they are, without a newline.
    Exits with status 1 when KEY is not in the dict.
    """
    d = _open_dict(serializer)
    try:
        value = d[key]
    except KeyError:
        raise CommandError(f"no such key in dict {d.name!r}: {key!r}", EXIT_MISSING) from None
    except ValueError as exc:
        raise _not_json(d, exc, key) from exc
    out = _stdout()
    if serializer == "raw":
        out.write(value)
    else:
        _write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    out.flush()


@dict_group.command(name="ls")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the whole dict as one JSON object (keys to values), one entry per line.",
)
@_serializer_option
@reads
def dict_ls(as_json: bool, serializer: str) -> None:
    """List the dict's keys, one per line, in code-point order."""
    if as_json and serializer == "raw":
        raise click.UsageError("--json prints JSON values: it cannot be used with --serializer raw")
    d = _open_dict(serializer)
    if not as_json:
        out = sys.stdout
        for key in d:
            out.write(key + "\n")
        out.flush()
        return
    # streamed, entry by entry (a dict may be larger than memory); the opening brace goes out
    # with the first entry, so a first value that is not JSON prints nothing
    empty = True
    try:
        for key, value in d.items():
            k, v = json.dumps(key, ensure_ascii=False), json.dumps(value, ensure_ascii=False)
            _write_text(("{\n  " if empty else ",\n  ") + f"{k}: {v}")
            empty = False
    except ValueError as exc:
        raise _not_json(d, exc) from exc
    _write_text("{}\n" if empty else "\n}\n")
    _stdout().flush()


# -- database schema (Alembic migrations) ----------------------------------------------------
@cli.group()
def db() -> None:
    """Database schema: apply kvstore's migrations, show or check the revision.

    These commands never create tables outside the migrations.
    """


@contextlib.contextmanager
def _engine(*, create: bool) -> Iterator[Any]:
    """An engine on --url whose database has answered once (so a bad URL is a usage error
    and not a migration failure), disposed at the end. Without ``create``, a missing SQLite
    file is an error rather than created by connecting."""
    url = _settings().url
    if not create:
        require_database_file(url)
    with _connecting(url):
        engine = engine_from_url(url, {})
    try:
        with _connecting(url), engine.connect():
            pass
        yield engine
    finally:
        engine.dispose()


@db.command(name="upgrade")
@click.argument("revision", default="head")
@click.option(
    "--sql",
    "offline",
    is_flag=True,
    help="Print the SQL instead of running it (needs no connection; REVISION may be FROM:TO).",
)
def db_upgrade(revision: str, offline: bool) -> None:
    """Apply kvstore's migrations up to REVISION (default: head)."""
    s = _settings()
    if offline:
        with _connecting(s.url):
            sql = migrations.migration_sql(s.url, revision, table_prefix=s.table_prefix)
        click.echo(sql, nl=False)
        return
    with _engine(create=True) as engine:
        migrations.upgrade(engine, revision, table_prefix=s.table_prefix)
        now = migrations.current(engine, table_prefix=s.table_prefix)
    click.echo(f"kvstore: database at revision {now}", err=True)


@db.command(name="downgrade")
@click.argument("revision")
@click.option(
    "--sql",
    "offline",
    is_flag=True,
    help="Print the SQL instead of running it (REVISION must then be FROM:TO).",
)
def db_downgrade(revision: str, offline: bool) -> None:
    """Revert kvstore's migrations down to REVISION ("base" removes every kvstore table)."""
    s = _settings()
    if offline:
        with _connecting(s.url):
            sql = migrations.migration_sql(
                s.url, revision, downgrade=True, table_prefix=s.table_prefix
            )
        click.echo(sql, nl=False)
        return
    with _engine(create=False) as engine:
        migrations.downgrade(engine, revision, table_prefix=s.table_prefix)
        now = migrations.current(engine, table_prefix=s.table_prefix)
    click.echo(f"kvstore: database at revision {now or 'base (no kvstore tables)'}", err=True)


@db.command(name="current")
def db_current() -> None:
    """Print the database's kvstore schema revision (nothing if never migrated)."""
    s = _settings()
    with _engine(create=False) as engine:
        rev = migrations.current(engine, table_prefix=s.table_prefix)
    if rev is None:
        click.echo("kvstore: no kvstore migration has been applied to this database", err=True)
    else:
        click.echo(rev)


@db.command(name="check")
def db_check() -> None:
    """Compare the database schema with kvstore's models.

    Prints each difference and exits with status 1 if there are any.
    """
    s = _settings()
    with _engine(create=False) as engine:
        diffs = migrations.check(engine, table_prefix=s.table_prefix)
    if diffs:
        for d in diffs:
            click.echo(str(d))
        raise CommandError(
            f"the database schema differs from kvstore's models "
            f"({_plural(len(diffs), 'difference', 'differences')}); run 'kvstore db upgrade'",
            EXIT_MISSING,
        )
    click.echo("kvstore: the database schema matches kvstore's models", err=True)


def _shared_option(name: str, field: str, help: str) -> click.Option:
    """``--url`` and friends also after the command name (``kvstore db upgrade --url URL``),
    overriding the group's value: people type them wherever they think of them."""

    def apply(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:
            setattr(_settings(), field, value)

    return click.Option(
        [name],
        metavar=field.upper().replace("_", "-") if field != "url" else "URL",
        default=None,
        expose_value=False,
        callback=apply,
        help=help,
    )


def _add_shared_options(group: click.Group) -> None:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _add_shared_options(command)
            continue
        command.params += [
            _shared_option("--url", "url", "Database URL (overrides the global --url)."),
            _shared_option(
                "--namespace", "namespace", "Namespace (overrides the global --namespace)."
            ),
            _shared_option(
                "--table-prefix", "table_prefix", "Table prefix (overrides the global one)."
            ),
        ]


_add_shared_options(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kvstore`` entry point: run the CLI and return its exit status."""
    return cli.main(argv, prog_name="kvstore", standalone_mode=False)
