"""The demo service as a module-level app, for `uvicorn examples.demo_service:app`.

`driftgate serve [--config examples/values.yaml]` runs the same app; DRIFTGATE_CONFIG names a
values file here."""

from driftgate.demo import app_from_environment

app = app_from_environment()
