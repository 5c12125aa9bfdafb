#!/usr/bin/env bash
# Follows the README's set-up on a freshly debootstrapped Debian 12 (minbase plus python3, git
# and ca-certificates): in a clean clone of this repository's HEAD it runs the README's two
# commands as written, the demo until it answers /api/v1/healthz and the README's curl calls
# against it, then the test command. The test command stops after install, build and the plain
# Catch2 run unless DRIFTGATE_TEST_SCOPE=all.
#
# Only what any machine on this network has is carried in: the Debian mirror this machine uses
# (DEBIAN_MIRROR overrides it), its CA certificates, its pip configuration and its name
# resolution. dpkg runs without fsync there (the root is thrown away). Run as root. The
# debootstrapped root is cached in build/fresh-debian/, so only the first run pays for debootstrap.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE=bookworm
INCLUDE=python3,git,ca-certificates
WORK="$REPO/build/fresh-debian"
CHROOT="$WORK/root"
CLONE=/srv/driftgate # inside the chroot
# dpkg without fsync: durability only, which a root thrown away after the check does not need
UNSAFE_IO=etc/dpkg/dpkg.cfg.d/driftgate-check-unsafe-io
SCOPE="${DRIFTGATE_TEST_SCOPE:-plain-ctest}"
DEMO_START_TIMEOUT=1800 # seconds: the demo's first start installs and compiles everything
STARTED=$SECONDS
demo_pid=""

log() { echo "==> [$((SECONDS - STARTED)) s] $*"; }
fail() {
    echo "fresh_debian_check: $*" >&2
    exit 1
}

# The mirror of this machine's apt sources (one-line and deb822 format) that serves $SUITE, else
# the first that serves a Debian release.
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local mirror
    mirror="$(
        {
            cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                sed -e 's/#.*//' -e 's/\[[^]]*\]//' |
                awk '$1 == "deb" { print $2, $3 }'
            cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
                sed -e '/^#/d' |
                awk 'BEGIN { RS = ""; FS = "\n" }
                     {
                         types = uris = suites = ""; enabled = "yes"
                         for (i = 1; i <= NF; i++) {
                             split($i, kv, ":[ \t]*")
                             key = tolower(kv[1]); value = substr($i, length(kv[1]) + 2)
                             sub(/^[ \t]+/, "", value)
                             if (key == "types") types = value
                             else if (key == "uris") uris = value
                             else if (key == "suites") suites = value
                             else if (key == "enabled") enabled = tolower(value)
                         }
                         if (enabled == "no" || types !~ /(^| )deb( |$)/) next
                         split(uris, u, " "); n = split(suites, s, " ")
                         for (i = 1; i <= n; i++) print u[1], s[i]
                     }'
        } | awk -v suite="$SUITE" '
                $2 == suite { print $1; found = 1; exit }
                !other && $1 ~ /\/debian\/?$/ && $2 !~ /[-\/]/ { other = $1 }
                END { if (!found && other) print other }'
    )"
    [ -n "$mirror" ] || fail "no Debian release suite in /etc/apt/sources.list*; set DEBIAN_MIRROR"
    echo "$mirror"
}

# Mount points at or under the chroot, deepest first.
chroot_mounts() {
    awk -v root="$CHROOT" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/mounts |
        sort -r
}

unmount_chroot() {
    local mount_point
    for mount_point in $(chroot_mounts); do
        umount "$mount_point" 2>/dev/null || umount -l "$mount_point"
    done
}

stop_demo() {
    [ -n "$demo_pid" ] || return 0
    # the demo runs in its own session: its process group id is its pid
    kill -TERM -- "-$demo_pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$demo_pid" 2>/dev/null && [ "$waited" -lt 20 ]; do
        sleep 0.5
        waited=$((waited + 1))
    done
    kill -KILL -- "-$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
    demo_pid=""
}

cleanup() {
    stop_demo
    unmount_chroot
}

remove_chroot() {
    unmount_chroot
    [ -z "$(chroot_mounts)" ] || fail "still mounted under $CHROOT: $(chroot_mounts | tr '\n' ' ')"
    rm -rf --one-file-system "$CHROOT"
}

