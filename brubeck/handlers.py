"""Request handlers: the objects a route points at, one instance per message.

The flow (Brubeck 0.4's): construct with (application, message, *url_args, **url_kwargs), `initialize()`,
then `handler()` runs `prepare()`, the method named after the message's METHOD (`get`, `post`, ...),
and `on_finish()`, returning whatever the method returned: the response to send, or None for "no reply
now". Errors inside become responses here, so one bad request never takes the process down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from brubeck.context import RequestContext
from brubeck.context import current as current_context
from brubeck.cookies import format_set_cookie, sign_value, unsign_value
from brubeck.errors import BrubeckError, HTTPError
from brubeck.response import HTTPResponse
from brubeck.wire.http import status_phrase

if TYPE_CHECKING:
    from brubeck.types import Application

log = logging.getLogger("brubeck.handlers")

HTTP_METHODS = ("get", "post", "put", "delete", "head", "options", "patch", "trace", "connect")


class MessageHandler:
    """The transport-neutral base: status, payload, lifecycle hooks and method dispatch."""

    SUPPORTED_METHODS: ClassVar[tuple[str, ...]] = HTTP_METHODS

    _STATUS_CODE = "status_code"
    _STATUS_MSG = "status_msg"
    _TIMESTAMP = "timestamp"
    _DEFAULT_STATUS = -1  # default to error, earn success
    _SUCCESS_CODE = 0
    _AUTH_FAILURE = -2
    _SERVER_ERROR = -5
    _response_codes: ClassVar[dict[int, str]] = {
        0: "OK", -1: "Bad request", -2: "Authentication failed", -5: "Server error",
    }

    def __init__(self, application: Application, message: Any, *args: Any, **kwargs: Any) -> None:
        self.application = application
        self.message = message
        self.db_conn = application.db_conn if application is not None else None
        self._url_args = args
        self._url_kwargs = kwargs
        self._payload: dict[str, Any] = {}
        self._finished = False
        self._current_user: Any = None
        self._user_loaded = False
        self.status_code = self._DEFAULT_STATUS
        self.status_msg = self._status_text(self._DEFAULT_STATUS)
        self.headers: dict[str, Any] = {}
        self.initialize()

    # -- hooks --------------------------------------------------------------------------------------

    def initialize(self) -> None:
        """Called at the end of __init__; override to set up per-request state."""

    def prepare(self) -> None:
        """Called before the METHOD function; set `self._finished = True` to answer with `render()`."""

    def on_finish(self) -> None:
        """Called after the response is built (also when the handler failed)."""

    # -- status and payload -------------------------------------------------------------------------

    def _status_text(self, status_code: int) -> str:
        text = self._response_codes.get(status_code)
        return text if text is not None else status_phrase(status_code)

    def set_status(self, status_code: int, status_msg: str | None = None,
                   extra_txt: str | None = None) -> None:
        self.status_code = status_code
        self.status_msg = status_msg if status_msg is not None else self._status_text(status_code)
        if extra_txt:
            self.status_msg = f"{self.status_msg} - {extra_txt}"

    def add_to_payload(self, key: str, value: Any) -> None:
        self._payload[key] = value

    def clear_payload(self) -> None:
        self._payload = {}

    # -- user ---------------------------------------------------------------------------------------

    def get_current_user(self) -> Any:
        """Override to return the logged-in user (or None); used by `brubeck.auth`."""
        return None

    @property
    def current_user(self) -> Any:
        if not self._user_loaded:
            self._current_user = self.get_current_user()
            self._user_loaded = True
        return self._current_user

    # -- arguments ----------------------------------------------------------------------------------

    def get_argument(self, name: str, default: str | None = None, strip: bool = True) -> Any:
        return self.message.get_argument(name, default, strip)

    def get_arguments(self, name: str, strip: bool = True) -> list[Any]:
        result: list[Any] = self.message.get_arguments(name, strip)
        return result

    # -- responses (transport-specific subclasses override render) ----------------------------------

    def render(self, status_code: int | None = None, **kwargs: Any) -> Any:
        if status_code is not None:
            self.set_status(status_code)
        self.add_to_payload(self._STATUS_CODE, self.status_code)
        self.add_to_payload(self._STATUS_MSG, self.status_msg)
        self.add_to_payload(self._TIMESTAMP, int(time.time() * 1000))
        return self._payload

    def render_error(self, error_code: int, status_msg: str | None = None) -> Any:
        self.clear_payload()
        self.set_status(error_code, status_msg)
        return self.render()

    # -- what travels with the request (brubeck.context) ------------------------------------------------

    @property
    def request_context(self) -> RequestContext | None:
        """The context of the request being served: its trace, its deadline, its cancellation."""
        return current_context()

    def time_remaining(self) -> float | None:
        """Seconds left before the request's deadline (0.0 once past), or None when it has none."""
        ctx = current_context()
        return None if ctx is None else ctx.remaining()

    @property
    def trace_id(self) -> str:
        """The request's W3C trace id (32 hex digits), or "" outside a transport."""
        ctx = current_context()
        return "" if ctx is None else ctx.trace.trace_id

    def allowed_methods(self) -> list[str]:
        """The METHODs this handler implements, upper-case, for an `Allow` header."""
        return [m.upper() for m in self.SUPPORTED_METHODS if callable(getattr(self, m, None))]

    def _function_for(self, method: str) -> Callable[..., Any] | None:
        """The handler method that answers `method` (lower-case), or None when there is none."""
        function = getattr(self, method, None) if method in self.SUPPORTED_METHODS else None
        return function if callable(function) else None

    def unsupported(self, allowed: Sequence[str] | None = None) -> Any:
        """The answer for a METHOD that is not served here (405 on the web): by this handler (`allowed`
        None: the methods it implements), or by any route for the path (`allowed`: the routes' methods)."""
        return self.render_error(self._SERVER_ERROR, "Method not supported")

    def error(self, err: BaseException) -> Any:
        """Log an unexpected exception raised by the handler and answer with a server error."""
        log.error("%s failed on %r", type(self).__name__, self.message, exc_info=err)
        return self.render_error(self._SERVER_ERROR)

    def answer_error(self, err: BrubeckError) -> Any:
        """Answer a brubeck (or service) error raised by the handler or a function route with the status it
        carries (`HTTPError`: its status and message; a `ServiceTimeout`: 504, ...), logging all but
        `HTTPError`, which a handler raises on purpose."""
        if isinstance(err, HTTPError):
            return self.render_error(err.status_code, err.message)
        log.warning("%s on %r: %s", type(err).__name__, self.message, err)
        return self.render_error(int(err.status_code))

    # -- dispatch -----------------------------------------------------------------------------------

    def __call__(self) -> Any:
        try:
            try:
                self.prepare()
                if self._finished:
                    return self.render()
                function = self._function_for(str(self.message.method).lower())
                if function is None:
                    return self.unsupported()
                result = function(*self._url_args, **self._url_kwargs)
                self._finished = True
                return result
            except BrubeckError as err:
                return self.answer_error(err)
            except Exception as err:
                return self.error(err)
        finally:
            # The response is built by now; a failing clean-up is logged rather than losing it.
            try:
                self.on_finish()
            except Exception:
                log.exception("%s.on_finish failed on %r", type(self).__name__, self.message)


