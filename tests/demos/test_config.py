"""demos/mongrel2.conf: what the demo's Mongrel2 configuration must say, read as text (no Mongrel2 needed)."""

from __future__ import annotations

import re

from tests.demos.helpers import DEMOS


def test_the_demo_handler_takes_only_replies_that_begin_with_its_own_identity() -> None:
    # Mongrel2 checks no reply's UUID; its SUB socket's prefix match on recv_ident is the only filter. With
    # recv_ident='' an app's answers to forged requests (any sender, any connection id) reached real browsers.
    config = (DEMOS / "mongrel2.conf").read_text()
    send = re.findall(r"send_ident='([^']*)'", config)
    recv = re.findall(r"recv_ident='([^']*)'", config)
    assert len(send) == len(recv) == 1 and send == recv and send[0]
