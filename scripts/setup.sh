# Shared by scripts/test.sh and scripts/demo.sh: installs what driftgate needs on a fresh
# Debian machine (system packages from Debian, Python packages from PyPI into .venv).
# Source it; it sets VENV_PYTHON.

set -euo pipefail

DRIFTGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The compiler, CMake and Ninja for the C++ core and its tests, the Python headers and venv
# module for the extension, the core's libraries, Catch2, and clang-format for the style test.
DEBIAN_PACKAGES=(g++ cmake ninja-build python3-dev python3-venv prometheus-cpp-dev catch2
    nlohmann-json3-dev clang-format)
# What goes into the wheel: when none of it changed, the installed package is current.
WHEEL_SOURCES=(cpp python CMakeLists.txt pyproject.toml)

install_debian_packages() {
    local missing=()
    for package in "${DEBIAN_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# One hash of the names and contents of every file that goes into the wheel.
wheel_source_hash() {
    (
        cd "$DRIFTGATE_ROOT"
        find "${WHEEL_SOURCES[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -d' ' -f1
}

# Written after a successful install: the hash of the source that .venv's driftgate was built from.
SOURCE_STAMP="$DRIFTGATE_ROOT/.venv/driftgate-source.sha256"

# True when the stamp names the source as it is now.
installed_driftgate_is_current() {
    [ -f "$SOURCE_STAMP" ] && [ "$(cat "$SOURCE_STAMP")" = "$(wheel_source_hash)" ]
}

# Creates .venv (once) and installs driftgate with the given extras into it. The C++ extension
# is built only when the source changed since the last install (or driftgate is not there).
install_driftgate() {
    local extras="$1"
    if [ ! -x "$DRIFTGATE_ROOT/.venv/bin/python" ]; then
        echo "==> creating .venv"
        python3 -m venv "$DRIFTGATE_ROOT/.venv"
    fi
    VENV_PYTHON="$DRIFTGATE_ROOT/.venv/bin/python"
    if installed_driftgate_is_current &&
        "$VENV_PYTHON" -c 'import importlib.metadata as m; m.version("driftgate")' 2>/dev/null; then
        echo "==> driftgate in .venv is built from the current source; installing what [$extras] adds"
        # satisfied by the installed driftgate: pip fetches only the extra's missing packages
        "$VENV_PYTHON" -m pip install --quiet "driftgate[$extras]"
        return 0
    fi
    local hash
    hash="$(wheel_source_hash)"
    rm -f "$SOURCE_STAMP"
    echo "==> building and installing driftgate[$extras]"
    "$VENV_PYTHON" -m pip install --quiet --upgrade pip
    "$VENV_PYTHON" -m pip install --quiet "$DRIFTGATE_ROOT[$extras]"
    echo "$hash" >"$SOURCE_STAMP"
}
