"""The `driftgate` command line.

    driftgate adapt --policy ID --context FILE [--enforce] [--rollout N] [--drift-max R] ...
    driftgate serve [--config FILE] [--check] [--host H] [--port P] [--log-level LEVEL]
    driftgate status --url URL [--check] [--json]
    driftgate advance|rollback --url URL [--json]
    driftgate probe --url URL --body FILE [--field PATH] [--count N] [--interval S]
    driftgate token-hash --name NAME --scopes SCOPE[,SCOPE...] < token

Exit codes: 0 done (drift within the limit, signature stable, nothing needs a person); 1 the
service refused the action, or an internal error; 2 bad flags or input, credentials the
service refuses, or a service that cannot be reached; 3 drift above the limit, or an unstable
signature; 4 (`status --check`) the rollout waits for approval; 5 (`status --check`) the
rollout is aborted or its last check failed; 6 the rollout moved since it was read; 7 the
service cannot move it now; 8 a move whose outcome is not known; 9 the rollout's state needs
repair. Which answer gives which code is EXIT_CODES, documented in docs/cli.md. Errors are
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import enum
import http.client
import json
import json as _json
import math
import os
import re
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # imported when a command needs it, for a quick --help
    from driftgate._core import EnforceOptions

from driftgate import _sighup
from driftgate._http import Answer, BodyTooLarge, Unreached, exchange
from driftgate._messages import one_line, printable, shown
from driftgate.identity import Scope
from driftgate.reasons import ReasonCode
from driftgate.status import RolloutState, WaitingFor

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_FAILED_CHECK = 3
EXIT_AWAITING_APPROVAL = 4
EXIT_NEEDS_ATTENTION = 5
EXIT_CHANGED = 6
EXIT_UNAVAILABLE = 7
EXIT_OUTCOME_UNKNOWN = 8
EXIT_STATE_NEEDS_REPAIR = 9


class Unanswered(str, enum.Enum):
    """How a request to the service ended without an HTTP answer."""

    #: Nothing reached the service: connection refused, unknown host, no connection in time.
    UNREACHABLE = "unreachable"
    #: A read (the status, or the one before a move) got no answer within --timeout.
    TIMEOUT = "timeout"
    #: A move was sent and no answer came back: it may have been applied.
    MOVE_UNANSWERED = "move unanswered"

    def __str__(self) -> str:
        return self.value


EXIT_CODES: MappingProxyType[str, int] = MappingProxyType(
    {
        # A reason code in the answer decides first...
        ReasonCode.UNKNOWN_ROLLOUT: EXIT_USAGE,
        ReasonCode.STATE_STORE: EXIT_UNAVAILABLE,
        ReasonCode.IDENTITY_PROVIDER: EXIT_UNAVAILABLE,
        ReasonCode.MOVE_QUEUE_FULL: EXIT_UNAVAILABLE,
        ReasonCode.STATE_UNKNOWN: EXIT_OUTCOME_UNKNOWN,
        ReasonCode.STATE_REGRESSED: EXIT_STATE_NEEDS_REPAIR,
        ReasonCode.STATE_FILE: EXIT_STATE_NEEDS_REPAIR,
        # ...then the status code...
        "2xx": EXIT_OK,
        "400": EXIT_REFUSED,
        "401": EXIT_USAGE,
        "403": EXIT_USAGE,
        "404": EXIT_USAGE,
        "409": EXIT_CHANGED,
        "412": EXIT_CHANGED,
        "413": EXIT_REFUSED,
        "422": EXIT_REFUSED,
        "503": EXIT_UNAVAILABLE,
        # ...then its class; a move answered by another 5xx (a proxy's 502 or 504, a crash
        # after the commit) may have been applied.
        "4xx": EXIT_REFUSED,
        "5xx": EXIT_UNAVAILABLE,
        "move 5xx": EXIT_OUTCOME_UNKNOWN,
        # No answer at all.
        Unanswered.UNREACHABLE: EXIT_USAGE,
        Unanswered.TIMEOUT: EXIT_USAGE,
        Unanswered.MOVE_UNANSWERED: EXIT_OUTCOME_UNKNOWN,
    }
)
"""The exit code of `status`, `advance` and `rollback` for each answer of the service: the one
table, documented as it is in docs/cli.md."""

_ADVICE = {
    EXIT_CHANGED: "nothing was changed: check `driftgate status` and try again",
    EXIT_UNAVAILABLE: "nothing was changed: try again later",
    EXIT_OUTCOME_UNKNOWN: "the move may have been applied: run the same command again with the "
    "same --idempotency-key, which answers what happened and never moves twice",
    EXIT_STATE_NEEDS_REPAIR: "moves stay refused until the rollout's state is repaired "
    "(docs/runbook_rollout.md)",
}


_BY_REASON = {key.value: code for key, code in EXIT_CODES.items() if isinstance(key, ReasonCode)}


def exit_code(status_code: int, reason: str | None = None, *, move: bool = False) -> int:
    """The exit code for an HTTP answer: its reason code's row, else its status code's, else
    its class's (EXIT_CODES). A move answered by a 5xx that carries no reason code of
    driftgate's (a proxy's 503 after it forwarded the request) may have been applied."""
    if reason in _BY_REASON:
        return _BY_REASON[reason]
    if move and status_code >= 500:
        return EXIT_CODES["move 5xx"]
    if 200 <= status_code < 300:
        return EXIT_CODES["2xx"]
    if str(status_code) in EXIT_CODES:
        return EXIT_CODES[str(status_code)]
    if status_code >= 500:
        return EXIT_CODES["move 5xx" if move else "5xx"]
    return EXIT_CODES["4xx"]


TOKEN_ENV = "DRIFTGATE_ADMIN_TOKEN"
URL_ENV = "DRIFTGATE_URL"
ENGINE_FLAGS = ("--ir", "--selector", "--weights")


class CommandError(Exception):
    """Ends a command with `code` and a one-line message on stderr."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag, then exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


