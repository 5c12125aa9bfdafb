"""Export and restore of a rollout's state: the whole document (position, history, version,
incarnation), from the shared store or the state file the values name, and back.

A restore writes an export back into a store that lost its state (restarted empty, flushed,
failed over to a replica that missed commits) with its restore generation raised: every replica
accepts it whatever it saw before, and resumes with the ETag the export had. It refuses to go
back in time over a state further on than the export (the same incarnation at a later version,
or another one at a later version) unless forced. A store that holds the export's very state
is written too: replicas that saw later commits, which a failover lost, take it only with the
raised generation.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftgate._core import (
    RolloutConfig,
    StateError,
    _read_rollout_document,
    _restored_rollout_document,
)

__all__ = ["DocumentInfo", "document_info", "restore_plan"]


@dataclass(frozen=True)
class DocumentInfo:
    """What identifies a rollout document: its version, incarnation ("" for a state written
    before incarnations existed), restore generation and entity tag (unquoted)."""

    version: int
    incarnation: str
    restore_generation: int
    etag: str


def document_info(config: RolloutConfig, document: str, what: str) -> DocumentInfo:
    """Checks `document` as strictly as a replica loads one; StateError naming `what`."""
    return DocumentInfo(**_read_rollout_document(config, document, what))


def restore_plan(
    config: RolloutConfig, export: str, stored: str | None, *, force: bool, what: str
) -> tuple[str, DocumentInfo]:
    """The document a restore of `export` writes over `stored`, and the export's identity.
    StateError when the export is not this rollout's, or when the store holds a state further
    on that the export would set back (unless `force`); the message says which."""
    wanted = document_info(config, export, what)
    generation = wanted.restore_generation
    if stored is not None:
        try:
            current: DocumentInfo | None = document_info(config, stored, "the stored state")
        except StateError:
            current = None  # not readable as this rollout: only --force replaces it
            if not force:
                raise StateError(
                    "the store holds a state that is not this rollout's; refusing to replace "
                    "it without --force"
                ) from None
        if current is not None:
            if current.version > wanted.version and not force:
                raise StateError(
                    f"the store holds {current.etag} (restore generation "
                    f"{current.restore_generation}), which is further on than the export's "
                    f"{wanted.etag}; restoring would set the rollout back. Refusing without "
                    "--force"
                )
            generation = max(generation, current.restore_generation)
    return _restored_rollout_document(config, export, what, generation + 1), wanted


def write_state_file(path: Path, document: str) -> None:
    """Replaces the state file atomically and durably (for a service that is stopped: a running
    one keeps the state it holds and writes it at its next move)."""
    folder = path.parent if str(path.parent) else Path(".")
    handle, temp = tempfile.mkstemp(prefix=f"{path.name}.restore.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(document)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def pretty(document: str) -> str:
    """A document as an export file holds it: the stored JSON, indented, newline-terminated."""
    parsed: Any = json.loads(document)
    return json.dumps(parsed, indent=2) + "\n"
