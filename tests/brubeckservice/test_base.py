"""The 2013 import path: code written against brubeck-service 0.1 imports from brubeckservice.base."""

from __future__ import annotations

import gevent

import brubeckservice
from brubeckservice import base


def test_the_2013_names_import_from_base() -> None:
    from brubeckservice.base import (  # noqa: F401 - importing is the test
        ServiceClientMixin,
        ServiceConnection,
        ServiceMessageHandler,
        coro_sleep,
    )


def test_base_re_exports_the_same_objects_as_the_package() -> None:
    for name in base.__all__:
        if name != "coro_sleep":
            assert getattr(base, name) is getattr(brubeckservice, name), name


def test_coro_sleep_is_gevents_cooperative_sleep() -> None:
    assert base.coro_sleep is gevent.sleep


def test_base_offers_every_public_name_of_the_package() -> None:
    # A name added to brubeckservice.__all__ reaches the 2013 path without editing base.py.
    assert set(brubeckservice.__all__) <= set(base.__all__)
    assert base.RequestTooLarge is brubeckservice.RequestTooLarge