# -- adapt -----------------------------------------------------------------------------------


def _percent_text(ratio: float) -> str:
    return f"{ratio:.3%}"


def _adapt_summary(report: dict[str, Any], written: str) -> str:
    options = report["options"]
    requests = report["requests"]
    cohort = report["cohort_size"]
    windows = ", ".join(
        f"{name} {_percent_text(w['ratio'])}" for name, w in report["windows"].items()
    )
    limit = options["drift_max_ratio"]
    verdict = (
        f"PASS: drift {_percent_text(report['drift_ratio'])} <= {_percent_text(limit)}"
        if report["gate"] == "pass"
        else f"FAIL: drift {_percent_text(report['drift_ratio'])} > {_percent_text(limit)}"
    )
    lines = [
        f"policy {report['policy_id']}: enforce {'on' if options['enforce'] else 'off'}, "
        f"rollout {options['rollout_percent']:g}%, drift-max {_percent_text(limit)}, "
        f"seed {options['seed']}",
        f"requests       {requests}",
        f"cohort size    {cohort} ({_percent_text(cohort / requests)})",
        f"drift events   {report['drift_events']}",
        f"drift ratio    {_percent_text(report['drift_ratio'])} ({windows})",
        f"disagreements  {report['disagreements']} (records whose verdicts differ: the drift at "
        "100 % enforcement)",
        f"gate           {verdict}",
    ]
    if written:
        lines.append(f"report         {printable(written)}")
    return "\n".join(lines)


def _write_atomically(path: Path, text: str) -> None:
    """Temp file beside `path`, fsync, rename: a reader sees the old report or the new one."""
    try:
        descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise CommandError(f"-o {path}: cannot write ({error.strerror})") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        raise CommandError(f"-o {path}: cannot write ({error.strerror})") from None


def _enforce_options(args: argparse.Namespace) -> EnforceOptions:
    from driftgate._core import EnforceOptions

    flags = {"rollout_percent": "--rollout", "drift_max_ratio": "--drift-max"}
    try:
        return EnforceOptions(args.enforce, args.rollout, args.drift_max)
    except ValueError as error:
        message = str(error)
        field = message.partition("=")[0]
        raise CommandError(f"{flags.get(field, field)}: {message}") from None


def _adapt(args: argparse.Namespace) -> int:
    from driftgate._core import DriftTracker, MetricsRegistry
    from driftgate.adapt import DecisionFileError, read_decisions, replay

    for flag in ENGINE_FLAGS:
        if getattr(args, flag[2:]) is not None:
            raise CommandError(
                f"{flag} needs a policy engine, which driftgate does not have: record both "
                "verdicts (shadow, enforced) per request in the --context file instead"
            )
    try:  # the id rule of every tracker, checked before any file is read
        DriftTracker(registry=MetricsRegistry()).counts("5m", args.policy)
    except ValueError as error:
        raise CommandError(f"--policy: {error}") from None
    options = _enforce_options(args)
    if not 0 <= args.seed < 2**32:
        raise CommandError(f"--seed {args.seed}: expected an integer in [0, 2^32)")
    try:
        decisions = read_decisions(args.context)
    except DecisionFileError as error:
        raise CommandError(f"--context {error}") from None
    report = replay(decisions, args.policy, options, seed=args.seed)
    text = json.dumps(report, indent=2) + "\n"
    written = ""
    if args.output is not None:
        if args.dry_run:
            written = f"not written to {args.output} (--dry-run)"
        else:
            _write_atomically(args.output, text)
            written = f"written to {args.output}"
    if args.json:
        print(text, end="")
    else:
        print(_adapt_summary(report, written))
    return EXIT_OK if report["gate"] == "pass" else EXIT_FAILED_CHECK


# -- serve -----------------------------------------------------------------------------------


def _fastapi_extra(error: ImportError) -> CommandError:
    return CommandError(f"needs the fastapi extra (pip install 'driftgate[fastapi]'): {error}")


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # driftgate.settings.LOG_LEVELS


