"""The seed corpus of every target, derived from the golden data: `python -m fuzz.seeds` writes it to
`tests/fixtures/fuzz/<target>/<seed>` (after a re-capture or a protocol change; other files there, such as
inputs that once crashed a parser, are left alone).

The seeds are the real Mongrel2 captures (tests/fixtures/mongrel2/), the protocol's golden vectors
(tests/fixtures/protocol_v1.json) and the bodies, headers and replies that they carry or answer.
"""

from __future__ import annotations

import json

import msgspec

from brubeck.wire.mongrel2 import build_reply, parse_message
from fuzz import CORPUS, cookies, envelope, netstrings

FIXTURES = CORPUS.parent
SENDER = netstrings.PREFIX.split(b" ")[0]


def _captures() -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in sorted((FIXTURES / "mongrel2").glob("*.bin"))}


def mongrel2_request() -> dict[str, bytes]:
    return {
        **_captures(),
        "tnet_list_and_empty": b"S 42 /x 47:6:METHOD,6:DELETE,1:a,0:,1:l,12:3:one,3:two,]}0:,",
        "json_latin1_value": b'S 1 /caf\xe9 25:{"METHOD":"GET","a":"\xe9 ok"},3:a,b,',
    }


def netstrings_() -> dict[str, bytes]:
    # What follows "SENDER ID PATH " in each capture: the header netstring or tnetstring, then the body.
    return {name: raw.split(b" ", 3)[3] for name, raw in _captures().items()}


def mongrel2_reply() -> dict[str, bytes]:
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    return {
        "response": build_reply(SENDER, ["7"], response),
        "close_three": build_reply(SENDER, ["1", "22", "333"], b""),
        "framing_in_body": build_reply("S", ["5"], b"a, b 3:c,"),
    }


def forms() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    for name in ("post_form", "post_multipart", "post_json", "get_query"):
        message = parse_message((FIXTURES / "mongrel2" / f"{name}.bin").read_bytes())
        content_type = str(message.headers.get("content-type", ""))
        body = message.body or str(message.headers.get("QUERY", "")).encode()
        seeds[name] = content_type.encode("latin-1") + b"\n" + body
    seeds["multipart_binary_file"] = (
        b"multipart/form-data; boundary=XyZ; charset=latin-1\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="n\xe9"\r\n\r\nv\xe9\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="blob"; filename="b.bin"\r\n'
        b"Content-Type: application/x-thing\r\n\r\n" + bytes(range(256)) + b"x--XyZ\r\n-XyZ\r\n\r\n--XyZ--\r\n")
    return seeds


def cookies_() -> dict[str, bytes]:
    payload = msgspec.json.encode([cookies.NAME, {"user": "ada", "roles": ["admin"]}, 1_700_000_000])
    return {
        "captured_header": b"session=abc123; theme=dark",
        "signed_header": f"{cookies.NAME}={cookies.signed(cookies.NAME, payload)}; theme=dark".encode(),
        "quoted_values": b'a="x\\073y"; b="caf\\351"; c=plain; =skipped; d',
        "signed_payload": payload,
    }


def envelope_() -> dict[str, bytes]:
    golden = json.loads((FIXTURES / "protocol_v1.json").read_text())
    seeds: dict[str, bytes] = {}
    for vector in golden["vectors"] + golden["rejected"]:
        frames = [bytes.fromhex(frame) for frame in vector["frames_hex"]]
        if envelope.SEPARATOR.join(frames) not in seeds.values():
            seeds[vector["name"]] = envelope.SEPARATOR.join(frames)
        to_sign = envelope.SEPARATOR.join(frames[:5])  # the five signed frames: the target signs them itself
        if len(frames) == 6 and to_sign not in seeds.values():
            seeds[f"{vector['name']}_to_sign"] = to_sign
    return seeds


SEEDS = {"mongrel2_request": mongrel2_request, "netstrings": netstrings_, "mongrel2_reply": mongrel2_reply,
         "forms": forms, "cookies": cookies_, "envelope": envelope_}


def seeds() -> dict[str, dict[str, bytes]]:
    """{target: {seed name: bytes}} for every target."""
    return {target: make() for target, make in SEEDS.items()}


def main() -> None:
    for target, named in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in named.items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
