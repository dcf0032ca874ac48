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
    block = re.search(
        r"<!-- test-command -->\n```bash\n(.+?)\n```\n<!-- /test-command -->", README, re.S
    )
    assert block is not None
    assert "pytest" in block.group(1)
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
