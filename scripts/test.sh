#!/usr/bin/env bash
# Installs what driftgate needs and runs every test: the C++ core's Catch2 tests through
# ctest (a plain build, then the mutation smoke run in that build, then an ASan/UBSan build and
# a TSan build, all with -Werror), then pytest.
# DRIFTGATE_TEST_SCOPE=plain-ctest stops after the plain build's tests (default: all).
source "$(dirname "$0")/setup.sh"
cd "$DRIFTGATE_ROOT"

scope="${DRIFTGATE_TEST_SCOPE:-all}"
case "$scope" in
all | plain-ctest) ;;
*)
    echo "DRIFTGATE_TEST_SCOPE: expected all or plain-ctest, got '$scope'" >&2
    exit 2
    ;;
esac

# prometheus: promtool checks and unit-tests the alert rules; the server is scraped by a test.
# wrk: the HTTP load benchmark, whose smoke run is a test. strace: the state file's write
# faults are injected with it. redis-server: the fleet's tests, its benchmark and its demo run
# real Redis servers (over TLS too, and as Sentinels: `redis-server --sentinel`, so no
# redis-sentinel package). faketime: a service whose clocks run faster shows a gate reopening after
# its five-minute window in seconds. iproute2: the partition tests put a replica in a network
# namespace of its own (`ip netns`, veth links) and cut its link to Redis.
install_debian_packages prometheus wrk strace redis-server faketime iproute2
install_driftgate test

jobs="$(nproc)"
run_ctest() {
    local name="$1" sanitize="$2"
    local dir="build/ctest-$name"
    echo "==> C++ tests ($name)"
    cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDRIFTGATE_BUILD_TESTS=ON \
        -DDRIFTGATE_WERROR=ON -DDRIFTGATE_SANITIZE="$sanitize" >/dev/null
    cmake --build "$dir" --parallel "$jobs"
    ctest --test-dir "$dir" --output-on-failure --parallel "$jobs"
}

run_ctest plain ""
if [ "$scope" = plain-ctest ]; then
    echo "==> DRIFTGATE_TEST_SCOPE=plain-ctest: done after the plain C++ tests"
    exit 0
fi
# Do the tests still pin the rules? A fixed subset of the mutants (tests/mutation_smoke.txt),
# each of which a test must kill; the whole mutation run is docs/testing.md's.
echo "==> mutation smoke run"
"$VENV_PYTHON" scripts/mutation.py --smoke --build-dir build/ctest-plain --jobs "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 run_ctest asan "address,undefined"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" run_ctest tsan thread

echo "==> pytest"
# here a missing promtool or prometheus fails its tests instead of skipping them
DRIFTGATE_REQUIRE_PROMETHEUS=1 "$VENV_PYTHON" -m pytest