class HTTPStatusCodes:
    """Brubeck's HTTP-like status constants, shared by web and service handlers."""

    _DEFAULT_STATUS = 500  # default to server error, earn success
    _SUCCESS_CODE = 200
    _UPDATED_CODE = 200
    _CREATED_CODE = 201
    _MULTI_CODE = 207
    _FAILED_CODE = 400
    _AUTH_FAILURE = 401
    _FORBIDDEN = 403
    _NOT_FOUND = 404
    _NOT_ALLOWED = 405
    _SERVER_ERROR = 500
    _response_codes: ClassVar[dict[int, str]] = {}  # reason phrases come from http.HTTPStatus


class WebMessageHandler(HTTPStatusCodes, MessageHandler):
    """A handler answering an HTTP client: body, headers, cookies, redirects."""

    def __init__(self, application: Application, message: Any, *args: Any, **kwargs: Any) -> None:
        self.body: bytes | str = b""
        self._cookies: dict[str, str] = {}
        super().__init__(application, message, *args, **kwargs)
        if not self.headers:
            self.headers = {"Content-Type": "text/html; charset=utf-8"}

    def set_body(self, body: bytes | str, headers: Mapping[str, Any] | None = None,
                 status_code: int | None = None) -> None:
        self.body = body
        if headers:
            self.headers.update(headers)
        self.set_status(self._SUCCESS_CODE if status_code is None else status_code)

    # -- cookies ------------------------------------------------------------------------------------

    def get_cookie(self, key: str, default: Any = None, secret: str | bytes | None = None,
                   max_age: float | None = None) -> Any:
        """A cookie's value; with `secret`, the verified value of a signed cookie (None if forged)."""
        raw = self.message.cookies.get(key)
        if raw is None:
            return default
        if secret is None:
            return raw
        value = unsign_value(key, raw, secret, max_age)
        return default if value is None else value

    def set_cookie(self, key: str, value: Any, secret: str | bytes | None = None, **options: Any) -> None:
        """Set a cookie (signed with `secret` when given); options: path, domain, expires, max_age,
        secure, httponly, samesite."""
        text = sign_value(key, value, secret) if secret is not None else str(value)
        self._cookies[key] = format_set_cookie(key, text, **options)

    def delete_cookie(self, key: str, path: str = "/", domain: str | None = None) -> None:
        self._cookies[key] = format_set_cookie(key, "", path=path, domain=domain, max_age=0,
                                               expires="Thu, 01 Jan 1970 00:00:00 GMT")

    # -- responses ----------------------------------------------------------------------------------

    def _header_pairs(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        for name, value in self.headers.items():
            if isinstance(value, list):
                pairs.extend((name, str(item)) for item in value)
            else:
                pairs.append((name, str(value)))
        pairs.extend(("Set-Cookie", cookie) for cookie in self._cookies.values())
        return pairs

    def render(self, status_code: int | None = None, http_200: bool = False, **kwargs: Any) -> HTTPResponse:
        if status_code is not None:
            self.set_status(status_code)
        if http_200:
            self.set_status(200)
        return HTTPResponse(self.body, self.status_code, self.status_msg, self._header_pairs())

    def render_error(self, error_code: int, status_msg: str | None = None) -> HTTPResponse:
        self.set_status(error_code, status_msg)
        self.headers["Content-Type"] = "text/plain; charset=utf-8"
        self.body = f"{self.status_code} {self.status_msg}\n"
        return self.render()

    def error(self, err: BaseException) -> HTTPResponse:
        # What the failed method set (a Location, cookies, even the header that made render() fail) is not
        # part of the 500: start that response from clean headers, as Tornado's send_error does.
        self.headers = {}
        self._cookies = {}
        response: HTTPResponse = super().error(err)
        return response

    def redirect(self, url: str, status_code: int = 302) -> HTTPResponse:
        self.set_status(status_code)
        self.headers["Location"] = url
        self.body = b""
        return self.render()

    def _function_for(self, method: str) -> Callable[..., Any] | None:
        # HEAD is GET without the body (the transport leaves the body out), unless the handler has `head`.
        # (Inlined rather than through super(): this runs once per request.)
        function = getattr(self, method, None) if method in self.SUPPORTED_METHODS else None
        if function is None and method == "head":
            function = getattr(self, "get", None)
        return function if callable(function) else None

    def allowed_methods(self) -> list[str]:
        allowed = super().allowed_methods()
        if "GET" in allowed and "HEAD" not in allowed:
            allowed.insert(allowed.index("GET") + 1, "HEAD")
        return allowed

    def unsupported(self, allowed: Sequence[str] | None = None) -> HTTPResponse:
        self.headers["Allow"] = ", ".join(self.allowed_methods() if allowed is None else allowed)
        return self.render_error(self._NOT_ALLOWED)


class JSONMessageHandler(WebMessageHandler):
    """A web handler whose body is the JSON payload plus status_code, status_msg and timestamp."""

    def __init__(self, application: Application, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(application, message, *args, **kwargs)
        self.headers["Content-Type"] = "application/json"

    def render(self, status_code: int | None = None, http_200: bool = False, **kwargs: Any) -> HTTPResponse:
        # The payload stamped with status and timestamp, as every MessageHandler renders it, as JSON.
        self.body = msgspec.json.encode(MessageHandler.render(self, status_code))
        if http_200:
            self.set_status(200)
        return HTTPResponse(self.body, self.status_code, self.status_msg, self._header_pairs())

    def render_error(self, error_code: int, status_msg: str | None = None) -> HTTPResponse:
        self.clear_payload()
        self.set_status(error_code, status_msg)
        self.headers["Content-Type"] = "application/json"
        return self.render()

