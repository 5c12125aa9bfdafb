"""docs/benchmarks.md holds one section per benchmark script; each script rewrites only its
own section, between `<!-- begin NAME -->` and `<!-- end NAME -->`."""

from pathlib import Path

TITLE = (
    "# Benchmarks\n\n"
    "Every figure is measured against a baseline in the same run, on the same machine. Each\n"
    "script rewrites its own section below. With `--smoke`, a script runs every step once on\n"
    "tiny inputs and judges no target; the tests run every script that way\n"
    "(`tests/test_benchmarks.py`), so a benchmark that breaks fails the test command.\n"
)


def write_section(path: Path, name: str, text: str) -> None:
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    current = path.read_text() if path.exists() else TITLE
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        path.write_text(f"{head}{block}{tail}")
    else:
        path.write_text(f"{current.rstrip()}\n\n{block}")
