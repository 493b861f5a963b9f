"""`python -m fuzz TARGET [libFuzzer options] [corpus directories]`: fuzz one target with atheris.

The parsers are imported under `atheris.instrument_imports`, so libFuzzer sees the branches of brubeck,
brubeckservice and the pure-Python parsers they call (multipart, http.cookies, urllib.parse, base64);
msgspec and tnetstring3 are C extensions and are fuzzed through them, without coverage of their own.
"""

from __future__ import annotations

import importlib
import sys

import atheris

from fuzz import TARGETS

INSTRUMENTED = ["fuzz", "brubeck", "brubeckservice", "multipart", "http.cookies", "urllib.parse", "base64"]


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz {{{','.join(TARGETS)}}} [libFuzzer options] [corpus directories]")
    with atheris.instrument_imports(include=INSTRUMENTED):
        target = importlib.import_module(f"fuzz.{argv[1]}")
    atheris.Setup([argv[0], *argv[2:]], target.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
