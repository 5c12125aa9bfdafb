"""The project's own checks: formatting, lint, and the README's example as written."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DIRS = ["python", "tests", "benchmarks"]


def cpp_sources() -> list[str]:
    return sorted(
        str(p) for p in (ROOT / "cpp").rglob("*") if p.suffix in {".cpp", ".hpp"} and p.is_file()
    )


def test_cpp_is_clang_formatted():
    clang_format = shutil.which("clang-format")
    assert clang_format, "clang-format is installed by scripts/test.sh"
    result = subprocess.run(
        [clang_format, "--dry-run", "--Werror", *cpp_sources()],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_python_passes_ruff_lint_and_format():
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args, *PYTHON_DIRS],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_readme_usage_example_runs_as_written(tmp_path):
    from test_docs_run import write_project

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has a python usage example"
    write_project("README.md", tmp_path)  # the files of the project the README builds
    for block in blocks:
        if block.startswith("# tests/"):
            continue  # a test file: tests/test_docs_run.py runs it under pytest
        script = tmp_path / "example.py"
        script.write_text(block)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr


def test_stubs_cover_the_compiled_public_api():
    import driftgate

    stub = (ROOT / "python" / "driftgate" / "_core.pyi").read_text()
    compiled = [
        name
        for name in driftgate.__all__
        if getattr(getattr(driftgate, name), "__module__", "").startswith("driftgate._core")
    ]
    assert "DriftTracker" in compiled
    for name in compiled:
        assert re.search(rf"^(class|def) {name}\b", stub, flags=re.M), name
