"""Brubeck 0.4's import path for the application, handlers and `render`.

Every public name of the package (listed once, in `brubeck.__all__`), plus `HTTP_METHODS` and
`http_response`, which Brubeck 0.4 apps imported from here.
"""

import brubeck
from brubeck import *  # noqa: F403  (the names are brubeck.__all__)
from brubeck.handlers import HTTP_METHODS
from brubeck.wire.http import http_response

__all__ = ["HTTP_METHODS", "http_response"]
__all__ += brubeck.__all__
