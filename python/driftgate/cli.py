"""The `driftgate` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from driftgate.demo import create_demo_app
        from driftgate.settings import SettingsError, load_settings
    except ImportError as error:
        print(
            f"driftgate serve needs the fastapi extra (pip install 'driftgate[fastapi]'): {error}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        settings = load_settings(args.config)
    except SettingsError as error:
        print(f"driftgate serve: --config {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.state_dir is not None:
        from dataclasses import replace

        settings = replace(settings, state_path=args.state_dir / settings.state_path.name)
    app = create_demo_app(settings)
    # One worker: the tracker's windows and the rollout state live in this process.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level=args.log_level)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftgate", description="Move a policy from shadow to enforced, safely."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the demo service under uvicorn")
    serve.add_argument("--config", type=Path, help="a Helm-style values file (YAML)")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
    serve.add_argument(
        "--state-dir", type=Path, help="folder for the rollout state file (default: from config)"
    )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
