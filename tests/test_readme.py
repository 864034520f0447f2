"""The README's set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text, re.S)
    assert m, f"README has no {marker} block"
    return m.group(1).strip()


def test_ci_runs_the_readme_test_command():
    cmd = _command("test-command")
    assert "pytest" in cmd
    assert cmd in (ROOT / ".ci" / "run").read_text()


def test_readme_demo_command_runs_the_demo():
    assert "tmd-defects demo" in _command("demo-command")
