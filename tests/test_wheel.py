"""The shipped wheel: built and repaired by scripts/build_wheel.sh, it carries its own
prometheus-cpp, so it installs and runs on a machine without Debian's library."""

import ctypes.util
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent

# Runs in the wheel's venv: records a drift and prints the exposition, which is prometheus-cpp's
# serializer at work, then the shared objects the process has mapped.
USE_THE_WHEEL = """
import driftgate

registry = driftgate.MetricsRegistry()
tracker = driftgate.DriftTracker(clock=driftgate.ManualClock(0.0), registry=registry)
assert tracker.record("policy", "ok", "fail")
assert tracker.counts("5m", "policy") == (1, 1)
print(driftgate._core.__file__)
with open("/proc/self/maps") as maps:
    print(*sorted({line.split()[-1] for line in maps if ".so" in line}), sep="\\n")
print(registry.exposition())
"""


@pytest.fixture(scope="module")
def wheel(built_wheel) -> Path:
    return built_wheel


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index", wheel],
        check=True,
    )
    (venv / "use_the_wheel.py").write_text(USE_THE_WHEEL)
    return venv


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python*/site-packages")
    return found


def prometheus_cpp_paths(lines: list[str]) -> list[str]:
    return [line for line in lines if "libprometheus-cpp" in line]


def test_wheel_is_manylinux_and_bundles_prometheus_cpp_with_its_notice(wheel):
    assert "-manylinux_" in wheel.name, wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    bundled = [n for n in names if n.startswith("driftgate.libs/libprometheus-cpp-core-")]
    assert len(bundled) == 1, names
    assert "driftgate.libs/libprometheus-cpp-core1.0.copyright" in names
    notice = zipfile.ZipFile(wheel).read("driftgate.libs/libprometheus-cpp-core1.0.copyright")
    assert b"Jupp Mueller" in notice and b"Permission is hereby granted" in notice


def test_installed_wheel_loads_the_bundled_prometheus_cpp(venv):
    libs = site_packages(venv) / "driftgate.libs"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    result = subprocess.run(
        [venv / "bin" / "python", "use_the_wheel.py"],
        capture_output=True,
        text=True,
        cwd=venv,  # not the checkout: only the installed package can be imported
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    core = Path(lines[0])
    assert core.parent == site_packages(venv) / "driftgate"
    assert 'adapt_drift_events_total{policy_id="policy"} 1' in result.stdout

    loaded = prometheus_cpp_paths(lines[1:])
    assert loaded, result.stdout
    assert all(Path(path).parent == libs for path in loaded), loaded

    ldd = subprocess.run(["ldd", core], capture_output=True, text=True, check=True, env=env)
    resolved = prometheus_cpp_paths(ldd.stdout.splitlines())
    assert len(resolved) == 1, ldd.stdout
    # "libprometheus-cpp-core-<hash>.so.1.0.1 => <path> (<address>)"
    resolved_path = Path(resolved[0].split("=>")[1].split()[0]).resolve()
    assert resolved_path.parent == libs, ldd.stdout


def test_installed_wheel_runs_with_the_system_prometheus_cpp_hidden(venv):
    system_library = ctypes.util.find_library("prometheus-cpp-core")
    if system_library is None:
        pytest.skip("no system prometheus-cpp to hide: the other tests already run without it")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding a system library needs root and unshare")
    hidden = [
        str(path.resolve())
        for path in Path("/").glob(f"usr/lib/*/{system_library}")
        if path.exists()
    ]
    assert hidden, system_library
    # A private mount namespace: /dev/null is bound over the system library only for this
    # command; the rest of the machine keeps seeing it.
    load_system_library = f"import ctypes; ctypes.CDLL({system_library!r})"
    without_system = " && ".join(
        [
            *(shlex.join(["mount", "--bind", "/dev/null", path]) for path in hidden),
            f"{{ ! {shlex.join([sys.executable, '-c', load_system_library])} 2>/dev/null"
            " || { echo 'the system library still loads' >&2; exit 1; }; }",
            shlex.join(["cd", str(venv)]),
            shlex.join([str(venv / "bin" / "python"), "use_the_wheel.py"]),
        ]
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", without_system],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 and result.stderr.startswith(("unshare:", "mount:")):
        pytest.skip(f"cannot hide a library here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert 'adapt_drift_events_total{policy_id="policy"} 1' in result.stdout
