#!/usr/bin/env bash
# Installs what the tests need, then runs the mutation run of driftgate's rules with the
# arguments given (none: every mutant, which takes hours on two cores; --smoke: the subset CI
# runs; --help: the rest). docs/testing.md says what it does and how to read it.
source "$(dirname "$0")/setup.sh"
cd "$DRIFTGATE_ROOT"

install_debian_packages
install_driftgate test
exec "$VENV_PYTHON" scripts/mutation.py "$@"
