"""The fuzz targets (fuzz/) replayed on their stored corpus: every seed, and every input that once crashed a
parser and was saved there, goes through the target's oracle in every test run, so a bug found once stays
found. The seeds stored must be those `fuzz.seeds` derives from the golden data today.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz import CORPUS, TARGETS
from fuzz.seeds import seeds

STORED = [(target, path) for target in TARGETS for path in sorted((CORPUS / target).iterdir())]


@pytest.mark.parametrize(("target", "path"), STORED, ids=[f"{t}/{p.name}" for t, p in STORED])
def test_the_stored_input_passes_the_targets_oracle(target: str, path: Path) -> None:
    importlib.import_module(f"fuzz.{target}").check(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_the_stored_seeds_are_those_derived_from_the_golden_data(target: str) -> None:
    stored = {path.name: path.read_bytes() for path in (CORPUS / target).iterdir()}
    derived = seeds()[target]
    assert derived, f"{target} has no seeds"
    assert {name: stored.get(name) for name in derived} == derived, "run: python -m fuzz.seeds"


def test_every_corpus_directory_is_a_target() -> None:
    assert sorted(path.name for path in CORPUS.iterdir()) == sorted(TARGETS)
