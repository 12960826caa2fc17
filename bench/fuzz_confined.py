"""The confined apply under a coverage-guided fuzzer (atheris, libFuzzer): random streams of
mutations and repairs through symlink-laden paths, each applied strictly, tolerantly or as a
repair to a fresh copy whose links lead outside; after every input nothing outside may have
changed and no listing or hash may describe an outside object — the property of
`tests/unit/test_confined_apply.py`, which hypothesis runs in the suite, searched here for
longer and guided by the code it reaches.

    pip install atheris    # or: pip install -e '.[fuzz]'
    python -m tandem.bench.fuzz_confined [--seconds 600] [--out FILE]

A violation ends the run with the input that caused it (libFuzzer writes it as crash-*).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

NAMES = (b"abs", b"rel", b"up", b"self", b"fl", b"dir", b"x", b"y", b"secret-file", b"secret-dir")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--out", help="also write the JSON summary here")
    args = parser.parse_args()
    try:
        import atheris  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print("tandem.bench.fuzz_confined: needs atheris (pip install atheris)", file=sys.stderr)
        return 2
    with atheris.instrument_imports():
        from tandem.engine.replica import repair, replay, survey  # noqa: F401
    # the suite's own world and checks (by name: the test module is not type-checked)
    confined = importlib.import_module("tests.unit.test_confined_apply")
    paths: tuple[bytes, ...] = confined.PATHS

    base = Path(tempfile.mkdtemp(prefix="tandem-fuzz-"))
    runs = 0

    def path_from(data: atheris.FuzzedDataProvider) -> bytes:
        if data.ConsumeBool():
            return paths[data.ConsumeIntInRange(0, len(paths) - 1)]
        count = data.ConsumeIntInRange(1, 4)
        return b"/".join(NAMES[data.ConsumeIntInRange(0, len(NAMES) - 1)] for _ in range(count))

    started = time.monotonic()

    def finish() -> None:
        shutil.rmtree(base, ignore_errors=True)
        summary = {
            "benchmark": "fuzz_confined",
            "inputs": runs,
            "seconds": round(time.monotonic() - started),
            "violations": 0,  # a violation ends the run with a traceback and a crash file
        }
        print(json.dumps(summary), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")

    def one_input(raw: bytes) -> None:
        nonlocal runs
        if time.monotonic() - started > args.seconds:
            finish()
            os._exit(0)  # libFuzzer's own ending would skip the summary
        runs += 1
        data = atheris.FuzzedDataProvider(raw)
        place = base / str(runs)
        place.mkdir()
        outside, copy = confined._world(place)
        root_fd = os.open(copy, os.O_RDONLY | os.O_DIRECTORY)
        try:
            before = confined._snapshot(outside)
            for _ in range(data.ConsumeIntInRange(1, 20)):
                path, other = path_from(data), path_from(data)
                choices = confined._items(path, other)
                confined._apply_every_way(
                    root_fd, choices[data.ConsumeIntInRange(0, len(choices) - 1)]
                )
            if confined._snapshot(outside) != before:
                raise AssertionError("something outside the copy changed")
            for path in paths:
                confined._assert_nothing_revealed(root_fd, outside, path)
        finally:
            os.close(root_fd)
            shutil.rmtree(place, ignore_errors=True)

    atheris.Setup([sys.argv[0], "-print_final_stats=1"], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
