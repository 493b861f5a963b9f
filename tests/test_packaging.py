"""The distribution's promises: one version everywhere, and lower bounds that a CI job actually installs."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import brubeck
import brubeckservice

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOWEST = ROOT / ".ci" / "lowest-versions.txt"
# The test tools the lowest-versions job runs with (it runs pytest; the tests import requests and hypothesis).
LOWEST_JOB_TEST_TOOLS = {"pytest", "requests", "hypothesis", "opentelemetry-sdk", "prometheus_client"}
#: Extras whose lower bounds the lowest job proves too (the SDK of the test extra pulls the `otel` API in, and
#: the test extra names prometheus_client, the `metrics` extra, itself).
LOWEST_JOB_EXTRAS = {"otel", "metrics"}


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    bounds = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", requirement)
        if match:
            bounds[match.group(1).lower()] = match.group(2)
    return bounds


def pinned(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, pin = line.partition("==")
            pins[name.strip().lower()] = pin.strip()
    return pins


def test_every_runtime_dependency_has_a_lower_bound_the_lowest_job_installs() -> None:
    runtime = PYPROJECT["project"]["dependencies"]
    bounds = lower_bounds(runtime)
    assert len(bounds) == len(runtime), f"every runtime dependency needs a '>=' lower bound: {runtime}"
    pins = pinned(LOWEST)
    for name, bound in bounds.items():
        assert pins.get(name) == bound, f"{name}>={bound} in pyproject.toml, but {LOWEST.name} pins {pins.get(name)}"


def test_the_lowest_job_pins_the_test_tools_it_runs_at_their_lower_bounds() -> None:
    bounds = lower_bounds(PYPROJECT["project"]["optional-dependencies"]["test"])
    pins = pinned(LOWEST)
    for name in LOWEST_JOB_TEST_TOOLS:
        assert pins.get(name) == bounds[name], f"{name}>={bounds[name]} in pyproject.toml, {LOWEST.name} pins "\
                                               f"{pins.get(name)}"
    extras = {name: bound for extra in LOWEST_JOB_EXTRAS
              for name, bound in lower_bounds(PYPROJECT["project"]["optional-dependencies"][extra]).items()}
    for name, bound in extras.items():
        assert pins.get(name) == bound, f"{name}>={bound} in pyproject.toml, {LOWEST.name} pins {pins.get(name)}"
    stray = (set(pins) - set(lower_bounds(PYPROJECT["project"]["dependencies"])) - LOWEST_JOB_TEST_TOOLS
             - set(extras))
    assert not stray, f"{LOWEST.name} pins packages the lowest job does not prove: {stray}"


def test_one_version_for_the_distribution_both_packages_and_the_readme() -> None:
    installed = version("brubeck-service")
    assert brubeck.__version__ == installed
    assert brubeckservice.__version__ == installed
    assert f"brubeck-service {installed}" in (ROOT / "README.md").read_text()


def test_every_package_directory_is_shipped() -> None:
    """A subpackage missing from [tool.setuptools] packages works in an editable install and is absent from
    the wheel: every directory with an __init__.py must be listed."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in ("brubeck", "brubeckservice")
             for init in (ROOT / top).rglob("__init__.py")}
    assert found == listed
