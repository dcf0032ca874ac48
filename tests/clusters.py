"""Throwaway replicated PostgreSQL and Galera (MariaDB) clusters on loopback, for tests.

(PYTEST_DONT_REWRITE: test modules import this before pytest loads it as a plugin.)

Nothing here touches the machine's own servers: every node gets a fresh data directory under
one temporary directory per cluster (``$KVSTORE_CLUSTER_TMPDIR``, else /dev/shm if it is big
enough, else the system temp dir), its own free loopback ports, and its own socket and pid
files. Every wait is bounded (``timeout``,
30 s by default) and raises :class:`TimeoutError` with the node's log tail instead of hanging.
A cluster is torn down - every process killed, every directory removed - by ``close()``,
which the fixtures call in their finalizers and an ``atexit`` hook calls for anything still
open when the interpreter exits.

PostgreSQL (:class:`PgCluster`): a primary (``initdb``) and N hot standbys streaming from it
(``pg_basebackup -R``), each with ``application_name`` = its node name. Galera
(:class:`GaleraCluster`): N ``mariadbd`` nodes (3 by default) with ``wsrep_on=ON``, rsync SST,
the first bootstrapped with ``--wsrep-new-cluster``; root without a password reaches every node
over TCP and a database ``test`` exists.

When run as root, PostgreSQL runs as the ``postgres`` OS user and MariaDB as ``mysql``;
otherwise both run as the current user.

``fsync``: the clusters run with ``fsync=off`` (PostgreSQL) and
``innodb_flush_log_at_trx_commit=2`` / ``sync_binlog=0`` (MariaDB) unless ``fsync=True`` is
passed. That loses nothing when a *process* dies (SIGKILL, ``pg_ctl stop -m immediate``): the
written pages stay in the OS page cache and crash recovery finds them. It only matters for an
OS crash or power loss, which these fixtures cannot simulate; a test that claims durability
against those must ask for ``fsync=True`` (and says so in its docstring).

Use as a pytest plugin: ``pytest_plugins = ["clusters"]`` in a test module (as
test_clusters.py does) or, better, in tests/conftest.py. The plugin registers the ``cluster``
marker and adds it to every test that uses one of the fixtures below (so ``-m "not cluster"``
deselects them). When a binary is missing the fixtures skip with the reason (which the
conftest turns into a failure under ``CI=true``); any other failure to start is an error.

Start-up (2 cores, data under /dev/shm): PostgreSQL primary + 2 standbys ~4 s for the first
cluster of the process (initdb), ~2 s after that (the initdb result is cached and copied);
Galera 3 nodes ~12 s (install-db, bootstrap and clean stop once per process, ~3 s; then every
cluster: bootstrap node 1, two joiners by IST). Teardown < 1 s. Restarting a SIGKILLed Galera
node ~5 s (``--wsrep-recover``, then IST).

Fixtures:

* ``pg_cluster`` (module scope): primary + 2 standbys, ``synchronous_standby_names`` unset.
  Tests must leave it as they found it (resume paused replay; no promotion).
* ``make_pg_cluster`` (function scope): ``make_pg_cluster(standbys=1, **kw) -> PgCluster``
  for tests that break things (stop the primary, promote); all torn down after the test.
* ``galera_cluster`` (module-scoped cluster, checked per test): 3 synced nodes. Before each
  test every node that a previous test killed or stopped is restarted, and all are waited for
  to be synced, so tests may kill nodes freely.
* ``make_galera_cluster`` (function scope): ``make_galera_cluster(nodes=3, **kw)``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
CLUSTER_MARKER = "cluster: needs real replicated/clustered database servers (tests/clusters.py)"


class ClusterUnavailable(Exception):
    """The binaries a cluster needs are not installed: a reason to skip, not an error."""


class ClusterError(RuntimeError):
    """A cluster or node failed to start, stop or answer (with the relevant log tail)."""


# -- plumbing ------------------------------------------------------------------------------------
def _is_root() -> bool:
    return os.geteuid() == 0


def _wait_for(
    what: str,
    check: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    log: Path | None = None,
) -> T:
    """Poll ``check()`` until it returns something truthy; exceptions count as "not yet".
    Raises TimeoutError naming ``what``, the last exception and the tail of ``log``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except _StopWaiting as stop:
            raise stop.error from None
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            msg = f"{what}: not reached within {timeout:g}s"
            if last is not None:
                msg += f" (last error: {last.__class__.__name__}: {last})"
            raise TimeoutError(msg + _log_tail(log))
        time.sleep(interval)


class _StopWaiting(Exception):
    """Raised by a ``_wait_for`` check when waiting on is pointless (the process died)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _log_tail(log: Path | None, lines: int = 25) -> str:
    if log is None:
        return ""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port nobody listens on, never handed out twice by this process.

    Picked from 20000-32000, below Linux's ephemeral range (32768+), so that the source ports of
    outgoing connections cannot take it between this check and the server's bind."""
    with _ports_lock:
        for _ in range(500):
            port = random.randint(20000, 32000)
            if port in _ports_handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_handed_out.add(port)
            return port
    raise ClusterError("no free loopback port found")


