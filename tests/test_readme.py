"""The README cannot drift: its first command's shown output is what the tour prints, and
CI runs the README's test command verbatim."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_tour_prints_what_the_readme_shows(tmp_path: Path) -> None:
    first_command = re.search(r"```bash\n(.+?)\n```", README, re.S)
    assert first_command is not None
    assert "examples/tour.py" in first_command.group(1)
    shown = re.search(r"```text\n(.+?)\n```", README, re.S)
    assert shown is not None
    for _ in range(2):  # a second run starts from scratch too
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "tour.py")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert out.stdout.strip() == shown.group(1).strip()
    assert (tmp_path / "kvstore.db").exists()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run extracts the command between README.md's markers with its own shell line, and
    runs what it extracted: that line is run here, on the README, and must give the command
    the README shows; then the script must eval it, at top level, unchanged."""
    block = re.search(
        r"<!-- test-command -->\n```bash\n(.+?)\n```\n<!-- /test-command -->", README, re.S
    )
    assert block is not None
    shown = block.group(1).strip()
    assert re.search(r"\bpytest\b", shown), shown
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert script[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in script
    extract = [i for i, line in enumerate(script) if line.startswith("test_cmd=$(")]
    assert len(extract) == 1, "expected one top-level test_cmd=$(...) line in .ci/run"
    split = [i for i, line in enumerate(script) if line.startswith("install_cmd=")]
    assert len(split) == 1, "expected one top-level install_cmd=... line in .ci/run"
    show = 'printf \'%s\\0%s\' "$test_cmd" "$install_cmd"'
    shell = "\n".join(["set -euo pipefail", script[extract[0]], script[split[0]], show])
    out = subprocess.run(
        ["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    test_cmd, install_cmd = out.stdout.split("\0")
    assert test_cmd == shown
    # CI installs first (the command's install half), lints, then runs the command whole
    assert install_cmd.strip() and test_cmd.startswith(install_cmd) and install_cmd != test_cmd
    runs = [i for i, line in enumerate(script) if line == 'eval "$test_cmd"']
    assert runs, '.ci/run never runs eval "$test_cmd" at top level'
    assert runs[-1] > extract[0]
    between = script[extract[0] + 1 : runs[-1]]
    assert not [line for line in between if re.match(r"\s*test_cmd=", line)], "reassigned"
    assert not [line for line in between if re.match(r"exit\b", line)], "exits before running it"
