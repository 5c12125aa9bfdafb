"""The set-up scripts and the build's dependency check, without a fresh Debian root."""

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def bash(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env},
    )


def configure(tmp_path: Path, *definitions: str) -> subprocess.CompletedProcess[str]:
    cmake = shutil.which("cmake")
    assert cmake, "cmake is installed by scripts/test.sh"
    return subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(tmp_path / "build"), "-G", "Ninja", *definitions],
        capture_output=True,
        text=True,
    )


def test_build_names_every_missing_debian_package_in_one_message(tmp_path):
    result = configure(
        tmp_path,
        "-DSKBUILD=ON",
        "-DDRIFTGATE_BUILD_TESTS=ON",
        "-DCMAKE_DISABLE_FIND_PACKAGE_prometheus-cpp=ON",
        "-DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON",
        "-DCMAKE_DISABLE_FIND_PACKAGE_Python=ON",
        "-DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON",
    )
    assert result.returncode != 0
    assert (
        "sudo apt-get install prometheus-cpp-dev nlohmann-json3-dev python3-dev catch2"
        in result.stderr
    )
    assert result.stderr.count("CMake Error") == 1, result.stderr
    assert "package configuration file" not in result.stderr


def test_build_names_only_the_missing_packages(tmp_path):
    result = configure(tmp_path, "-DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON")
    assert result.returncode != 0
    assert "sudo apt-get install nlohmann-json3-dev\n" in result.stderr


def test_build_configures_when_nothing_is_missing(tmp_path):
    result = configure(tmp_path, "-DDRIFTGATE_BUILD_TESTS=ON")
    assert result.returncode == 0, result.stderr
    assert "apt-get" not in result.stdout + result.stderr


def test_setup_installs_the_compiler_tools_and_python_headers():
    result = bash('source scripts/setup.sh; printf "%s\\n" "${DEBIAN_PACKAGES[@]}"', ROOT)
    assert result.returncode == 0, result.stderr
    packages = set(result.stdout.split())
    assert {"g++", "cmake", "ninja-build", "python3-dev", "python3-venv"} <= packages
    assert {"prometheus-cpp-dev", "nlohmann-json3-dev", "catch2"} <= packages


@pytest.fixture
def source_tree(tmp_path) -> Path:
    """A checkout with setup.sh, a little source, and a .venv whose python logs its calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPTS / "setup.sh", tmp_path / "scripts")
    (tmp_path / "cpp" / "src").mkdir(parents=True)
    (tmp_path / "cpp" / "src" / "core.cpp").write_text("int core() { return 1; }\n")
    (tmp_path / "python" / "driftgate").mkdir(parents=True)
    (tmp_path / "python" / "driftgate" / "__init__.py").write_text("")
    (tmp_path / "CMakeLists.txt").write_text("project(x)\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'driftgate'\n")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text('#!/bin/sh\necho "$*" >>"$(dirname "$0")/../calls"\nexit "${PIP_RC:-0}"\n')
    python.chmod(0o755)
    return tmp_path


def install(tree: Path, extras: str, **env: str) -> list[str]:
    """Runs install_driftgate and returns the pip commands it ran."""
    calls = tree / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    bash(f"source scripts/setup.sh; install_driftgate {extras}", tree, **env)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line for line in lines if line.startswith("-m pip install")]


def builds(pip_calls: list[str], tree: Path) -> bool:
    """True when pip was asked to build the checkout itself."""
    return any(f" {tree}[" in call for call in pip_calls)


def test_install_builds_first_then_skips_while_the_source_is_unchanged(source_tree):
    first = install(source_tree, "fastapi")
    assert builds(first, source_tree)
    assert (source_tree / ".venv" / "driftgate-source.sha256").is_file()

    second = install(source_tree, "test")
    assert second == ["-m pip install --quiet driftgate[test]"]


@pytest.mark.parametrize(
    "change",
    [
        lambda tree: (tree / "cpp" / "src" / "core.cpp").write_text("int core() { return 2; }\n"),
        lambda tree: (tree / "python" / "driftgate" / "cli.py").write_text("x = 1\n"),
        lambda tree: (tree / "cpp" / "src" / "core.cpp").rename(tree / "cpp" / "src" / "c.cpp"),
        lambda tree: (tree / "pyproject.toml").write_text("[project]\nname = 'other'\n"),
        lambda tree: (tree / "CMakeLists.txt").write_text("project(y)\n"),
    ],
    ids=["cpp-edit", "python-new-file", "rename", "pyproject", "cmakelists"],
)
def test_install_rebuilds_after_a_source_change(source_tree, change):
    install(source_tree, "fastapi")
    change(source_tree)
    assert builds(install(source_tree, "fastapi"), source_tree)
    assert install(source_tree, "fastapi") == ["-m pip install --quiet driftgate[fastapi]"]


def test_install_ignores_files_that_do_not_go_into_the_wheel(source_tree):
    install(source_tree, "fastapi")
    cache = source_tree / "python" / "driftgate" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (source_tree / "README.md").write_text("docs\n")
    assert install(source_tree, "fastapi") == ["-m pip install --quiet driftgate[fastapi]"]


def test_a_failed_install_leaves_no_stamp_and_builds_again(source_tree):
    install(source_tree, "fastapi")
    (source_tree / "cpp" / "src" / "core.cpp").write_text("broken\n")
    install(source_tree, "fastapi", PIP_RC="1")
    assert not (source_tree / ".venv" / "driftgate-source.sha256").exists()
    assert builds(install(source_tree, "fastapi"), source_tree)


def test_fresh_debian_check_runs_the_readmes_commands_as_written():
    result = subprocess.run(
        ["bash", str(SCRIPTS / "fresh_debian_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "demo: DRIFTGATE_ADMIN_TOKEN=change-me bash scripts/demo.sh" in lines
    assert "test: bash scripts/test.sh" in lines
    calls = result.stdout.split("calls:\n", 1)[1]
    assert "curl -s localhost:8000/api/v1/readyz" in calls
    # the drifting requests that close the gate, as the README sends them
    assert "curl -s -X POST 'localhost:8000/verify?n=[1-19]'" in calls


def test_scripts_parse():
    for script in sorted(SCRIPTS.glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