def _run(
    argv: list[str],
    *,
    user: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: Path | None = None,
    check: bool = True,
) -> tuple[int, str]:
    """Run a command (as ``user`` when we are root), output to a file rather than a pipe so a
    daemon it leaves behind cannot keep us waiting for EOF. Bounded by ``timeout``."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            user=user if (user and _is_root()) else None,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            out.seek(0)
            raise ClusterError(
                f"{' '.join(argv)} timed out after {timeout:g}s:\n{out.read().decode(errors='replace')}"
            ) from None
        out.seek(0)
        text = out.read().decode(errors="replace")
    if check and rc != 0:
        raise ClusterError(f"{' '.join(argv)} exited with {rc}:\n{text}")
    return rc, text


def _alive(pid: int) -> bool:
    """Is ``pid`` a live process (a zombie is dead: it holds no ports and runs no code)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")


def _kill_group(pid: int) -> None:
    """SIGKILL ``pid`` and, if it leads a process group (our daemons all do), the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def _kill_popen_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group a child of ours leads (``start_new_session``). Once the child
    is reaped its pid may be reused - but not while its group has members, so the group is
    only signalled while the child or a member of its group lives."""
    if proc.poll() is None or _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Does any live process remain in process group ``pgid``?"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _pids_using(path: Path) -> list[int]:
    """Processes whose command line mentions ``path`` (a cluster's unique temp dir): the
    stragglers of that cluster only (an SST helper, a backend), never anything else."""
    needle = str(path).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return [p for p in pids if _alive(p)]


def _make_dir(path: Path, owner: str | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if owner and _is_root():
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _tmp_root() -> str | None:
    """Where cluster directories go: ``$KVSTORE_CLUSTER_TMPDIR``, else /dev/shm when it is a
    writable tmpfs with at least 2 GiB free (a RAM disk: initdb, base backups and Galera's
    state transfers are several times faster than on a busy disk), else the temp dir.
    (Docker's default /dev/shm is 64 MiB, so containers usually get the temp dir.)"""
    if env := os.environ.get("KVSTORE_CLUSTER_TMPDIR"):
        return env
    with contextlib.suppress(OSError):
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 2 << 30 and os.access("/dev/shm", os.W_OK | os.X_OK):
            return "/dev/shm"
    return None


def _cluster_tmpdir(prefix: str, owner: str | None) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=_tmp_root()))
    base.chmod(0o755)  # the service user must reach its node directories
    return _make_dir(base, owner)


def _remove_tree(path: Path) -> None:
    for attempt in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == 2:
                raise
            time.sleep(0.2)


_templates: dict[tuple[Any, ...], Path] = {}
_templates_root: Path | None = None


def _template(key: tuple[Any, ...]) -> Path | None:
    """A data directory cached by this process under ``key`` (see _save_template), or None."""
    path = _templates.get(key)
    return path if path is not None and path.exists() else None


def _save_template(key: tuple[Any, ...], source: Path) -> None:
    """Keep a copy of ``source`` (a freshly initialised data directory of a stopped server)
    so that later clusters copy it instead of initialising again (initdb: ~2 s,
    mariadb-install-db plus a bootstrap: ~6 s). Removed at exit."""
    global _templates_root
    if _templates_root is None:
        _templates_root = Path(tempfile.mkdtemp(prefix="kvtmpl-", dir=_tmp_root()))
        _templates_root.chmod(0o755)
        atexit.register(_remove_templates)
    dest = _templates_root / uuid.uuid4().hex
    _copy_tree(source, dest)
    _templates[key] = dest


def _remove_templates() -> None:
    global _templates_root
    if _templates_root is not None:
        shutil.rmtree(_templates_root, ignore_errors=True)
        _templates_root = None
        _templates.clear()


def _copy_tree(source: Path, dest: Path) -> None:
    """``cp -a``: keeps owners and modes (the servers insist on owning their data)."""
    _run(["cp", "-a", str(source), str(dest)])


_open_clusters: set[Any] = set()
_open_lock = threading.Lock()


def _register(cluster: Any) -> None:
    with _open_lock:
        _open_clusters.add(cluster)


def _unregister(cluster: Any) -> None:
    with _open_lock:
        _open_clusters.discard(cluster)


@atexit.register
def close_all_clusters() -> None:
    """Tear down every cluster still open (the atexit safety net behind the fixtures)."""
    with _open_lock:
        clusters = list(_open_clusters)
    for c in clusters:
        with contextlib.suppress(Exception):
            c.close()


def _service_user(name: str) -> str | None:
    """The OS user a server runs as: ``name`` when we are root (the servers refuse root or
    should not run as it), else None (the current user)."""
    if not _is_root():
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ClusterUnavailable(
            f"running as root, but there is no {name!r} OS user to run the server as"
        ) from None
    return name


# -- PostgreSQL ----------------------------------------------------------------------------------
def find_pg_bindir() -> Path:
    """The directory with initdb, pg_ctl, pg_basebackup and postgres: ``$KVSTORE_PG_BINDIR``,
    else the newest /usr/lib/postgresql/*/bin, else wherever ``pg_config --bindir`` or PATH
    says. Raises ClusterUnavailable when there is none."""
    needed = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
    candidates: list[Path] = []
    if env := os.environ.get("KVSTORE_PG_BINDIR"):
        candidates.append(Path(env))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(Exception):
            candidates.append(
                Path(
                    subprocess.check_output([pg_config, "--bindir"], text=True, timeout=10).strip()
                )
            )
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for d in candidates:
        if all((d / exe).is_file() and os.access(d / exe, os.X_OK) for exe in needed):
            return d
    raise ClusterUnavailable(
        f"PostgreSQL cluster tests need {', '.join(needed)} (set KVSTORE_PG_BINDIR; looked in "
        f"{', '.join(map(str, candidates)) or 'nothing found'})"
    )