def _log_to_stderr(level: str) -> None:
    """driftgate's log lines on stderr at `level`, beside uvicorn's: the rollout monitor's
    decisions (INFO, logger `driftgate.rollout`) show where an operator looks."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("driftgate serve")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("driftgate")
    for old in [h for h in logger.handlers if h.get_name() == handler.get_name()]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False  # once, even where the root logger has a handler too


# -- state export and restore ----------------------------------------------------------------


def _state_source(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(rollout config, Redis store or None, state file path) from --config's values."""
    try:
        from driftgate.service.stores import build_store
        from driftgate.settings import SettingsError, load_settings
    except ImportError as error:
        raise _fastapi_extra(error) from None
    try:
        settings = load_settings(args.config)
        rollouts = {each.name: each for each in settings.all_rollouts()}
        if not rollouts:
            raise CommandError(f"--config {args.config}: the values configure no rollout")
        name = args.rollout or ("default" if "default" in rollouts or len(rollouts) > 1 else "")
        chosen = rollouts.get(name) if name else next(iter(rollouts.values()))
        if chosen is None:
            raise CommandError(
                f"--rollout {name}: the values configure no such rollout "
                f"(they have {', '.join(sorted(rollouts))})"
            )
        store = None if chosen.store is None else build_store(chosen.store)
    except (SettingsError, ValueError) as error:
        raise CommandError(f"--config {error}") from None
    state_path = chosen.state_path
    if args.state_dir is not None:
        state_path = args.state_dir / state_path.name
    return chosen.config, store, state_path


def _read_state(store: Any, state_path: Path) -> str | None:
    from driftgate._core import StateError

    if store is None:
        try:
            return state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"state file {state_path}: cannot read ({error})") from None
    try:
        document: str | None = store.load()
    except StateError as error:
        raise CommandError(str(error), EXIT_UNAVAILABLE) from None
    return document


def _where(store: Any, state_path: Path) -> str:
    return f"state file {state_path}" if store is None else str(store.describe())


def _exported_by_service(args: argparse.Namespace) -> tuple[str, str, str]:
    """(document, its ETag unquoted, where) as a running service holds it."""
    response = _request("GET", f"{_rollout_url(args)}/state", args.timeout, headers=_auth_headers())
    if response.status != 200:
        raise _refusal(response)
    document = response.text
    try:
        held = json.loads(document)
        tag = f"{held.get('incarnation', '')}.{held['version']}".lstrip(".")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CommandError(f"{response.url} answered without a rollout document") from None
    return document, tag, response.url


def _state_export(args: argparse.Namespace) -> int:
    from driftgate._core import StateError
    from driftgate.backup import document_info, pretty

    if args.config is None:  # from the service at --url (or $DRIFTGATE_URL)
        args.url = getattr(args, "url", None) or _url_from_environment()
        document, tag, where = _exported_by_service(args)
    else:
        config, store, state_path = _state_source(args)
        try:
            stored = _read_state(store, state_path)
        finally:
            if store is not None:
                store.close()
        where = _where(store, state_path)
        if stored is None:
            raise CommandError(f"{where} holds no rollout state to export", EXIT_STATE_NEEDS_REPAIR)
        try:
            tag = document_info(config, stored, where).etag
        except StateError as error:
            raise CommandError(str(error), EXIT_STATE_NEEDS_REPAIR) from None
        document = stored
    text = pretty(document)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as error:
            raise CommandError(f"--output {args.output}: cannot write ({error.strerror})") from None
        print(f'exported {where} at ETag "{tag}" to {args.output}', file=sys.stderr)
    return EXIT_OK


def _state_restore(args: argparse.Namespace) -> int:
    from driftgate._core import StateError, StateStoreError
    from driftgate.backup import restore_plan, write_state_file

    try:
        export = args.file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CommandError(f"{args.file}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"{args.file}: cannot read ({error})") from None
    config, store, state_path = _state_source(args)
    where = _where(store, state_path)
    try:
        for _ in range(3):  # the store may change between the read and the write
            stored = _read_state(store, state_path)
            document, info = restore_plan(
                config, export, stored, force=args.force, what=str(args.file)
            )
            if store is None:
                write_state_file(state_path, document)
                break
            if store.replace(document, stored):
                break
        else:
            raise CommandError(f"{where} kept changing; nothing was restored", EXIT_CHANGED)
    except StateStoreError as error:  # Redis away: nothing was restored
        raise CommandError(str(error), EXIT_UNAVAILABLE) from None
    except StateError as error:
        raise CommandError(str(error), EXIT_REFUSED) from None
    except OSError as error:
        raise CommandError(f"{where}: cannot write ({error.strerror})") from None
    finally:
        if store is not None:
            store.close()
    print(f'restored "{info.etag}" into {where}')
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    # First: a SIGHUP from now on is a reload the reloader makes once it runs, not the end of
    # a service that is still starting (its default action).
    _sighup.hold()
    try:
        from driftgate.settings import SettingsError, load_settings
    except ImportError as error:
        raise _fastapi_extra(error) from None
    try:
        settings = load_settings(args.config)
    except SettingsError as error:
        raise CommandError(f"--config {error}") from None
    try:  # every variable the values name, before anything is made, with or without --check
        from driftgate.service import check_environment

        check_environment(settings)
    except SettingsError as error:
        raise CommandError(f"--config {args.config}: {error}") from None
    except ImportError as error:
        raise _fastapi_extra(error) from None
    if args.check:
        try:  # the approvers too: a token file that cannot be read stops a start
            from driftgate.fastapi.auth import configured_approvers

            configured_approvers(settings)
        except SettingsError as error:
            raise CommandError(f"--config {error}") from None
        except ImportError as error:
            raise _fastapi_extra(error) from None
        print(f"{args.config}: valid" if args.config else "no --config: the defaults are valid")
        return EXIT_OK
    try:
        import uvicorn

        from driftgate.demo import create_demo_app
    except ImportError as error:
        raise _fastapi_extra(error) from None
    try:
        # The service reloads --config while it runs (folder change, SIGHUP, admin endpoint).
        app = create_demo_app(settings, values_file=args.config, state_dir=args.state_dir)
    except (SettingsError, ValueError) as error:  # e.g. the store's URL variable is unset
        raise CommandError(f"--config {error}") from None
    except OSError as error:  # the state file's folder cannot be made
        state_path = settings.state_path
        if args.state_dir is not None:
            state_path = args.state_dir / state_path.name
        where = error.filename or state_path.parent
        raise CommandError(f"rollout.state_path: cannot use {where} ({error.strerror})") from None
    # Set up only once serving is certain: a refused start leaves logging as it was (warnings
    # and errors of the start itself reach stderr through Python's last-resort handler).
    level = args.log_level or settings.log_level  # the flag wins over the values
    _log_to_stderr(level)
    # One worker: the tracker's windows and the rollout state live in this process.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level=level)
    return EXIT_OK


# -- talking to a service --------------------------------------------------------------------


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r}: expected an http:// or https:// URL")
    return value.rstrip("/")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a port in [0, 65535]")
    return port


