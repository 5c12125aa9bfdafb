#!/usr/bin/env bash
# Installs what the demo service needs and runs it on http://127.0.0.1:${PORT:-8000}
# (open /docs). Rollout state goes to ./driftgate-state; set DRIFTGATE_ADMIN_TOKEN to use the
# admin endpoints. The C++ extension is rebuilt only when its source changed.
source "$(dirname "$0")/setup.sh"
cd "$DRIFTGATE_ROOT"

install_debian_packages curl   # curl: for the README's calls to the service
install_driftgate fastapi

exec "$DRIFTGATE_ROOT/.venv/bin/driftgate" serve --config examples/values.yaml \
    --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