class PgNode:
    """One PostgreSQL server of a :class:`PgCluster` (the primary or a standby)."""

    def __init__(self, cluster: PgCluster, name: str, role: str) -> None:
        self.cluster = cluster
        self.name = name
        self.role = role  # "primary" or "standby"; promote() makes a standby "primary"
        self.port = free_port()
        self.dir = _make_dir(cluster.base / name, cluster.user)
        self.datadir = self.dir / "data"
        self.logfile = self.dir / "postgres.log"

    def __repr__(self) -> str:
        return f"<PgNode {self.name} {self.role} 127.0.0.1:{self.port}>"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3) of this node's ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _bin(self, exe: str) -> str:
        return str(self.cluster.bindir / exe)

    def _pg(
        self, argv: list[str], timeout: float | None = None, check: bool = True
    ) -> tuple[int, str]:
        return _run(
            argv,
            user=self.cluster.user,
            timeout=timeout or self.cluster.timeout,
            cwd=self.cluster.base,
            check=check,
        )

    # -- process --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The postmaster's pid if it is running, else None."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        # a postmaster.pid left by a crash may name a pid the OS has since given to some
        # other process: only a live process working in this data directory is ours
        try:
            ours = os.readlink(f"/proc/{pid}/cwd") == str(self.datadir.resolve())
        except OSError:
            ours = False
        return pid if ours and _alive(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float | None = None) -> None:
        """Start (or restart) this node and wait until it accepts connections."""
        timeout = timeout or self.cluster.timeout
        rc, out = self._pg(
            [
                self._bin("pg_ctl"),
                "start",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(int(timeout)),
            ],
            timeout=timeout + 5,
            check=False,
        )
        if rc != 0:
            raise ClusterError(
                f"{self.name}: pg_ctl start failed ({rc}):\n{out}{_log_tail(self.logfile)}"
            )
        _wait_for(
            f"{self.name} accepts connections",
            lambda: self.query("SELECT 1") == 1,
            timeout,
            log=self.logfile,
        )

    def stop(self, mode: str = "fast", timeout: float | None = None) -> None:
        """Stop this node: ``mode`` is pg_ctl's ``smart``, ``fast`` or ``immediate`` (no
        checkpoint: crash recovery on the next start), or ``kill`` (SIGKILL to the postmaster
        and all its children). A node that is not running is left alone."""
        timeout = timeout or self.cluster.timeout
        if mode == "kill":
            self.kill(timeout)
            return
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be smart, fast, immediate or kill, not {mode!r}")
        if not self.is_running():
            return
        rc, out = self._pg(
            [
                self._bin("pg_ctl"),
                "stop",
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
            ],
            timeout=timeout + 5,
            check=False,
        )
        if rc != 0 and self.is_running():
            raise ClusterError(
                f"{self.name}: pg_ctl stop -m {mode} failed ({rc}):\n{out}{_log_tail(self.logfile)}"
            )

    def kill(self, timeout: float | None = None) -> None:
        """SIGKILL the postmaster and every backend (its process group): a crash."""
        pid = self.pid
        if pid is None:
            return
        _kill_group(pid)
        # the postmaster leads a process group with all its backends (pg_ctl setsid()s it)
        _wait_for(
            f"{self.name} (pid {pid}) and its backends gone after SIGKILL",
            lambda: not _alive(pid) and not _group_alive(pid),
            timeout or self.cluster.timeout,
        )

    def _remove_leftover_shm(self) -> None:
        """After a SIGKILL the postmaster's small SysV segment outlives it (a restart would
        reuse it); remove it when the node will not be started again."""
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            shmid = lines[6].split()[1]
        except (OSError, IndexError):
            return
        if shutil.which("ipcrm"):
            _run(["ipcrm", "-m", shmid], check=False, timeout=5)

    # -- queries ---------------------------------------------------------------------------------
    def engine(self, **kw: Any) -> sa.Engine:
        """A SQLAlchemy engine on :attr:`url` (connect timeout 5 s), disposed by the
        cluster's ``close()``; keyword arguments go to ``sqlalchemy.create_engine``."""
        kw.setdefault("connect_args", {"connect_timeout": 5})
        engine = sa.create_engine(self.url, **kw)
        self.cluster._engines.append(engine)
        return engine

    def query(self, sql: str, params: tuple[Any, ...] = (), timeout: float = 10) -> Any:
        """First column of the first row of ``sql`` (autocommit), through psycopg directly."""
        import psycopg

        with psycopg.connect(
            self.dsn, connect_timeout=max(1, int(timeout)), autocommit=True
        ) as conn:
            conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            cur = conn.execute(sql, params)
            row = cur.fetchone() if cur.description is not None else None
        return None if row is None else row[0]

    def is_in_recovery(self) -> bool:
        return bool(self.query("SELECT pg_is_in_recovery()"))

    def current_lsn(self) -> str:
        """The WAL position to wait for: the write position on a primary, the replay position
        on a standby."""
        if self.is_in_recovery():
            return str(self.query("SELECT pg_last_wal_replay_lsn()"))
        return str(self.query("SELECT pg_current_wal_lsn()"))

    def replay_lsn(self) -> str | None:
        lsn = self.query("SELECT pg_last_wal_replay_lsn()")
        return None if lsn is None else str(lsn)

    def lag_bytes(self, primary: PgNode | None = None) -> int:
        """How many bytes of the primary's WAL this standby has not replayed yet."""
        primary = primary or self.cluster.primary
        lsn = primary.current_lsn()
        return int(
            self.query("SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())", (lsn,))
        )

    def wait_for_replay(self, lsn: str | None = None, timeout: float | None = None) -> None:
        """Wait until this standby has replayed WAL up to ``lsn`` (default: the primary's
        current position, read now). TimeoutError if it does not within ``timeout``."""
        target = lsn or self.cluster.primary.current_lsn()
        _wait_for(
            f"{self.name} replayed past {target}",
            lambda: self.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)),
            timeout or self.cluster.timeout,
            interval=0.02,
            log=self.logfile,
        )

    def pause_replay(self, timeout: float | None = None) -> None:
        """``pg_wal_replay_pause()``, then wait until the pause took effect."""
        self.query("SELECT pg_wal_replay_pause()")
        _wait_for(
            f"{self.name} replay paused",
            lambda: self.query("SELECT pg_get_wal_replay_pause_state()") == "paused",
            timeout or self.cluster.timeout,
            log=self.logfile,
        )

    def resume_replay(self) -> None:
        self.query("SELECT pg_wal_replay_resume()")

    def is_replay_paused(self) -> bool:
        return self.query("SELECT pg_get_wal_replay_pause_state()") != "not paused"

    def promote(self, timeout: float | None = None) -> None:
        """Promote this standby (``pg_ctl promote``) and wait until it accepts writes."""
        timeout = timeout or self.cluster.timeout
        if self.is_running() and self.is_replay_paused():
            self.resume_replay()
        rc, out = self._pg(
            [
                self._bin("pg_ctl"),
                "promote",
                "-D",
                str(self.datadir),
                "-w",
                "-t",
                str(int(timeout)),
            ],
            timeout=timeout + 5,
            check=False,
        )
        if rc != 0:
            raise ClusterError(
                f"{self.name}: pg_ctl promote failed ({rc}):\n{out}{_log_tail(self.logfile)}"
            )
        _wait_for(
            f"{self.name} out of recovery",
            lambda: not self.is_in_recovery(),
            timeout,
            log=self.logfile,
        )
        self.role = "primary"


