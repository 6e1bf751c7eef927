# The README cannot rot: its walk-through runs here, line by line, as a user would type it.
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough -->\s*```sh\n(.*?)```\s*<!-- /walkthrough -->", text, re.S)
    assert block, "README.md has no walk-through block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_walkthrough_runs_line_by_line(tmp_path: Path):
    """Every command of the README's walk-through exits 0 in a fresh kept demo world."""
    lines = [line.replace("/tmp/remcopy-demo", str(tmp_path / "world")) for line in _walkthrough()]
    assert any(line.startswith("remcopy demo") for line in lines)
    script = "set -euo pipefail\n" + "\n".join(f'echo "+ {line}"\n{line}' for line in lines)
    run = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    try:
        assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
        assert "consistent at T=" in run.stdout
        assert "demo passed: every check ok" in run.stdout
        assert "Traceback" not in run.stderr
    finally:
        subprocess.run(
            [
                "bash",
                "-c",
                "source .venv/bin/activate && remcopy controller stop "
                f"{tmp_path}/world/controllers/*.toml",
            ],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