def _version(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 16):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a rollout version (a whole number)")
    return int(value)


MAX_REASON_CHARS = 200  # what the rollout history keeps of a reason, and the HTTP body's cap


def _reason(value: str) -> str:
    """A move's reason: 1 to 200 characters that are not all blank. Too long a text is refused
    here rather than cut by the service; it is never echoed back whole."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a reason of 1 to 200 characters, got none")
    if len(value) > MAX_REASON_CHARS:
        raise argparse.ArgumentTypeError(
            f"expected a reason of 1 to {MAX_REASON_CHARS} characters, got {len(value)}"
        )
    return value


def _seconds(value: str) -> float:
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{value!r}: expected seconds > 0")
    return seconds


def _url_from_environment() -> str:
    """The service's URL when --url is not given: $DRIFTGATE_URL, checked as --url is."""
    value = os.environ.get(URL_ENV, "")
    if not value:
        raise CommandError(f"required: --url URL, or {URL_ENV} set to the service's base URL")
    try:
        return _url(value)
    except argparse.ArgumentTypeError as error:
        raise CommandError(f"{URL_ENV}: {error}") from None


def _request(
    method: str,
    url: str,
    timeout: float,
    *,
    move: bool = False,
    headers: dict[str, str] | None = None,
    json: Any = None,
    content: bytes | None = None,
) -> Answer:
    """The service's answer; without one, a CommandError whose code says whether a `move`
    may have reached the service. The standard library's HTTP within one deadline: the
    command line needs no HTTP package, so a plain `pip install driftgate` runs it."""
    body = content if json is None else _json.dumps(json).encode()
    try:
        return exchange(method, url, timeout=timeout, body=body, headers=headers)
    except Unreached as error:  # nothing was sent
        raise CommandError(
            f"cannot reach {url} ({error.kind})", EXIT_CODES[Unanswered.UNREACHABLE]
        ) from None
    except (OSError, http.client.HTTPException, BodyTooLarge) as error:
        kind = "TimeoutError" if isinstance(error, TimeoutError) else type(error).__name__
        if move:  # sent, perhaps committed: only the status can tell
            raise CommandError(
                f"{url}: no answer ({kind}, --timeout {timeout:g} s); "
                + _ADVICE[EXIT_CODES[Unanswered.MOVE_UNANSWERED]],
                EXIT_CODES[Unanswered.MOVE_UNANSWERED],
            ) from None
        if isinstance(error, TimeoutError):
            raise CommandError(
                f"{url}: no answer within {timeout:g} s (--timeout)", EXIT_CODES[Unanswered.TIMEOUT]
            ) from None
        raise CommandError(
            f"cannot reach {url} ({kind})", EXIT_CODES[Unanswered.UNREACHABLE]
        ) from None


def _json_answer(response: Answer) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        raise CommandError(
            f"{response.url} answered {response.status} without JSON that can be read"
        ) from None


def _refusal(response: Answer, *, move: bool = False) -> CommandError:
    """A non-2xx answer as an error, with its exit code from EXIT_CODES."""
    try:
        body = _json_answer(response)
    except CommandError:
        body = None  # e.g. a proxy's HTML error page: the status code says enough
    detail = body.get("detail") if isinstance(body, dict) else None
    reason = detail.partition(":")[0] if isinstance(detail, str) else None
    code = exit_code(response.status, reason, move=move)
    hint = f" (is {TOKEN_ENV} right?)" if response.status in (401, 403) else ""
    if reason == ReasonCode.MISSING_SCOPE.value:
        hint = f" (the approver of {TOKEN_ENV} does not hold that scope)"
    if code in _ADVICE:
        hint = f": {_ADVICE[code]}"
    elif response.status == 404 and reason != ReasonCode.NO_ROLLOUT.value:
        hint = " (no driftgate endpoint there: is its router under a prefix? give it in --url)"
    said = "" if detail is None else f" {detail}"
    return CommandError(f"the service answered {response.status}{said}{hint}", code)


