"""`brubeck-service keygen`, and the usage errors and help of `ping`, `call` and `status` (brubeckservice/cli/),
run in this process through `cli.main`.

(`brubeck-service run`'s command line is tested beside the supervisor, in test_supervisor.py; `ping`, `call`
and `status` against real services in test_cli_operate.py.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from zmq.auth.certs import load_certificate

from brubeckservice.cli import FAILURE, OK, USAGE, main
from brubeckservice.cli.client_options import PASSPHRASE_ENV
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


# -- ping, call, status: what is refused before anything connects --------------------------------------------

def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What `main(argv)` says on stderr as it exits with USAGE."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == USAGE
    return capsys.readouterr().err


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "my_shared_secret")


@pytest.mark.parametrize("arguments", ["[1, 2]", '"text"', "3", "null"])
def test_call_arguments_must_be_a_json_object(arguments: str, passphrase: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["call", "tcp://127.0.0.1:6000", "/echo", "request", arguments], capsys)
    assert f"JSON {arguments!r}: the arguments must be a JSON object, e.g. '{{\"name\": \"ada\"}}'" in err
    if arguments != "null":  # (METHOD may be left out before JSON that does not look like a method name)
        assert "must be a JSON object" in usage_error(["call", "tcp://127.0.0.1:6000", "/echo", arguments], capsys)


def test_call_arguments_must_parse(passphrase: None, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["call", "tcp://127.0.0.1:6000", "/echo", "{name: 1}"], capsys)
    assert "JSON '{name: 1}' does not parse: Expecting property name enclosed in double quotes" in err


def test_call_headers_are_name_equals_value(passphrase: None, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["call", "tcp://127.0.0.1:6000", "/echo", "--header", "X-Trace"], capsys)
    assert "argument --header/-H: 'X-Trace': NAME=VALUE" in err


@pytest.mark.parametrize("command", [["ping"], ["call"], ["status"]])
def test_a_passphrase_is_required(command: list[str], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    argv = [*command, "tcp://127.0.0.1:6000", *(["/echo"] if command == ["call"] else [])]
    assert f"no passphrase: set ${PASSPHRASE_ENV}, or give --passphrase-file FILE" in usage_error(argv, capsys)
    monkeypatch.setenv(PASSPHRASE_ENV, "")
    assert "no passphrase" in usage_error(argv, capsys)


def test_a_passphrase_file_must_be_readable_and_say_something(short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    err = usage_error(["ping", "tcp://127.0.0.1:6000", "--passphrase-file", str(short_tmp / "nowhere")], capsys)
    assert f"--passphrase-file {short_tmp}/nowhere: cannot read it: No such file or directory" in err
    empty = short_tmp / "empty"
    empty.write_text("\nthe passphrase is the first line\n")
    err = usage_error(["ping", "tcp://127.0.0.1:6000", "--passphrase-file", str(empty)], capsys)
    assert f"--passphrase-file {empty}: its first line is empty" in err


def test_curve_needs_both_keys(short_tmp: Path, passphrase: None, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["status", "tcp://127.0.0.1:6000", "--curve-key", str(short_tmp / "web.key_secret")], capsys)
    assert "CURVE needs both --curve-server-key FILE" in err
    err = usage_error(["status", "tcp://127.0.0.1:6000", "--curve-key", str(short_tmp / "web.key_secret"),
                       "--curve-server-key", str(short_tmp / "server.key")], capsys)
    assert "cannot read CURVE" in err


@pytest.mark.parametrize("address", ["127.0.0.1:6000", "http://example.com", "tcp://127.0.0.1:6000,nowhere"])
def test_an_address_a_client_cannot_connect_to_is_a_usage_error(address: str, passphrase: None,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert "pick tcp://HOST:PORT, ipc://PATH or srv://NAME" in usage_error(["status", address], capsys)


@pytest.mark.parametrize(("command", "usage", "statuses"), [
    ("ping", "usage: brubeck-service ping [-h] [--timeout SECONDS] [--json]",
     "0 it answered, 1 no answer"),
    ("call", "usage: brubeck-service call [-h] [--timeout SECONDS] [--header NAME=VALUE] [--json] "
             "[--passphrase-file FILE] [--curve-server-key FILE] [--curve-key FILE] [--verbose] ADDR PATH [METHOD] "
             "[JSON]",
     "3 it answered with 400 or"),
    ("status", "usage: brubeck-service status [-h] [--timeout SECONDS] [--json]",
     "0 every worker alive, 3 some worker not alive (degraded), 1 none alive"),
])
def test_operator_commands_help(command: str, usage: str, statuses: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == OK
    out = " ".join(capsys.readouterr().out.split())  # (argparse wraps to the terminal's width)
    assert out.startswith(usage)
    assert statuses in out
    assert f"the passphrase comes from ${PASSPHRASE_ENV}, or from the first line of --passphrase-file FILE" in out
