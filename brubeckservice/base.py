"""brubeck-service 2013's import path: `from brubeckservice.base import ServiceConnection, ...`.

Every public name of the package (listed once, in `brubeckservice.__all__`), plus `coro_sleep`.
"""

from gevent import sleep as coro_sleep

import brubeckservice
from brubeckservice import *  # noqa: F403  (the names are brubeckservice.__all__)

__all__ = ["coro_sleep"]
__all__ += brubeckservice.__all__