def _status_text(status: dict[str, Any]) -> str:
    stage = status["current_stage"]
    lines = [
        f"stage      {stage['name']} ({status['stage_index'] + 1} of {status['total_stages']}), "
        f"{status['state']}",
        f"enforced   {status['enforced_percentage']:g}%"
        + ("" if status.get("enforcing", True) else " (enforce_enabled is off: shadow only)"),
        f"started    {status['started_at']}",
        f"elapsed    {status['elapsed_time']} (minimum {status['min_duration']})",
        f"max error  {_percent_text(stage['max_error_rate'])}",
    ]
    if status.get("last_error_rate") is not None:
        lines.append(f"last rate  {_percent_text(status['last_error_rate'])}")
    transitions = status.get("transitions") or []
    if transitions:
        lines.append("last transitions:")
        for move in transitions[-5:]:
            origin = move["from"] or "-"
            lines.append(
                f"  {move['time']}  {origin} -> {move['to']}  by {move['actor']}: {move['reason']}"
            )
    return "\n".join(lines)


def _auth_headers() -> dict[str, str]:
    """The bearer token from the environment, for a service whose status needs rollout:read."""
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check(status: dict[str, Any]) -> tuple[int, str]:
    """Whether the rollout needs a person: (exit code, one line saying why)."""
    stage = status["current_stage"]
    where = f"{stage['name']} ({stage['percentage']:g}%)"
    check = status.get("last_check")
    if status["state"] == RolloutState.ABORTED:
        return EXIT_NEEDS_ATTENTION, (
            "the rollout is aborted: enforcement is at 0% until `driftgate advance` resumes it"
        )
    if isinstance(check, dict) and check.get("failed") is True:
        return EXIT_NEEDS_ATTENTION, (
            f"the last check at {check.get('time')} failed at stage {where}: {check.get('message')}"
        )
    if status.get("awaiting_approval") is True:
        following = status.get("next_stage") or {}
        target = (
            f"{following.get('name')} ({following.get('percentage'):g}%)"
            if isinstance(following.get("percentage"), (int, float))
            else "the next stage"
        )
        approvals = status.get("approvals")
        gathered = (
            f" ({len(approvals.get('approved_by') or [])} of {approvals.get('required')} "
            "approvals so far)"
            if isinstance(approvals, dict)
            else ""
        )
        return EXIT_AWAITING_APPROVAL, (
            f"stage {where} is done and waits for approval to enter {target}{gathered}: "
            "`driftgate advance` (needs rollout:advance)"
        )
    waiting = status.get("waiting_for")
    why = f", waiting for {waiting}" if waiting not in (None, WaitingFor.NOTHING) else ""
    return EXIT_OK, f"nothing needs a person: stage {where}, {status['state']}{why}"


def _annotation(code: int, message: str) -> str | None:
    """A GitHub Actions workflow command for the check's outcome (its data escaped as the
    runner requires), or None when nothing needs a person."""
    level = {EXIT_AWAITING_APPROVAL: "warning", EXIT_NEEDS_ATTENTION: "error"}.get(code)
    if level is None:
        return None
    escaped = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{level} title=driftgate rollout::{escaped}"


def _rollout_url(args: argparse.Namespace) -> str:
    """Where the rollout's endpoints are: `--rollout NAME`'s, else the default one's."""
    name = getattr(args, "rollout", None)
    if name is None:
        return f"{args.url}/api/guardian/rollout"
    return f"{args.url}/api/guardian/rollouts/{name}"


def _rollout_status(url: str, timeout: float) -> tuple[dict[str, Any], str]:
    response = _request("GET", f"{url}/status", timeout, headers=_auth_headers())
    if response.status != 200:
        raise _refusal(response)
    return _json_answer(response), response.url


def _rollout_names(args: argparse.Namespace) -> list[str] | None:
    """The names the service lists (GET /api/guardian/rollouts), or None when it lists none:
    a service of one rollout only, or one from before several."""
    response = _request(
        "GET", f"{args.url}/api/guardian/rollouts", args.timeout, headers=_auth_headers()
    )
    if response.status == 404:
        return None
    if response.status != 200:
        raise _refusal(response)
    try:
        names = [line["name"] for line in _json_answer(response)["rollouts"]]
    except (KeyError, TypeError):
        raise CommandError(f"{response.url} answered without a list of rollouts") from None
    if names == ["default"] or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in names):
        return None if names == ["default"] else _no_list(response.url)
    return names


def _no_list(url: str) -> NoReturn:
    raise CommandError(f"{url} answered names that are no rollout's")


_URGENCY = {EXIT_OK: 0, EXIT_AWAITING_APPROVAL: 1, EXIT_NEEDS_ATTENTION: 2}


