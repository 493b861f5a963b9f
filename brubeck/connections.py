"""Brubeck 0.4's import path for connections (transports)."""

from brubeck.transports.mongrel2 import Mongrel2Connection
from brubeck.transports.wsgi import WSGIConnection

__all__ = ["Mongrel2Connection", "WSGIConnection"]
