"""Routes: regexes tried in order, anchored at the start, with methods that turn a 404 into a 405."""

from __future__ import annotations

import re

import pytest

from brubeck.routing import NoRoute, Router


def router(*routes: tuple[str, str, str | list[str] | None]) -> Router[str]:
    table: Router[str] = Router()
    for pattern, target, method in routes:
        table.add(pattern, target, method)
    return table


def test_the_first_matching_route_wins() -> None:
    table = router((r"^/items/new$", "new", None), (r"^/items/(\w+)$", "item", None))
    assert table.match("/items/new", "GET").route.target == "new"
    assert table.match("/items/42", "GET").route.target == "item"


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("/a", "/a", True),
    ("/a", "/x/a", False),        # anchored at the start, like Brubeck 0.4's re.match
    ("/a", "/ab", True),          # but not at the end: add $ for that
    ("/a$", "/ab", False),
])
def test_patterns_are_anchored_at_the_start_only(pattern: str, path: str, matches: bool) -> None:
    table = router((pattern, "t", None))
    if matches:
        assert table.match(path, "GET").route.target == "t"
    else:
        with pytest.raises(NoRoute):
            table.match(path, "GET")


def test_named_groups_are_keyword_arguments_and_unnamed_ones_positional() -> None:
    found = router((r"^/(\w+)/(?P<item>\d+)/(\w+)$", "t", None)).match("/shop/42/edit", "GET")
    assert found.args == ("shop", "edit")
    assert found.kwargs == {"item": "42"}


def test_optional_groups_that_did_not_match_are_left_out() -> None:
    table = router((r"^/page(?:/(\d+))?(?:/(?P<fmt>json))?$", "t", None))
    assert (table.match("/page", "GET").args, table.match("/page", "GET").kwargs) == ((), {})
    found = table.match("/page/3/json", "GET")
    assert (found.args, found.kwargs) == (("3",), {"fmt": "json"})


def test_precompiled_patterns_keep_their_flags() -> None:
    table: Router[str] = Router()
    table.add(re.compile(r"^/X", re.IGNORECASE), "t")
    assert table.match("/x", "GET").route.target == "t"


def test_a_route_restricted_to_methods_is_skipped_for_others() -> None:
    table = router((r"^/items$", "create", "POST"), (r"^/items$", "list", None))
    assert table.match("/items", "POST").route.target == "create"
    assert table.match("/items", "post").route.target == "create"
    assert table.match("/items", "GET").route.target == "list"


def test_a_path_only_other_methods_serve_is_a_405_with_what_is_allowed() -> None:
    table = router((r"^/items$", "a", ["get", "HEAD"]), (r"^/items$", "b", "POST"), (r"^/other$", "c", "PUT"))
    with pytest.raises(NoRoute) as missing:
        table.match("/items", "DELETE")
    assert missing.value.allowed == {"GET", "HEAD", "POST"}


def test_a_path_nothing_serves_is_a_404() -> None:
    table = router((r"^/items$", "a", "POST"))
    with pytest.raises(NoRoute) as missing:
        table.match("/nothing", "POST")
    assert missing.value.allowed == frozenset()
    assert missing.value.path == "/nothing"
