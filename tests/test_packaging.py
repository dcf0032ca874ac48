"""The package as users get it: the wheel is built from (a copy of) this checkout and installed
into a fresh venv, with its dependencies resolved by pip, and there ``import kvstore``, the
``kvstore`` command and the shipped migrations must work. The distribution is named
``sqlalchemy-kvstore`` (``pip install kvstore`` is someone else's project); the import name and
the command stay ``kvstore``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

import kvstore
from kvstore import migrations

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DIST = "sqlalchemy-kvstore"

# What the build must not see: local environments, caches and earlier build output (setuptools
# reuses an in-tree build/, which could hand back files the checkout no longer has).
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".tox",
    "build",
    "dist",
    "site",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".*_cache",
    ".hypothesis",
    "*.db",
    "*.db-wal",
    "*.db-shm",
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path  # the fresh venv's bin/ (Scripts\ on Windows)
    work: Path  # a scratch directory outside the checkout, the commands' cwd
    env: dict[str, str]

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str | Path) -> str:
        p = self.run(*args)
        assert p.returncode == 0, f"{args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
        return p.stdout

    @property
    def python(self) -> Path:
        return self.bin / ("python.exe" if os.name == "nt" else "python")

    @property
    def kvstore(self) -> Path:
        return self.bin / ("kvstore.exe" if os.name == "nt" else "kvstore")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("packaging")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["KVSTORE_URL"] = f"sqlite:///{tmp / 'unused-default.db'}"  # never the cwd's kvstore.db

    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    dist = tmp / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, f"building the wheel failed:\n{build.stdout}\n{build.stderr}"
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels

    target = tmp / "venv"
    venv.create(target, with_pip=True, clear=True)
    bin_dir = target / ("Scripts" if os.name == "nt" else "bin")
    work = tmp / "work"
    work.mkdir()
    inst = Installed(wheels[0], bin_dir, work, env)
    inst.ok(inst.python, "-m", "pip", "install", "-q", inst.wheel)
    return inst


def wheel_metadata(wheel: Path) -> tuple[list[str], dict[str, list[str]], str]:
    """The wheel's file names, its METADATA headers (each a list of values) and its
    entry_points.txt."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        message = Parser().parsestr(zf.read(info).decode())
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    headers: dict[str, list[str]] = {}
    for key, value in message.items():
        headers.setdefault(key, []).append(value)
    return names, headers, entry_points


def test_wheel_is_named_and_described_as_sqlalchemy_kvstore(installed: Installed) -> None:
    assert PYPROJECT["project"]["name"] == DIST
    version = PYPROJECT["project"]["version"]
    assert installed.wheel.name.startswith(f"sqlalchemy_kvstore-{version}-"), installed.wheel.name
    _, headers, entry_points = wheel_metadata(installed.wheel)
    assert headers["Name"] == [DIST]
    assert headers["Version"] == [version]
    # the command keeps its name
    assert re.search(r"^\[console_scripts\]\s*^kvstore = kvstore\.cli:main$", entry_points, re.M)
    # the extras are there, and the ones that name the project itself use its new name
    extras = set(headers["Provides-Extra"])
    assert {"postgres", "psycopg2", "mysql", "mariadbconnector", "asyncmy", "test"} <= extras
    requires = headers["Requires-Dist"]
    assert [r for r in requires if re.match(r"kvstore\b", r)] == []
    assert any(r.startswith("psycopg[binary]") and 'extra == "postgres"' in r for r in requires)
    assert any(r.startswith("psycopg2-binary") and 'extra == "psycopg2"' in r for r in requires)
    assert any(r.lower().startswith("pymysql") and 'extra == "mysql"' in r for r in requires)
    assert any(r.startswith("mariadb") and 'extra == "mariadbconnector"' in r for r in requires)
    assert any(r.startswith("asyncmy") and 'extra == "asyncmy"' in r for r in requires)
    own = [r for r in requires if r.startswith(f"{DIST}[")]
    assert own and all(re.match(rf"{DIST}\[[\w,-]+\]", r) for r in own), own


def test_wheel_ships_the_package_its_typing_marker_and_the_migrations(
    installed: Installed,
) -> None:
    names, _, _ = wheel_metadata(installed.wheel)
    expected = {"kvstore/py.typed", "kvstore/_alembic/script.py.mako"}
    expected |= {f"kvstore/{p.name}" for p in (ROOT / "kvstore").glob("*.py")}
    expected |= {f"kvstore/_alembic/{p.name}" for p in (ROOT / "alembic").glob("*.py")}
    versions = {p.name for p in (ROOT / "alembic" / "versions").glob("*.py")}
    assert "0001_initial.py" in versions
    expected |= {f"kvstore/_alembic/versions/{name}" for name in versions}
    assert sorted(expected - set(names)) == []
    # nothing of the checkout beyond the package: no tests, benchmarks, examples or caches
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"kvstore"}, top
    assert [n for n in names if "__pycache__" in n or n.endswith(".pyc")] == []


def test_installed_distribution_imports_as_kvstore(installed: Installed) -> None:
    out = installed.ok(
        installed.python,
        "-c",
        "import importlib.metadata as m, kvstore, sys;"
        f"d = m.distribution({DIST!r});"
        "print(kvstore.__version__, d.version, d.metadata['Name'], sep='\\n');"
        "print(kvstore.__file__);"
        "print(d.locate_file('kvstore/py.typed').is_file())",
    )
    version, dist_version, name, module_file, typed = out.splitlines()
    assert version == dist_version == PYPROJECT["project"]["version"] == kvstore.__version__
    assert name == DIST
    # the installed copy, not this checkout
    site = Path(module_file).resolve()
    assert not site.is_relative_to(ROOT) and site.is_relative_to(installed.bin.parent.resolve())
    assert typed == "True"
    # the old distribution name is not what was installed
    missing = installed.run(
        installed.python, "-c", "import importlib.metadata as m; m.distribution('kvstore')"
    )
    assert missing.returncode != 0 and "PackageNotFoundError" in missing.stderr
    # and pip finds the dependencies it resolved consistent
    installed.ok(installed.python, "-m", "pip", "check")


def test_installed_kvstore_command_puts_and_gets(installed: Installed) -> None:
    url = f"sqlite:///{installed.work / 'cli.db'}"
    version = installed.ok(installed.kvstore, "--version")
    assert version == f"kvstore, version {kvstore.__version__}\n"
    assert installed.ok(installed.kvstore, "--url", url, "put", "greeting", "hello") == ""
    assert installed.ok(installed.kvstore, "--url", url, "get", "greeting") == "hello"
    assert installed.ok(installed.kvstore, "--url", url, "ls") == "greeting\n"
    # python -m kvstore is the same command
    got = installed.ok(installed.python, "-m", "kvstore", "--url", url, "get", "greeting")
    assert got == "hello"


def test_installed_migrations_run_from_the_wheel(installed: Installed) -> None:
    """`db upgrade` runs the Alembic scripts shipped inside the package: the migration files
    must be in the wheel, not just in the checkout."""
    url = f"sqlite:///{installed.work / 'migrated.db'}"
    installed.ok(installed.kvstore, "--url", url, "db", "upgrade")
    assert installed.ok(installed.kvstore, "--url", url, "db", "current").split() == (
        migrations.heads()
    )
    installed.ok(installed.kvstore, "--url", url, "db", "check")
    assert installed.ok(installed.kvstore, "--url", url, "put", "k", "v") == ""
    assert installed.ok(installed.kvstore, "--url", url, "get", "k") == "v"
