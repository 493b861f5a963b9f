"""Jinja2 templates for web handlers (Brubeck 0.4's `brubeck.templating`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from brubeck.handlers import WebMessageHandler
from brubeck.response import HTTPResponse


def load_jinja2_env(template_dir: str, *args: Any, **kwargs: Any) -> Callable[[], Environment]:
    """A template loader for `Brubeck(template_loader=...)`: returns a function building the environment.

    HTML and XML templates are autoescaped. Extra arguments go to `jinja2.Environment`.
    """

    options: dict[str, Any] = {"autoescape": select_autoescape(["html", "htm", "xml"]), **kwargs}
    options["loader"] = FileSystemLoader(template_dir)

    def loader() -> Environment:
        return Environment(*args, **options)  # noqa: S701 - autoescape is in options

    return loader


class Jinja2Rendering(WebMessageHandler):
    """Mix into a web handler to answer with a rendered template."""

    #: The template `render_error` uses; it gets `error_code` and `status_msg` in its context.
    error_template = "errors.html"

    def render_template(self, template_file: str, _status_code: int = WebMessageHandler._SUCCESS_CODE,
                        **context: Any) -> HTTPResponse:
        env = self.application.template_env
        if env is None:
            raise RuntimeError("render_template needs Brubeck(template_loader=load_jinja2_env(...))")
        body = env.get_template(template_file).render(**context)
        self.set_body(body, status_code=_status_code)
        return self.render()

    def render_error(self, error_code: int, status_msg: str | None = None) -> HTTPResponse:
        """The error page from `error_template`, or plain text when there is none."""
        env = self.application.template_env if self.application is not None else None
        if env is None:
            return super().render_error(error_code, status_msg)
        self.set_status(error_code, status_msg)
        try:
            template = env.get_template(self.error_template)
        except Exception:
            return super().render_error(error_code, status_msg)
        self.body = template.render(error_code=self.status_code, status_msg=self.status_msg)
        return self.render()