class PgCluster:
    """A PostgreSQL primary with ``standbys`` streaming hot standbys, on loopback.

    ``synchronous_standby_names``: set on the primary as given (e.g. ``"FIRST 1 (standby1)"``
    or ``"standby1"``; node names are ``primary``, ``standby1``, ``standby2``...); standbys
    always get ``''`` so that a promoted one does not wait for standbys it does not have.
    ``settings``: extra postgresql.conf lines for every node. ``fsync``: see the module
    docstring. ``timeout`` bounds every single wait.

    Use as a context manager or call ``start()`` / ``close()``.
    """

    def __init__(
        self,
        standbys: int = 1,
        *,
        synchronous_standby_names: str | None = None,
        fsync: bool = False,
        settings: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.bindir = find_pg_bindir()
        self.user = _service_user("postgres")
        self.n_standbys = standbys
        self.synchronous_standby_names = synchronous_standby_names
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.timeout = timeout
        self.base: Path = Path()
        self.nodes: list[PgNode] = []
        self.startup_seconds: float | None = None
        self._engines: list[sa.Engine] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<PgCluster {self.nodes}>"

    def __enter__(self) -> PgCluster:
        return self if self.nodes else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def primary(self) -> PgNode:
        """The node started as the primary (after a promotion: still that one; the promoted
        node is the one ``promote()`` was called on)."""
        return self.nodes[0]

    @property
    def standbys(self) -> list[PgNode]:
        return self.nodes[1:]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def _conf(self, node: PgNode, *, primary: bool) -> str:
        settings: dict[str, Any] = {
            "listen_addresses": "127.0.0.1",
            "port": node.port,
            "unix_socket_directories": str(node.dir),
            "max_connections": 50,
            "shared_buffers": "16MB",
            "wal_level": "replica",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "256MB",
            "max_wal_size": "256MB",
            "hot_standby": "on",
            "wal_receiver_status_interval": "1s",
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on",
            "synchronous_standby_names": (self.synchronous_standby_names or "") if primary else "",
            "logging_collector": "off",
            "log_line_prefix": f"%m [%p] {node.name} ",
            "cluster_name": node.name,
        }
        settings.update(self.settings)
        lines = ["", "# -- tests/clusters.py --"]
        for k, v in settings.items():
            if isinstance(v, str):
                v = "'" + v.replace("'", "''") + "'"
            lines.append(f"{k} = {v}")
        return "\n".join(lines) + "\n"

    def start(self) -> PgCluster:
        """Create and start all nodes (once; a second call is an error)."""
        if self.nodes or self._closed:
            raise ClusterError("PgCluster.start() called twice")
        t0 = time.monotonic()
        self.base = _cluster_tmpdir("kvpg-", self.user)
        _register(self)
        try:
            primary = PgNode(self, "primary", "primary")
            self.nodes.append(primary)
            self._initdb(primary)
            with open(primary.datadir / "postgresql.conf", "a") as f:
                f.write(self._conf(primary, primary=True))
            primary.start()
            for _ in range(self.n_standbys):
                self.add_standby()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _initdb(self, primary: PgNode) -> None:
        key = ("pg", str(self.bindir), self.user)
        template = _template(key)
        if template is not None:
            _copy_tree(template, primary.datadir)
            return
        primary._pg(
            [
                primary._bin("initdb"),
                "-D",
                str(primary.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]
        )
        (primary.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        _save_template(key, primary.datadir)

    def add_standby(self, upstream: PgNode | None = None, name: str | None = None) -> PgNode:
        """Base-backup a new hot standby from ``upstream`` (default: the primary), start it
        and wait until it streams."""
        upstream = upstream or self.primary
        node = PgNode(self, name or f"standby{len(self.nodes)}", "standby")
        self.nodes.append(node)
        node._pg(
            [
                node._bin("pg_basebackup"),
                "-d",
                f"host=127.0.0.1 port={upstream.port} user=postgres application_name={node.name}",
                "-D",
                str(node.datadir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]
        )
        with open(node.datadir / "postgresql.conf", "a") as f:
            f.write(self._conf(node, primary=False))
        # -R wrote primary_conninfo to postgresql.auto.conf; the last setting there wins
        with open(node.datadir / "postgresql.auto.conf", "a") as f:
            f.write(
                f"primary_conninfo = 'host=127.0.0.1 port={upstream.port} user=postgres "
                f"application_name={node.name}'\n"
            )
        node.start()
        _wait_for(
            f"{node.name} streaming from {upstream.name}",
            lambda: upstream.query(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
                (node.name,),
            ),
            self.timeout,
            log=node.logfile,
        )
        return node

    def wait_for_replay(self, timeout: float | None = None) -> None:
        """Wait until every running standby (still in recovery) has replayed the primary's
        current WAL position."""
        lsn = self.primary.current_lsn()
        for node in self.standbys:
            if node.role == "standby" and node.is_running():
                node.wait_for_replay(lsn, timeout)

    def close(self) -> None:
        """Stop every node (immediate; SIGKILL if that fails) and remove all directories.
        Idempotent, and safe to call on a half-started cluster."""
        if self._closed:
            return
        self._closed = True
        for engine in self._engines:
            with contextlib.suppress(Exception):
                engine.dispose()
        errors: list[str] = []
        for node in self.nodes:
            try:
                if node.is_running():
                    node.stop("immediate", timeout=15)
            except Exception as exc:
                errors.append(f"{node.name}: {exc}")
            if node.is_running() or (node.datadir / "postmaster.pid").exists():
                pid = node.pid
                if pid is not None:
                    _kill_group(pid)
                    with contextlib.suppress(TimeoutError):
                        _wait_for(f"{node.name} gone", lambda pid=pid: not _alive(pid), 10)
                node._remove_leftover_shm()
        if self.base != Path() and self.base.exists():
            for pid in _pids_using(self.base):
                _kill_group(pid)
            _remove_tree(self.base)
        _unregister(self)
        if errors:
            raise ClusterError("PgCluster.close: " + "; ".join(errors))


# -- Galera ---------------------------------------------------------------------------------------
def find_galera() -> dict[str, Path]:
    """Paths of mariadbd, mariadb-install-db, the Galera provider and rsync (for SST).
    ``$KVSTORE_GALERA_PROVIDER`` overrides the provider. Raises ClusterUnavailable."""
    found: dict[str, Path] = {}
    missing = []
    for key, names, extra in (
        ("mariadbd", ("mariadbd", "mysqld"), ("/usr/sbin", "/usr/libexec", "/usr/local/mysql/bin")),
        (
            "install_db",
            ("mariadb-install-db", "mysql_install_db"),
            ("/usr/bin", "/usr/local/mysql/scripts"),
        ),
        ("rsync", ("rsync",), ()),
        ("sst_rsync", ("wsrep_sst_rsync",), ("/usr/bin",)),
    ):
        path = None
        for n in names:
            path = shutil.which(n, path=os.pathsep.join([os.environ.get("PATH", ""), *extra]))
            if path:
                break
        if path:
            found[key] = Path(path)
        else:
            missing.append(names[0])
    provider = os.environ.get("KVSTORE_GALERA_PROVIDER")
    for cand in filter(
        None,
        [
            provider,
            "/usr/lib/galera/libgalera_smm.so",
            "/usr/lib/libgalera_smm.so",
            "/usr/lib64/galera-4/libgalera_smm.so",
            "/usr/lib64/galera/libgalera_smm.so",
            "/usr/lib/x86_64-linux-gnu/galera/libgalera_smm.so",
        ],
    ):
        if Path(cand).is_file():
            found["provider"] = Path(cand).resolve()
            break
    else:
        missing.append("libgalera_smm.so (set KVSTORE_GALERA_PROVIDER)")
    if missing:
        raise ClusterUnavailable(f"Galera cluster tests need {', '.join(missing)}")
    return found


class GaleraNode:
    """One ``mariadbd`` of a :class:`GaleraCluster`."""

    def __init__(self, cluster: GaleraCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"node{index + 1}"
        self.port = free_port()  # client (SQL) port
        self.galera_port = free_port()  # group communication (gmcast)
        self.ist_port = free_port()
        self.sst_port = free_port()
        self.dir = _make_dir(cluster.base / self.name, cluster.user)
        self.datadir = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.pidfile = self.dir / "mysqld.pid"
        self.logfile = self.dir / "error.log"
        self.cnf = self.dir / "my.cnf"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<GaleraNode {self.name} 127.0.0.1:{self.port} running={self.is_running()}>"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (PyMySQL) of database ``test`` on this node, as root over TCP."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/test"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(
        self,
        *,
        bootstrap: bool = False,
        wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Start ``mariadbd`` (``--wsrep-new-cluster`` when ``bootstrap``); with ``wait``,
        wait until it is Synced. A node that was killed rejoins (state transfer by IST or
        rsync SST from a donor)."""
        if self.is_running():
            raise ClusterError(f"{self.name} is already running")
        argv = [str(self.cluster.bins["mariadbd"]), f"--defaults-file={self.cnf}"]
        if bootstrap:
            argv.append("--wsrep-new-cluster")
        elif self._needs_recovery() and (position := self.recover_position()):
            # what galera_recovery does under systemd: find the last committed seqno in InnoDB
            # so that the node rejoins by IST from a donor's gcache instead of a full SST
            argv.append(f"--wsrep-start-position={position}")
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        if wait:
            self.wait_synced(timeout)

    def _needs_recovery(self) -> bool:
        """A crashed node's grastate.dat says seqno -1 (its position is only in InnoDB)."""
        try:
            grastate = (self.datadir / "grastate.dat").read_text()
        except OSError:
            return False
        return re.search(r"^seqno:\s*-1\s*$", grastate, re.M) is not None

    def recover_position(self) -> str | None:
        """``mariadbd --wsrep-recover``: the ``uuid:seqno`` InnoDB committed last (None if
        it cannot tell). Only for a node that is not running."""
        log = self.dir / "recover.log"
        log.unlink(missing_ok=True)
        rc, _ = _run(
            [
                str(self.cluster.bins["mariadbd"]),
                f"--defaults-file={self.cnf}",
                "--wsrep-recover",
                f"--log-error={log}",
            ],
            timeout=self.cluster.timeout,
            cwd=self.dir,
            check=False,
        )
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return None
        m = re.search(r"WSREP: Recovered position:\s*([0-9a-f-]{36}:-?\d+)", text)
        if rc != 0 or m is None or m.group(1).endswith(":-1"):
            return None
        return m.group(1)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ClusterError(
                f"{self.name}: mariadbd exited with {self.proc.returncode}{_log_tail(self.logfile)}"
            )

    def wait_synced(self, timeout: float | None = None, cluster_size: int | None = None) -> None:
        """Wait until this node is ``Synced`` (and, if given, sees ``cluster_size`` members)."""

        def synced() -> bool:
            self._check_alive()
            st = self.status("wsrep_local_state_comment", "wsrep_cluster_size", "wsrep_ready")
            ok = st.get("wsrep_local_state_comment") == "Synced" and st.get("wsrep_ready") == "ON"
            if cluster_size is not None:
                ok = ok and st.get("wsrep_cluster_size") == str(cluster_size)
            return ok

        self._wait(
            f"{self.name} Synced" + (f" in a cluster of {cluster_size}" if cluster_size else ""),
            synced,
            timeout,
        )

    def _wait(self, what: str, check: Callable[[], T], timeout: float | None) -> T:
        def guarded() -> T:
            try:
                return check()
            except ClusterError as exc:  # the process died: no point in waiting on
                raise _StopWaiting(exc) from exc

        return _wait_for(
            what, guarded, timeout or self.cluster.timeout, interval=0.1, log=self.logfile
        )

    def engine(self, **kw: Any) -> sa.Engine:
        """A SQLAlchemy engine on :attr:`url` (connect timeout 5 s, read/write timeout 30 s),
        disposed by the cluster's ``close()``; keyword arguments go to ``create_engine``."""
        kw.setdefault(
            "connect_args", {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30}
        )
        engine = sa.create_engine(self.url, **kw)
        self.cluster._engines.append(engine)
        return engine

    def connect(self, timeout: float = 10, **kw: Any) -> Any:
        """A PyMySQL connection as root over TCP (autocommit), for admin queries."""
        import pymysql

        kw.setdefault("database", None)
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password="",
            connect_timeout=max(1, int(timeout)),
            read_timeout=int(timeout),
            write_timeout=int(timeout),
            autocommit=True,
            **kw,
        )

    def query(self, sql: str, params: Any = None, timeout: float = 10) -> Any:
        """First column of the first row of ``sql`` (autocommit)."""
        with contextlib.closing(self.connect(timeout)) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone() if cur.description is not None else None
        return None if row is None else row[0]

    def status(self, *names: str, timeout: float = 5) -> dict[str, str]:
        """``SHOW GLOBAL STATUS`` values, e.g. ``status("wsrep_cluster_size")``."""
        with contextlib.closing(self.connect(timeout)) as conn, conn.cursor() as cur:
            cur.execute(
                "SHOW GLOBAL STATUS WHERE Variable_name IN (" + ",".join(["%s"] * len(names)) + ")",
                names,
            )
            return {k.lower(): v for k, v in cur.fetchall()}

    def kill(self, timeout: float | None = None) -> None:
        """SIGKILL this node's process group (mariadbd and any SST helper): a crash."""
        if self.proc is None:
            return
        _kill_popen_group(self.proc)
        try:
            self.proc.wait(timeout or self.cluster.timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{self.name}: still alive {timeout}s after SIGKILL") from None
        for pid in _pids_using(self.dir):
            _kill_group(pid)

    def stop(self, timeout: float | None = None) -> None:
        """Clean shutdown (SIGTERM; the node leaves the cluster gracefully); SIGKILL if it
        takes longer than ``timeout``."""
        if not self.is_running():
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout or self.cluster.timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float | None = None) -> None:
        """Kill (if running) and start again, rejoining the cluster; waits until Synced."""
        self.kill()
        self.start(timeout=timeout)


class GaleraCluster:
    """``nodes`` MariaDB Galera nodes on loopback, all Synced after ``start()``.

    Settings: rsync SST, gcache 64M, small InnoDB buffers, and failure detection tuned down
    (a SIGKILLed node leaves the others' view in about 3 s instead of 15). ``settings``:
    extra ``[mysqld]`` options for every node; ``fsync``: see the module docstring.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        fsync: bool = False,
        settings: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.bins = find_galera()
        self.user = _service_user("mysql")
        self.n_nodes = nodes
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.timeout = timeout
        self.base: Path = Path()
        self.nodes: list[GaleraNode] = []
        self.name = "kvstore-test-" + uuid.uuid4().hex[:8]
        self.startup_seconds: float | None = None
        self._engines: list[sa.Engine] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<GaleraCluster {self.name} {self.nodes}>"

    def __enter__(self) -> GaleraCluster:
        return self if self.nodes else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def _write_cnf(self, node: GaleraNode) -> None:
        address = ",".join(f"127.0.0.1:{n.galera_port}" for n in self.nodes)
        provider_options = ";".join(
            [
                f"gmcast.listen_addr=tcp://127.0.0.1:{node.galera_port}",
                f"ist.recv_addr=127.0.0.1:{node.ist_port}",
                "gcache.size=64M",
                "evs.keepalive_period=PT0.5S",
                "evs.inactive_check_period=PT0.5S",
                "evs.suspect_timeout=PT2S",
                "evs.inactive_timeout=PT3S",
                "evs.install_timeout=PT3S",
                "gmcast.peer_timeout=PT2S",
            ]
        )
        opts: dict[str, Any] = {
            "datadir": node.datadir,
            "socket": node.socket,
            "pid-file": node.pidfile,
            "log-error": node.logfile,
            "tmpdir": node.dir,
            "port": node.port,
            "bind-address": "127.0.0.1",
            "skip-name-resolve": None,
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_general_ci",
            "max_connections": 100,
            "performance_schema": "OFF",
            "innodb_buffer_pool_size": "32M",
            "innodb_log_file_size": "16M",
            "innodb_log_buffer_size": "4M",
            "innodb_flush_log_at_trx_commit": 1 if self.fsync else 2,
            "sync_binlog": 1 if self.fsync else 0,
            "innodb_doublewrite": 1 if self.fsync else 0,
            "binlog_format": "ROW",
            "default_storage_engine": "InnoDB",
            "innodb_autoinc_lock_mode": 2,
            "wsrep_on": "ON",
            "wsrep_provider": self.bins["provider"],
            "wsrep_cluster_name": self.name,
            "wsrep_cluster_address": f"gcomm://{address}",
            "wsrep_node_name": node.name,
            "wsrep_node_address": f"127.0.0.1:{node.galera_port}",
            "wsrep_node_incoming_address": f"127.0.0.1:{node.port}",
            "wsrep_sst_receive_address": f"127.0.0.1:{node.sst_port}",
            "wsrep_sst_method": "rsync",
            "wsrep_provider_options": f'"{provider_options}"',
            "wsrep_slave_threads": 2,
        }
        if self.user:
            opts["user"] = self.user
        opts.update(self.settings)
        lines = ["[mysqld]"]
        for k, v in opts.items():
            lines.append(k if v is None else f"{k} = {v}")
        node.cnf.write_text("\n".join(lines) + "\n")

    def start(self) -> GaleraCluster:
        """Create and start all nodes (once; a second call is an error)."""
        if self.nodes or self._closed:
            raise ClusterError("GaleraCluster.start() called twice")
        t0 = time.monotonic()
        self.base = _cluster_tmpdir("kvgal-", self.user)
        _register(self)
        try:
            self.nodes = [GaleraNode(self, i) for i in range(self.n_nodes)]
            for node in self.nodes:
                self._write_cnf(node)
                _make_dir(node.datadir, self.user)
            self._prepare_datadirs()
            self.nodes[0].start(bootstrap=True)
            for node in self.nodes[1:]:
                node.start(wait=False)
            for node in self.nodes:
                node.wait_synced(cluster_size=self.n_nodes)
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _prepare_datadirs(self) -> None:
        """Give every node the same initialised data directory *with* a Galera state
        (grastate.dat: uuid and seqno of a clean shutdown), so that the joiners find
        themselves up to date and join without any state transfer (an rsync SST costs
        5-8 s per joiner here). The first cluster of the process makes it: install-db,
        a bootstrap of node 1, a clean stop; later ones copy the cached result."""
        key = ("galera", str(self.bins["mariadbd"]), str(self.bins["provider"]), self.user)
        template = _template(key)
        if template is None:
            first = self.nodes[0]
            self._install_db(first)
            first.start(bootstrap=True)
            first.stop()
            grastate = (first.datadir / "grastate.dat").read_text()
            if first._needs_recovery():
                raise ClusterError(
                    f"{first.name}: no Galera position after a clean stop:\n{grastate}"
                )
            _save_template(key, first.datadir)
            template = first.datadir
            others = self.nodes[1:]
        else:
            others = self.nodes
        for node in others:
            node.datadir.rmdir()
            _copy_tree(template, node.datadir)

    def _install_db(self, node: GaleraNode) -> None:
        init_sql = node.dir / "init.sql"
        # root@localhost and root@127.0.0.1 without a password come from
        # --auth-root-authentication-method=normal; database "test" from here
        init_sql.write_text("CREATE DATABASE IF NOT EXISTS test;\n")
        cnf = node.dir / "install.cnf"
        lines = [
            "[mysqld]",
            f"datadir = {node.datadir}",
            f"log-error = {node.dir / 'install.log'}",
            f"tmpdir = {node.dir}",
            "innodb_buffer_pool_size = 32M",
            "innodb_log_file_size = 16M",
            "innodb_flush_log_at_trx_commit = 2",
            "innodb_doublewrite = 0",
            "skip-name-resolve",
        ]
        cnf.write_text("\n".join(lines) + "\n")
        argv = [
            str(self.bins["install_db"]),
            f"--defaults-file={cnf}",
            f"--datadir={node.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            f"--extra-file={init_sql}",
        ]
        if self.user:
            argv.append(f"--user={self.user}")
        _run(argv, timeout=self.timeout * 2, cwd=node.dir)

    def wait_synced(
        self, nodes: list[GaleraNode] | None = None, timeout: float | None = None
    ) -> None:
        """Wait until all ``nodes`` (default: the running ones) are Synced and each sees a
        cluster of exactly ``len(nodes)``."""
        nodes = nodes if nodes is not None else [n for n in self.nodes if n.is_running()]
        for n in nodes:
            n.wait_synced(timeout, cluster_size=len(nodes))

    def heal(self, timeout: float | None = None) -> None:
        """Restart every node that is not running and wait until all are Synced."""
        for n in self.nodes:
            if not n.is_running():
                n.kill()  # reap, kill any straggler of the dead node
                n.start(wait=False)
        self.wait_synced(self.nodes, timeout)

    def close(self) -> None:
        """SIGKILL every node (the data goes anyway) and remove all directories. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for engine in self._engines:
            with contextlib.suppress(Exception):
                engine.dispose()
        for n in self.nodes:
            if n.proc is not None:
                _kill_popen_group(n.proc)
        for n in self.nodes:
            if n.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(10)
        if self.base != Path() and self.base.exists():
            for pid in _pids_using(self.base):
                _kill_group(pid)
            _remove_tree(self.base)
        _unregister(self)


# -- pytest plugin --------------------------------------------------------------------------------
CLUSTER_FIXTURES = frozenset(
    {"pg_cluster", "make_pg_cluster", "galera_cluster", "make_galera_cluster"}
)


_previous_sigterm: Any = None


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a cancelled CI job) would end the interpreter without finalizers or atexit:
    tear the clusters down first, then die of the signal as before."""
    close_all_clusters()
    _remove_templates()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def pytest_configure(config: pytest.Config) -> None:
    global _previous_sigterm
    config.addinivalue_line("markers", CLUSTER_MARKER)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _previous_sigterm
    if _previous_sigterm is not None and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _previous_sigterm)
    _previous_sigterm = None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses a cluster fixture carries the ``cluster`` marker, so that
    ``-m cluster`` / ``-m "not cluster"`` select them without anyone having to remember it.
    (tryfirst: before the ``-m`` deselection runs.) This also works when the plugin is only
    loaded by a test module's ``pytest_plugins``, i.e. after that module's decorators ran,
    where an import-time ``@pytest.mark.cluster`` would still be an unknown marker."""
    for item in items:
        if (
            CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            and item.get_closest_marker("cluster") is None
        ):
            item.add_marker("cluster")


def _start_or_skip(factory: Callable[[], T]) -> T:
    """Build a cluster object: skip when binaries are missing, let anything else error."""
    try:
        return factory()
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))


def _need_driver(module: str, extra: str) -> None:
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"{extra} cluster tests need the {module} driver (pip install {module})")


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """Primary + 2 hot standbys for the module. Leave it as you found it."""
    _need_driver("psycopg", "PostgreSQL")
    cluster = _start_or_skip(lambda: PgCluster(standbys=2))
    with cluster:
        yield cluster


