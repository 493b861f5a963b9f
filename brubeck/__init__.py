"""Brubeck for Python 3: a gevent + ZeroMQ web framework that sits behind Mongrel2 (or serves WSGI)."""

from brubeck.application import Brubeck
from brubeck.errors import BrubeckError, ConfigurationError, HTTPError, PayloadTooLarge, ProtocolError
from brubeck.handlers import JSONMessageHandler, MessageHandler, WebMessageHandler
from brubeck.request import Request
from brubeck.response import HTTPResponse, render

# The version of the brubeck-service distribution, which ships both packages (pyproject.toml reads it here).
__version__ = "0.7.0"

__all__ = [
    "Brubeck",
    "BrubeckError",
    "ConfigurationError",
    "HTTPError",
    "HTTPResponse",
    "JSONMessageHandler",
    "MessageHandler",
    "PayloadTooLarge",
    "ProtocolError",
    "Request",
    "WebMessageHandler",
    "render",
]
