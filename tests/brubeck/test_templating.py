"""Jinja2 templates: rendering, autoescaping, and error pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from brubeck.response import HTTPResponse
from brubeck.templating import Jinja2Rendering, load_jinja2_env
from tests.brubeck.inmemory import call, header, make_app


class Greeting(Jinja2Rendering):
    def get(self) -> HTTPResponse:
        return self.render_template("greeting.html", name=self.get_argument("name", "world"))

    def post(self) -> HTTPResponse:
        return self.render_template("greeting.html", _status_code=201, name="new")

    def put(self) -> HTTPResponse:
        return self.render_template("missing.html")


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    (tmp_path / "greeting.html").write_text("<p>Hello, {{ name }}!</p>")
    (tmp_path / "note.txt").write_text("raw {{ text }}")
    return tmp_path


def test_render_template_answers_with_the_rendered_page(templates: Path) -> None:
    app = make_app((r"^/", Greeting), template_loader=load_jinja2_env(str(templates)))
    response = call(app, "GET", "/?name=Ann")
    assert (response.status_code, response.body) == (200, b"<p>Hello, Ann!</p>")
    assert header(response, "Content-Type") == ["text/html; charset=utf-8"]
    assert call(app, "POST", "/").status_code == 201


def test_html_templates_escape_what_the_client_sent(templates: Path) -> None:
    app = make_app((r"^/", Greeting), template_loader=load_jinja2_env(str(templates)))
    response = call(app, "GET", "/?name=%3Cscript%3Ealert(1)%3C/script%3E")
    assert response.body == b"<p>Hello, &lt;script&gt;alert(1)&lt;/script&gt;!</p>"


def test_the_loader_builds_one_environment_with_extra_options(templates: Path) -> None:
    app = make_app(template_loader=load_jinja2_env(str(templates), trim_blocks=True))
    assert app.template_env is not None
    assert app.template_env.trim_blocks
    assert app.template_env.get_template("note.txt").render(text="<b>") == "raw <b>"  # not HTML: no escaping


def test_a_missing_template_is_a_500(templates: Path) -> None:
    app = make_app((r"^/", Greeting), template_loader=load_jinja2_env(str(templates)))
    assert call(app, "PUT", "/").status_code == 500


def test_render_template_without_a_template_loader_is_a_500() -> None:
    assert call(make_app((r"^/", Greeting)), "GET", "/").status_code == 500


def test_errors_use_the_error_template_when_there_is_one(templates: Path) -> None:
    (templates / "errors.html").write_text("<h1>{{ error_code }}: {{ status_msg }}</h1>")
    app = make_app((r"^/", Greeting), template_loader=load_jinja2_env(str(templates)))
    response = call(app, "DELETE", "/")
    assert (response.status_code, response.body) == (405, b"<h1>405: Method Not Allowed</h1>")


def test_errors_are_plain_text_without_an_error_template(templates: Path) -> None:
    app = make_app((r"^/", Greeting), template_loader=load_jinja2_env(str(templates)))
    response = call(app, "DELETE", "/")
    assert (response.status_code, response.body) == (405, b"405 Method Not Allowed\n")


def test_a_handler_can_name_its_own_error_template(templates: Path) -> None:
    (templates / "oops.html").write_text("oops {{ error_code }}")

    class Custom(Greeting):
        error_template = "oops.html"

    app = make_app((r"^/", Custom), template_loader=load_jinja2_env(str(templates)))
    assert call(app, "DELETE", "/").body == b"oops 405"