def _status(args: argparse.Namespace) -> int:
    names = None if args.rollout is not None else _rollout_names(args)
    if names is None:  # one rollout: its whole status
        status, url = _rollout_status(_rollout_url(args), args.timeout)
        try:
            text = json.dumps(status, indent=2) if args.json else _status_text(status)
            code, verdict = _check(status) if args.check else (EXIT_OK, "")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise CommandError(f"{url} answered without a rollout status") from None
        print(printable(text))
        if args.check:
            if not args.json:
                print(printable(f"check      {verdict}"))
            _annotate(code, verdict)
        return code
    # several: one line each, and the most urgent check of them all
    statuses: dict[str, Any] = {}
    lines, worst, verdicts = [], EXIT_OK, []
    for name in names:
        status, url = _rollout_status(f"{args.url}/api/guardian/rollouts/{name}", args.timeout)
        statuses[name] = status
        try:
            stage = status["current_stage"]
            line = (
                f"{name:<16} {stage['name']} ({status['stage_index'] + 1} of "
                f"{status['total_stages']}), {status['state']}, enforced "
                f"{status['enforced_percentage']:g}%"
            )
            code, verdict = _check(status) if args.check else (EXIT_OK, "")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise CommandError(f"{url} answered without a rollout status") from None
        lines.append(f"{line}: {verdict}" if args.check else line)
        verdicts.append((code, f"rollout {name}: {verdict}"))
        worst = max(worst, code, key=_URGENCY.__getitem__)
    print(printable(json.dumps(statuses, indent=2) if args.json else "\n".join(lines)))
    for code, verdict in verdicts:
        if args.check:
            _annotate(code, verdict)
    return worst


def _annotate(code: int, verdict: str) -> None:
    annotation = _annotation(code, verdict) if os.environ.get("GITHUB_ACTIONS") else None
    if annotation is not None:
        print(printable(annotation))


def _token_hash(args: argparse.Namespace) -> int:
    from driftgate.identity import token_file_line

    if sys.stdin is None:
        raise CommandError("no standard input: pipe the token in")
    if sys.stdin.isatty():
        import getpass

        token = getpass.getpass("token (not shown): ")
    else:
        text = sys.stdin.read(64 * 1024 + 1)
        if len(text) > 64 * 1024:
            raise CommandError("standard input is longer than any token")
        token = text.removesuffix("\n").removesuffix("\r")
        if "\n" in token or "\r" in token:
            raise CommandError("standard input holds more than one line: expected one token")
    try:
        line = token_file_line(args.name, token, args.scopes.split(","))
    except ValueError as error:
        raise CommandError(str(error)) from None
    print(line)
    return EXIT_OK


def _precondition_of(status: Answer) -> tuple[int, str]:
    """The rollout version a status answer carries and the If-Match that names it: its ETag
    as sent (compared strongly, so never rebuilt from the number), else the body's version."""
    body = _json_answer(status)
    version = body.get("version") if isinstance(body, dict) else None
    tag = (status.header("etag") or "").strip()
    if not (isinstance(version, int) and not isinstance(version, bool) and version >= 0):
        raise CommandError(f"{status.url} answered without a rollout version")
    if not tag or tag.startswith("W/"):
        tag = f'"{version}"'
    return version, tag


_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _idempotency_key(text: str) -> str:
    if not _KEY.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{shown(text)}: expected 1-64 characters of [A-Za-z0-9_.:-]"
        )
    return text


def _move(args: argparse.Namespace) -> int:
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise CommandError(f"{TOKEN_ENV} is not set: the admin endpoints need its token")
    body = {"reason": args.reason} if getattr(args, "reason", None) else None
    # One id for this move, kept in its history entry: a rerun with it is answered with the
    # first outcome (e.g. after a timeout), never applied twice.
    key = args.idempotency_key or secrets.token_hex(16)
    # The move applies only to the version just read: two people who both saw one stage and
    # both ask to advance move the rollout once, and the second is told.
    expected = args.expected_version
    if expected is None:
        status = _request("GET", f"{_rollout_url(args)}/status", args.timeout)
        if status.status != 200:
            raise _refusal(status)
        expected, tag = _precondition_of(status)
    else:
        tag = f'"{expected}"'
    try:
        response = _request(
            "POST",
            f"{_rollout_url(args)}/{args.command}",
            args.timeout,
            move=True,
            headers={"Authorization": f"Bearer {token}", "If-Match": tag, "Idempotency-Key": key},
            json=body,
        )
        if response.status not in (200, 412):
            raise _refusal(response, move=True)
    except CommandError as refusal:
        if refusal.code == EXIT_OUTCOME_UNKNOWN:
            refusal.args = (f"{refusal} (--idempotency-key {key})",)
        raise
    if response.status == 412:
        raise CommandError(
            f"the rollout changed since version {expected} was read; " + _ADVICE[EXIT_CODES["412"]],
            EXIT_CODES["412"],
        )
    answer = _json_answer(response)
    try:
        text = (
            json.dumps(answer, indent=2)
            if args.json
            else f"{answer['message']}: now {answer['new_stage']} at {answer['new_percentage']:g}%"
        )
    except (KeyError, TypeError, ValueError):
        raise CommandError(f"{response.url} answered without a transition") from None
    print(printable(text))
    return EXIT_OK


