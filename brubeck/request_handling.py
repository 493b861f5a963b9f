"""Brubeck 0.4's import path for the application, handlers and `render`."""

from brubeck.application import Brubeck
from brubeck.errors import BrubeckError, HTTPError, ProtocolError
from brubeck.handlers import HTTP_METHODS, JSONMessageHandler, MessageHandler, WebMessageHandler
from brubeck.response import HTTPResponse, render
from brubeck.wire.http import http_response

__all__ = [
    "HTTP_METHODS",
    "Brubeck",
    "BrubeckError",
    "HTTPError",
    "HTTPResponse",
    "JSONMessageHandler",
    "MessageHandler",
    "ProtocolError",
    "WebMessageHandler",
    "http_response",
    "render",
]
