"""What every benchmark sends: one ~200-byte JSON arguments dict, echoed back, and the names both sides use.

The raw baselines encode it with the library's own codec (msgspec.json), so a ratio measures the framework,
not a faster JSON library.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

#: The arguments of every call: about 200 bytes of JSON with strings, numbers, a list and a nested object.
PAYLOAD: Final[dict[str, Any]] = {
    "user_id": 1234567,
    "name": "Ada Lovelace",
    "email": "ada@example.org",
    "tags": ["analytical", "engine", "notes"],
    "active": True,
    "score": 98.25,
    "address": {"city": "London", "street": "12 St James Square", "zip": "SW1Y 4JH"},
}

PAYLOAD_JSON: Final[bytes] = msgspec.json.encode(PAYLOAD)

#: The service path of the echo handler, and of the hold/release pair used to keep calls in flight.
ECHO_PATH: Final = "/echo"
HOLD_PATH: Final = "/hold"
RELEASE_PATH: Final = "/release"

#: The shared secret of the brubeck-service client and service (HMAC key).
PASSPHRASE: Final = "bench-shared-secret"

#: The raw baselines' correlation ids start with these bytes to ask the raw server to hold or release.
RAW_HOLD: Final = b"h"
RAW_RELEASE: Final = b"r"

#: The line a server process prints on stdout once it has bound or connected its sockets.
READY: Final = "READY"


def hello_body(timestamp_ms: int) -> dict[str, Any]:
    """The JSON a hello handler answers, the same fields Brubeck's JSONMessageHandler adds."""
    return {"message": "hello", "status_code": 200, "status_msg": "OK", "timestamp": timestamp_ms}
