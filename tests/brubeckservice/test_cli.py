"""`brubeck-service keygen` (brubeckservice/cli.py), run in this process through `cli.main`.

(`brubeck-service run`'s command line is tested beside the supervisor, in test_supervisor.py.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from zmq.auth.certs import load_certificate

from brubeckservice.cli import FAILURE, OK, USAGE, main
from brubeckservice.curve import CurveClient, CurveServer


def test_keygen_writes_a_key_pair_and_says_where(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = short_tmp / "keys"
    assert main(["keygen", "server", "--dir", str(directory)]) == OK
    out = capsys.readouterr().out.splitlines()
    public, secret = load_certificate(directory / "server.key_secret")
    assert public is not None and secret is not None
    assert out == [f"wrote {directory}/server.key (the public key: give it to the other side)",
                   f"wrote {directory}/server.key_secret (the key pair, mode 0600: keep it on this host)",
                   f"public key: {public.decode()}"]
    assert load_certificate(directory / "server.key") == (public, None)
    assert stat.S_IMODE(os.stat(directory / "server.key_secret").st_mode) == 0o600
    # What it wrote is what the options read.
    assert CurveServer(directory / "server.key_secret").public_key == public.decode()
    assert main(["keygen", "web-1", "--dir", str(directory)]) == OK
    assert CurveClient(directory / "server.key", directory / "web-1.key_secret").server_public == public


def test_keygen_writes_in_the_working_directory_by_default(short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(short_tmp)
    assert main(["keygen", "client"]) == OK
    assert sorted(p.name for p in short_tmp.iterdir()) == ["client.key", "client.key_secret"]
    assert "wrote client.key " in capsys.readouterr().out


def test_keygen_refuses_to_overwrite_without_force(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "server", "--dir", str(short_tmp)]) == OK
    before = (short_tmp / "server.key_secret").read_bytes()
    capsys.readouterr()
    assert main(["keygen", "server", "--dir", str(short_tmp)]) == FAILURE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"brubeck-service keygen: {short_tmp}/server.key exists already (use --force to replace "
                            "it)\n")
    assert (short_tmp / "server.key_secret").read_bytes() == before
    assert main(["keygen", "server", "--dir", str(short_tmp), "--force"]) == OK
    assert (short_tmp / "server.key_secret").read_bytes() != before
    assert stat.S_IMODE(os.stat(short_tmp / "server.key_secret").st_mode) == 0o600


def test_keygen_fails_when_the_directory_cannot_be_written(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = short_tmp / "a-file"
    blocker.write_text("not a directory")
    assert main(["keygen", "server", "--dir", str(blocker)]) == FAILURE
    assert "brubeck-service keygen: " in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../server", "keys/server", ".hidden", "server.key", "web.key_secret", ""])
def test_keygen_takes_a_plain_base_name(name: str, short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["keygen", name, "--dir", str(short_tmp)])
    assert exit_.value.code == USAGE
    assert "a plain base name" in capsys.readouterr().err
    assert list(short_tmp.iterdir()) == []


def test_keygen_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["keygen", "--help"])
    assert exit_.value.code == OK
    out = capsys.readouterr().out
    assert "usage: brubeck-service keygen [-h] [--dir DIR] [--force] NAME" in out
    assert "DIR/NAME.key_secret  the key pair (mode 0600)" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "keygen" in capsys.readouterr().out
