"""Fuzz targets for the pure wire parsers, one module per parser, run by atheris (the `fuzz` extra).

Each target module has `check(data: bytes) -> None`: the oracle. It feeds `data` to its parser, lets the
package's own `ProtocolError` (and the documented refusals of signed input) through as an answer, and
raises anything else: another exception from the parser, or a `Mismatch` when what parsed, built again
and parsed again, is not the same value. A crash is an exception escaping `check`.

    .venv/bin/python -m fuzz envelope [libFuzzer options] [corpus directories]   # one target, until stopped
    bash fuzz/run                                                               # every target, bounded

Each target's seed corpus is `tests/fixtures/fuzz/<target>/`, built from the real Mongrel2 captures and the
protocol's golden vectors; `tests/fuzz/test_corpus.py` replays it through `check` in every pytest run, so an
input that once crashed a parser, saved there, stays a test.
"""

from __future__ import annotations

from pathlib import Path

#: The targets, each a module of this package.
TARGETS = ("mongrel2_request", "netstrings", "mongrel2_reply", "forms", "cookies", "envelope")

#: Where each target's seed corpus lives: CORPUS / <target> / <seed>.
CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fuzz"


class Mismatch(AssertionError):
    """A value that did not survive build -> parse unchanged."""


def same(found: object, expected: object, what: str) -> None:
    """Raise `Mismatch` unless `found == expected`."""
    if found != expected:
        raise Mismatch(f"{what}: {found!r:.300} != {expected!r:.300}")
