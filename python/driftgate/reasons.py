"""Every fixed reason code driftgate puts in an HTTP body, a readiness answer or a log line:
one enum, documented in one table (docs/http.md). No code carries request data."""

from __future__ import annotations

import enum

__all__ = ["ReasonCode"]


class ReasonCode(str, enum.Enum):
    """A fixed, machine-readable reason. The value is the text sent on the wire."""

    #: The readiness gate is open (or disabled).
    OK = "OK"
    #: The drift ratio in the gate's window is above its limit: not ready.
    DRIFT_GATE = "DRIFT_GATE"
    #: Ready although the readiness gate is closed by drift: the fleet's readiness budget
    #: (`enforce_readiness_gate.max_unready_replicas`, with a shared store) is held by other
    #: replicas, or this replica cannot confirm a slot in the store, so it keeps serving
    #: (200). Its drift still shows in `adapt_readiness_gate_open` and the alerts.
    DRIFT_GATE_BUDGET = "DRIFT_GATE_BUDGET"
    #: The rollout state file was refused or cannot be written (by the disk, or because the
    #: move would write a version or time the file cannot hold): not ready, or 503 on a move.
    STATE_FILE = "STATE_FILE"
    #: The shared rollout state store (Redis) cannot be reached or has not been read yet, or
    #: the move would write a version or time a state cannot hold: a move answers 503 and
    #: nothing changes. Readiness is not failed for it.
    STATE_STORE = "STATE_STORE"
    #: The move's precondition (If-Match or expected_version) no longer holds (412).
    VERSION_MISMATCH = "VERSION_MISMATCH"
    #: A move without a precondition kept losing to concurrent moves on other replicas (409).
    STATE_CONFLICT = "STATE_CONFLICT"
    #: The If-Match header is not `*` or a list of entity tags like "7", or does not list the
    #: ETag of the body's expected_version (400).
    BAD_PRECONDITION = "BAD_PRECONDITION"
    #: The router has no rollout manager: the rollout endpoints answer 404.
    NO_ROLLOUT = "NO_ROLLOUT"
    #: No admin credentials are configured: the admin endpoints refuse every request (403).
    ADMIN_DISABLED = "ADMIN_DISABLED"
    #: The request carries no bearer token (401).
    MISSING_CREDENTIALS = "MISSING_CREDENTIALS"
    #: The bearer token is wrong (403).
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    #: A valid approver without the scope the endpoint needs (403); the body's detail reads
    #: "MISSING_SCOPE: rollout:advance", naming the scope.
    MISSING_SCOPE = "MISSING_SCOPE"
    #: The approver's name (a JWT's actor claim) breaks the actor rule, 1-64 of
    #: [A-Za-z0-9_.:-] (403); the claim's value is never echoed.
    INVALID_ACTOR = "INVALID_ACTOR"
    #: The bearer JWT has expired (403): get a fresh one from the issuer.
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    #: The OIDC issuer's key set cannot be fetched or read, so no JWT can be checked (503).
    IDENTITY_PROVIDER = "IDENTITY_PROVIDER"
    #: The request body is over the 1 MiB cap (413).
    BODY_TOO_LARGE = "BODY_TOO_LARGE"
    #: The Content-Length header is not a number (400).
    BAD_CONTENT_LENGTH = "BAD_CONTENT_LENGTH"
    #: A move was sent but its outcome is not known yet (its commit timed out and could not be
    #: read back, or too few Redis replicas confirmed it): the rollout may or may not have
    #: moved (503 with Retry-After). A retry with the same Idempotency-Key is answered with
    #: what happened, and never moves twice.
    STATE_UNKNOWN = "STATE_UNKNOWN"
    #: The shared store lost data (key missing, an older incarnation, a lower version than
    #: seen): moves are frozen (503) until `driftgate state restore` repairs it.
    STATE_REGRESSED = "STATE_REGRESSED"
    #: The path names a rollout the service does not have (404).
    UNKNOWN_ROLLOUT = "UNKNOWN_ROLLOUT"
    #: Too many moves are waiting for the store already (503): nothing changed; try again.
    MOVE_QUEUE_FULL = "MOVE_QUEUE_FULL"
    #: 400: the Idempotency-Key header is not 1-64 characters of [A-Za-z0-9_.:-].
    BAD_IDEMPOTENCY_KEY = "BAD_IDEMPOTENCY_KEY"

    def __str__(self) -> str:
        return self.value
