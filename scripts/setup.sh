# Shared by scripts/test.sh and scripts/demo.sh: installs what driftgate needs on a fresh
# Debian machine (system packages from Debian, Python packages from PyPI into .venv).
# Source it; it sets VENV_PYTHON.

set -euo pipefail

DRIFTGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEBIAN_PACKAGES=(g++ cmake ninja-build python3-venv prometheus-cpp-dev catch2 nlohmann-json3-dev clang-format)

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

# Creates .venv (once) and installs driftgate with the given extras into it.
install_driftgate() {
    local extras="$1"
    if [ ! -x "$DRIFTGATE_ROOT/.venv/bin/python" ]; then
        echo "==> creating .venv"
        python3 -m venv "$DRIFTGATE_ROOT/.venv"
    fi
    VENV_PYTHON="$DRIFTGATE_ROOT/.venv/bin/python"
    echo "==> building and installing driftgate[$extras]"
    "$VENV_PYTHON" -m pip install --quiet --upgrade pip
    "$VENV_PYTHON" -m pip install --quiet "$DRIFTGATE_ROOT[$extras]"
}
