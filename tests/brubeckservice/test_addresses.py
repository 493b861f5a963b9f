"""Addresses: how users name one service or several workers of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from brubeckservice.addresses import endpoints, prepare_ipc, reachable_from_other_hosts


@pytest.mark.parametrize(("given", "expected"), [
    ("ipc://run/slow", ["ipc://run/slow"]),
    ("tcp://127.0.0.1:5555, tcp://127.0.0.1:5556", ["tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"]),
    (["tcp://a:1 ", " tcp://b:2", ""], ["tcp://a:1", "tcp://b:2"]),
    ("ipc://one,", ["ipc://one"]),
])
def test_endpoints_accepts_one_a_comma_list_or_a_sequence(given: str | list[str], expected: list[str]) -> None:
    assert endpoints(given) == expected


@pytest.mark.parametrize("given", ["", " , ", []])
def test_endpoints_needs_at_least_one_address(given: str | list[str]) -> None:
    with pytest.raises(ValueError, match="at least one address"):
        endpoints(given)


def test_prepare_ipc_creates_the_directory_of_the_socket(tmp_path: Path) -> None:
    prepare_ipc(f"ipc://{tmp_path}/run/slow")  # the 2013 demo binds 'ipc://run/slow' and expects run/
    assert (tmp_path / "run").is_dir()
    assert not (tmp_path / "run" / "slow").exists()


def test_prepare_ipc_leaves_other_transports_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    prepare_ipc("tcp://127.0.0.1:5555")
    assert list(tmp_path.iterdir()) == []


def test_canonical_spells_each_socket_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A client given ipc://run/slow, and told by that worker of ipc:///.../run/slow, must see one worker.
    from brubeckservice.addresses import canonical

    monkeypatch.chdir(tmp_path)
    assert canonical("ipc://run/slow") == f"ipc://{tmp_path}/run/slow"
    assert canonical(f"ipc://{tmp_path}/run/slow") == f"ipc://{tmp_path}/run/slow"
    for unchanged in ("ipc://@abstract", "tcp://127.0.0.1:5555", "inproc://x", "tcp://name.test:6000"):
        assert canonical(unchanged) == unchanged


@pytest.mark.parametrize(("address", "reachable"), [
    ("tcp://0.0.0.0:6000", True),
    ("tcp://*:6000", True),
    ("tcp://[::]:6000", True),
    ("tcp://10.0.0.5:6000", True),
    ("tcp://eth0:6000", True),  # an interface (libzmq binds its address)
    ("tcp://workers.example:6000", True),
    ("tcp://127.0.0.1:6000", False),
    ("tcp://127.3.4.5:*", False),
    ("tcp://[::1]:6000", False),
    ("tcp://localhost:6000", False),
    ("tcp://lo:6000", False),
    ("ipc:///run/svc", False),
    ("inproc://svc", False),
])
def test_reachable_from_other_hosts(address: str, reachable: bool) -> None:
    assert reachable_from_other_hosts(address) is reachable