# -- probe -----------------------------------------------------------------------------------


def _field(answer: Any, path: str, attempt: int) -> str:
    value = answer
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise CommandError(f"answer {attempt} has no field {path!r}")
        value = value[part]
    if isinstance(value, (dict, list)) or value is None:
        raise CommandError(f"answer {attempt}: field {path!r} is not a signature: {shown(value)}")
    return printable(str(value))


JSON = "application/json"


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _json_body(path: Path) -> bytes:
    """The file's bytes, once they are known to be one strict JSON document (UTF-8, no NaN):
    posted as they are, so the service gets exactly what the file says."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CommandError(f"--body {path}: no such file") from None
    except OSError as error:
        raise CommandError(f"--body {path}: cannot read ({error.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise CommandError(
            f"--body {path}:{line}: not UTF-8 (byte 0x{raw[error.start]:02x} at offset "
            f"{error.start})"
        ) from None
    try:  # numbers are only checked, never converted: any length is JSON
        json.loads(text, parse_int=len, parse_float=len, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise CommandError(f"--body {path}:{error.lineno}: not valid JSON ({error.msg})") from None
    except ValueError as error:
        raise CommandError(f"--body {path}: not valid JSON ({error})") from None
    except RecursionError:
        raise CommandError(f"--body {path}: JSON nested too deeply to check") from None
    return raw


def _probe(args: argparse.Namespace) -> int:
    if args.count < 2:
        raise CommandError(f"--count {args.count}: expected at least 2 (one answer cannot differ)")
    if not (args.interval >= 0 and math.isfinite(args.interval)):
        raise CommandError(f"--interval {args.interval}: expected seconds >= 0")
    body = _json_body(args.body)
    signatures: list[str] = []
    for attempt in range(1, args.count + 1):
        if attempt > 1 and args.interval:
            time.sleep(args.interval)
        response = _request(
            "POST", args.url, args.timeout, content=body, headers={"Content-Type": JSON}
        )
        if not 200 <= response.status < 300:
            raise CommandError(f"answer {attempt}: the service answered {response.status}")
        signatures.append(_field(_json_answer(response), args.field, attempt))
    counts = Counter(signatures)
    stable = len(counts) == 1
    if args.json:
        report = {
            "field": args.field,
            "count": args.count,
            "stable": stable,
            "signatures": dict(counts),
        }
        print(json.dumps(report, indent=2))
    elif stable:
        print(f"stable: {args.count} of {args.count} answers gave {args.field} {signatures[0]}")
    else:
        seen = ", ".join(f"{signature} ({n}x)" for signature, n in counts.items())
        print(f"UNSTABLE: {args.count} answers gave {len(counts)} different {args.field}: {seen}")
    return EXIT_OK if stable else EXIT_FAILED_CHECK


# -- the parser ------------------------------------------------------------------------------


_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _rollout_name(value: str) -> str:
    if _NAME.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(
            f"{shown(value)}: expected a rollout's name, 1-64 characters of [A-Za-z0-9_.:-]"
        )
    return value


def _add_rollout_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rollout",
        type=_rollout_name,
        metavar="NAME",
        help="the rollout of a service that runs several (default: the default one; status "
        "without it lists them all)",
    )


def _add_service_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--url", type=_url, help=f"{what} (default: ${URL_ENV})")
    parser.add_argument("--timeout", type=_seconds, default=10.0, help="seconds (default: 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="driftgate", description="Move a policy from shadow to enforced, safely.")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    adapt = commands.add_parser(
        "adapt",
        help="replay recorded decisions: cohort, drift and the gate",
        description="Replays decision records (JSON or JSON lines of {key, shadow, enforced}) "
        "through an Enforcer with these options. Exit 0 when drift <= --drift-max, 3 when "
        "above, 2 on bad flags or input.",
    )
    adapt.add_argument("--policy", required=True, help="policy id (1-64 of [A-Za-z0-9_.:-])")
    adapt.add_argument("--context", required=True, type=Path, metavar="FILE", help="decisions")
    adapt.add_argument("--enforce", action="store_true", help="enforce (default: shadow only)")
    adapt.add_argument("--rollout", type=float, default=0.0, metavar="N", help="percent 0-100")
    adapt.add_argument(
        "--drift-max", type=float, default=0.005, metavar="R", help="ratio 0-1 (default: 0.005)"
    )
    adapt.add_argument("--seed", type=int, default=0, help="cohort hash seed (default: 0)")
    adapt.add_argument("--dry-run", action="store_true", help="write nothing")
    adapt.add_argument("-o", dest="output", type=Path, metavar="FILE", help="write the report")
    adapt.add_argument("--json", action="store_true", help="print the report as JSON")
    for flag in ENGINE_FLAGS:  # the seeds' engine flags: accepted only to be refused clearly
        adapt.add_argument(flag, help=argparse.SUPPRESS)
    adapt.set_defaults(run=_adapt)

    serve = commands.add_parser("serve", help="run the demo service under uvicorn")
    serve.add_argument("--config", type=Path, help="a Helm-style values file (YAML)")
    serve.add_argument(
        "--check", action="store_true", help="validate the values file, then exit (0 if valid)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="default: 8000")
    serve.add_argument(
        "--state-dir", type=Path, help="folder for the rollout state file (default: from config)"
    )
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="of driftgate's lines and uvicorn's, on stderr (default: the values' log_level, "
        "else info)",
    )
    serve.set_defaults(run=_serve)

    state = commands.add_parser(
        "state",
        help="export or restore the rollout's state (backup and recovery)",
        description="Export the rollout's whole state (history, version, incarnation) from the "
        "store or state file the values name, or restore an export into a store that lost it.",
    )
    state_commands = state.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    export = state_commands.add_parser(
        "export",
        help="write the state as JSON",
        description="Exports from the store or state file --config names, or, without "
        "--config, from the running service at --url (or $DRIFTGATE_URL).",
    )
    # No default at all: only an export without --config needs a service's URL.
    export.add_argument(
        "--url",
        type=_url,
        default=argparse.SUPPRESS,
        help=f"a service's base URL (default: ${URL_ENV})",
    )
    export.add_argument("--timeout", type=_seconds, default=10.0, help="seconds (default: 10)")
    restore = state_commands.add_parser(
        "restore", help="write an export back (raises its restore generation)"
    )
    restore.add_argument("file", type=Path, metavar="FILE", help="an export")
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace even a state that is not behind the export",
    )
    for action in (export, restore):
        _add_rollout_flag(action)
        action.add_argument("--config", type=Path, help="the service's values file (YAML)")
        action.add_argument(
            "--state-dir", type=Path, help="the state file's folder, as given to serve"
        )
    export.add_argument("--output", "-o", type=Path, metavar="FILE", help="default: stdout")
    export.set_defaults(run=_state_export)
    restore.set_defaults(run=_state_restore)

    status = commands.add_parser(
        "status",
        help="a service's rollout status",
        description="Prints where the rollout stands (token from $DRIFTGATE_ADMIN_TOKEN when "
        "the status needs rollout:read). With --check, the exit code says whether a person is "
        "needed: 0 no, 4 the rollout waits for approval, 5 it is aborted or its last check "
        "failed; with GITHUB_ACTIONS set, also as a ::warning:: or ::error:: annotation.",
    )
    _add_service_flags(status, "the service's base URL")
    _add_rollout_flag(status)
    status.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when nothing needs a person, 4 waiting for approval, 5 aborted or failing",
    )
    status.set_defaults(run=_status)
    for name, text in (("advance", "enter the next stage"), ("rollback", "go back one stage")):
        move = commands.add_parser(
            name, help=f"{text} (admin; token from ${TOKEN_ENV})", description=f"{text}."
        )
        _add_service_flags(move, "the service's base URL")
        _add_rollout_flag(move)
        move.add_argument(
            "--reason",
            type=_reason,
            help="why, for the transition history and the notification (<= 200 chars)",
        )
        move.add_argument(
            "--expected-version",
            type=_version,
            metavar="N",
            help="move only if the rollout is at version N (default: the state the status "
            "answers just before, named by its ETag)",
        )
        move.add_argument(
            "--idempotency-key",
            type=_idempotency_key,
            metavar="KEY",
            help="the move's operation id (default: a fresh one); rerun with the key a move "
            "whose outcome was unknown printed, to learn what happened without moving twice",
        )
        move.set_defaults(run=_move)

    probe = commands.add_parser(
        "probe",
        help="post one request several times: is the signature stable?",
        description="The determinism canary: posts the same body --count times and checks "
        "that --field is the same in every answer. Exit 0 when stable, 3 when not.",
    )
    _add_service_flags(probe, "the endpoint to POST to")
    probe.add_argument("--body", required=True, type=Path, metavar="FILE", help="JSON body")
    probe.add_argument(
        "--field",
        default="solution_signature",
        help="dotted path of the signature in the answer (default: solution_signature)",
    )
    probe.add_argument("--count", type=int, default=3, help="posts (default: 3)")
    probe.add_argument("--interval", type=float, default=0.0, help="seconds between posts")
    probe.set_defaults(run=_probe)

    token_hash = commands.add_parser(
        "token-hash",
        help="a token-file line for an approver, from a token on stdin",
        description="Reads one token from standard input (asked without echo on a terminal) "
        "and prints the token-file line `NAME sha256:HEX SCOPES`; the token itself is never "
        "printed. Tokens need at least 32 random characters.",
    )
    token_hash.add_argument("--name", required=True, help="the approver, as the history records it")
    token_hash.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: " + ", ".join(scope.value for scope in Scope),
    )
    token_hash.set_defaults(run=_token_hash)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(message: str, code: int) -> int:
        print(f"driftgate {args.command}: {one_line(message)}", file=sys.stderr)
        return code

    try:
        if getattr(args, "url", "") is None:
            args.url = _url_from_environment()
        code: int = args.run(args)
        return code
    except CommandError as error:
        return fail(str(error), error.code)
    except ValueError as error:  # a bad value that no command turned into a CommandError
        return fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as error:  # a bug: still one line, and a different exit code from bad input
        return fail(f"internal error: {type(error).__name__}: {error}", EXIT_REFUSED)


if __name__ == "__main__":
    sys.exit(main())
