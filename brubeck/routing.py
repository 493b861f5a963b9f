"""Routes: regular expressions matched in order, anchored at the start of the path.

Named groups reach the handler as keyword arguments, unnamed groups as positional ones. A route may be
restricted to some HTTP methods; a path that matches only routes for other methods is a 405, not a 404.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")  # what a route leads to: the router never looks inside (the app's: brubeck.types.RouteTarget)


@dataclass(frozen=True, slots=True)
class Route(Generic[T]):
    pattern: re.Pattern[str]
    target: T
    methods: frozenset[str] | None = None  # upper-case; None means any

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    route: Route[T]
    args: tuple[str, ...]
    kwargs: dict[str, str]


class NoRoute(LookupError):
    """No route matches the path (404), or only routes for other methods do (405, see `allowed`)."""

    def __init__(self, path: str, allowed: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.allowed = allowed
        super().__init__(f"no route for {path!r}")


def _methods(method: str | Iterable[str] | None) -> frozenset[str] | None:
    if method is None:
        return None
    methods = {method.upper()} if isinstance(method, str) else {m.upper() for m in method}
    if "GET" in methods:
        methods.add("HEAD")  # a GET route answers HEAD too (the transports send the headers only)
    return frozenset(methods)


class Router(Generic[T]):
    """An ordered list of routes; the first whose pattern and method fit wins."""

    def __init__(self) -> None:
        self.routes: list[Route[T]] = []

    def add(self, pattern: str | re.Pattern[str], target: T,
            method: str | Iterable[str] | None = None) -> Route[T]:
        route = Route(re.compile(pattern), target, _methods(method))
        self.routes.append(route)
        return route

    def match(self, path: str, method: str) -> Match[T]:
        """The first route for `path` and `method`; raises `NoRoute`."""
        allowed: set[str] = set()
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if not route.allows(method):
                allowed |= route.methods or set()
                continue
            if not route.pattern.groups:
                return Match(route, (), {})
            named = set(route.pattern.groupindex.values())
            args = tuple(g for i, g in enumerate(found.groups(), 1) if i not in named and g is not None)
            kwargs = {k: v for k, v in found.groupdict().items() if v is not None}
            return Match(route, args, kwargs)
        raise NoRoute(path, frozenset(allowed))