@pytest.fixture
def make_pg_cluster() -> Iterator[Callable[..., PgCluster]]:
    """Factory: ``make_pg_cluster(standbys=1, **PgCluster kwargs)``; torn down after the test."""
    _need_driver("psycopg", "PostgreSQL")
    made: list[PgCluster] = []

    def make(standbys: int = 1, **kw: Any) -> PgCluster:
        cluster = _start_or_skip(lambda: PgCluster(standbys, **kw))
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for c in made:
            c.close()


@pytest.fixture(scope="module")
def _galera_module_cluster() -> Iterator[GaleraCluster]:
    _need_driver("pymysql", "Galera")
    cluster = _start_or_skip(lambda: GaleraCluster(nodes=3))
    with cluster:
        yield cluster


@pytest.fixture
def galera_cluster(_galera_module_cluster: GaleraCluster) -> GaleraCluster:
    """A 3-node Galera cluster, all nodes Synced (nodes killed by an earlier test of the
    module are restarted first)."""
    _galera_module_cluster.heal()
    return _galera_module_cluster


@pytest.fixture
def make_galera_cluster() -> Iterator[Callable[..., GaleraCluster]]:
    """Factory: ``make_galera_cluster(nodes=3, **GaleraCluster kwargs)``; torn down after."""
    _need_driver("pymysql", "Galera")
    made: list[GaleraCluster] = []

    def make(nodes: int = 3, **kw: Any) -> GaleraCluster:
        cluster = _start_or_skip(lambda: GaleraCluster(nodes, **kw))
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for c in made:
            c.close()
