"""Authentication decorators for handler methods (Brubeck 0.4's `brubeck.auth`).

Both call the handler's `get_current_user()` (through `current_user`); no user means 401, or for
`web_authenticated` a redirect to the application's `login_url` when it has one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def authenticated(method: F) -> F:
    """Answer 401 (the handler's `_AUTH_FAILURE`) unless `get_current_user()` returns a user."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.current_user:
            return self.render_error(self._AUTH_FAILURE)
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def web_authenticated(method: F) -> F:
    """Like `authenticated`, but redirect to `application.login_url` when it is set."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.current_user:
            login_url = getattr(self.application, "login_url", None)
            if login_url:
                return self.redirect(login_url)
            return self.render_error(self._AUTH_FAILURE)
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