# Sets ROOT_TAR to a pristine debootstrapped root, made once per mirror and package list.
make_debian_root_tar() {
    local mirror="$1" key bootstrap
    key="$(printf '%s %s %s %s' "$SUITE" "$mirror" "$INCLUDE" "$(dpkg --print-architecture)" |
        sha256sum | cut -c1-12)"
    ROOT_TAR="$WORK/debian-$SUITE-minbase-$key.tar"
    if [ ! -f "$ROOT_TAR" ]; then
        command -v debootstrap >/dev/null || {
            log "installing debootstrap on this machine"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        }
        bootstrap="$WORK/bootstrap"
        rm -rf --one-file-system "$bootstrap"
        log "debootstrap $SUITE (minbase, $INCLUDE) from $mirror"
        # in two stages, so that dpkg can skip its fsyncs while it installs the base system
        {
            debootstrap --foreign --variant=minbase --include="$INCLUDE" "$SUITE" "$bootstrap" \
                "$mirror" &&
                echo force-unsafe-io >"$bootstrap/$UNSAFE_IO" &&
                chroot "$bootstrap" /debootstrap/debootstrap --second-stage
        } >"$WORK/debootstrap.log" 2>&1 || fail "debootstrap failed; see $WORK/debootstrap.log"
        rm -f "$bootstrap/$UNSAFE_IO" "$bootstrap"/var/cache/apt/archives/*.deb
        tar --numeric-owner -C "$bootstrap" -cf "$ROOT_TAR.partial" .
        mv "$ROOT_TAR.partial" "$ROOT_TAR"
        rm -rf --one-file-system "$bootstrap"
    fi
}

# Name resolution, CA certificates and pip configuration: nothing else of this machine.
carry_in() {
    cp /etc/resolv.conf /etc/hosts "$CHROOT/etc/"
    if [ -d /usr/local/share/ca-certificates ]; then
        mkdir -p "$CHROOT/usr/local/share/ca-certificates"
        cp -r /usr/local/share/ca-certificates/. "$CHROOT/usr/local/share/ca-certificates/"
        chroot "$CHROOT" update-ca-certificates >/dev/null 2>&1
    fi
    [ ! -f /etc/ssl/certs/ca-certificates.crt ] ||
        cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"
    local file
    for file in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" \
        ${PIP_CONFIG_FILE:+"$PIP_CONFIG_FILE"}; do
        [ -e "$file" ] || continue
        local target="$CHROOT${file/#$HOME//root}"
        mkdir -p "$(dirname "$target")"
        cp -r "$file" "$target"
    done
}

mount_chroot() {
    mount -t proc proc "$CHROOT/proc"
    mount -t sysfs sysfs "$CHROOT/sys"
    mount --bind /dev "$CHROOT/dev"
    mount --bind /dev/pts "$CHROOT/dev/pts"
    mount -t tmpfs tmpfs "$CHROOT/dev/shm"
}

# The environment of a fresh login, plus this machine's pip settings.
CHROOT_ENV=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
while IFS= read -r variable; do
    CHROOT_ENV+=("$variable=${!variable}")
done < <(compgen -e | grep -E '^(PIP_|https?_proxy$|no_proxy$|HTTPS?_PROXY$|NO_PROXY$)' || true)

in_chroot() {
    chroot "$CHROOT" /usr/bin/env -i "${CHROOT_ENV[@]}" bash -c "cd $CLONE && $1"
}

# The first bash block after the README heading $1, comments and blank lines removed.
readme_block() {
    awk -v heading="$1" '
        $0 == heading { found = 1; next }
        found && /^```bash$/ { inside = 1; next }
        inside && /^```$/ { exit }
        inside { print }' "$REPO/README.md"
}

commands_of() { sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d'; }

setup_commands="$(readme_block '## Set-up' | commands_of)"
demo_command="$(grep 'scripts/demo.sh' <<<"$setup_commands")" ||
    fail "README.md's Set-up block has no scripts/demo.sh command"
test_command="$(grep 'scripts/test.sh' <<<"$setup_commands")" ||
    fail "README.md's Set-up block has no scripts/test.sh command"
demo_calls="$(readme_block '### Trying the demo service')"
[ -n "$demo_calls" ] || fail "README.md's 'Trying the demo service' has no bash block"

if [ "${1:-}" = --dry-run ]; then
    echo "mirror: $(debian_mirror 2>/dev/null || echo '(none found)')"
    echo "demo: $demo_command"
    echo "test: $test_command"
    echo "test scope: $SCOPE"
    printf 'calls:\n%s\n' "$demo_calls"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || fail "run as root (debootstrap, chroot and mount need it)"
case "$SCOPE" in all | plain-ctest) ;; *) fail "DRIFTGATE_TEST_SCOPE: expected all or plain-ctest, got '$SCOPE'" ;; esac

mkdir -p "$WORK"
trap cleanup EXIT
trap 'exit 130' INT TERM

mirror="$(debian_mirror)"
make_debian_root_tar "$mirror"
[ ! -d "$CHROOT" ] || log "removing the previous run's root"
remove_chroot
log "a fresh root from $(basename "$ROOT_TAR")"
mkdir -p "$CHROOT"
tar --numeric-owner -C "$CHROOT" -xf "$ROOT_TAR"
echo force-unsafe-io >"$CHROOT/$UNSAFE_IO"
carry_in
head="$(git -C "$REPO" rev-parse HEAD)"
[ -z "$(git -C "$REPO" status --porcelain --untracked-files=no)" ] ||
    log "note: uncommitted changes are not part of the check; it runs the committed $head"
git clone --quiet --no-checkout "$REPO" "$CHROOT$CLONE"
git -C "$CHROOT$CLONE" checkout --quiet --detach "$head"
mount_chroot

# The demo and its calls use port 8000 as the README does, unless something here holds it.
port=8000
if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    port="$(in_chroot "python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'")"
    log "port 8000 is taken on this machine: the demo and its calls use $port instead"
    demo_command="PORT=$port $demo_command"
    demo_calls="${demo_calls//localhost:8000/localhost:$port}"
    demo_calls="${demo_calls//127.0.0.1:8000/127.0.0.1:$port}"
fi

log "README: $demo_command (in the background)"
setsid chroot "$CHROOT" /usr/bin/env -i "${CHROOT_ENV[@]}" bash -c "cd $CLONE && $demo_command" \
    >"$WORK/demo.log" 2>&1 &
demo_pid=$!
healthz="http://127.0.0.1:$port/api/v1/healthz"
deadline=$((SECONDS + DEMO_START_TIMEOUT))
until in_chroot "python3 -c 'import urllib.request as u; u.urlopen(\"$healthz\", timeout=2)'" 2>/dev/null; do
    if ! kill -0 "$demo_pid" 2>/dev/null; then
        tail -n 40 "$WORK/demo.log" >&2
        fail "the demo exited before answering $healthz (log: $WORK/demo.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 40 "$WORK/demo.log" >&2
        fail "the demo did not answer $healthz within $DEMO_START_TIMEOUT s"
    fi
    sleep 2
done
log "the demo answers $healthz"
sed -n '/^==>/p' "$WORK/demo.log"

log "README: the demo service's curl calls"
calls_output="$(in_chroot "set -eo pipefail; $demo_calls" 2>&1)" || {
    echo "$calls_output" >&2
    fail "the README's curl calls failed"
}
echo "$calls_output"
grep -q '"DRIFT_GATE"' <<<"$calls_output" ||
    fail "readyz did not answer DRIFT_GATE after the README's drifting requests"
stop_demo
log "demo stopped"

log "README: DRIFTGATE_TEST_SCOPE=$SCOPE $test_command"
in_chroot "DRIFTGATE_TEST_SCOPE=$SCOPE $test_command" || fail "the README's test command failed"
log "passed: the README's set-up on a fresh Debian $SUITE ($((SECONDS - STARTED)) s)"
