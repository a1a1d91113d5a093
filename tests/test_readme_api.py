"""The README's "Python API" example runs as written, from a fresh folder, and resumes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs_the_demo_and_a_rerun_resumes(tmp_path):
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    script = tmp_path / "example.py"
    script.write_text(readme_example())

    def run_example() -> str:
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    assert run_example() == "6 generated, 0 already done"
    assert len(list((tmp_path / "out" / "api-demo" / "videos").glob("*.mp4"))) == 6
    assert run_example() == "0 generated, 6 already done"
