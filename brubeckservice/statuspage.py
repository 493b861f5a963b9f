"""`ServiceStatusHandler`: a live status page of an application's services, for the people who run it.

One route serves both the page and its data (docs/status-page.md):

    app = Brubeck(..., handler_tuples=[(r"^/status$", ServiceStatusHandler), ...])

    GET /status                  the page (HTML)
    GET /status?format=json      its data, `service_status(app)`; so does a request that accepts
                                 application/json but not text/html

Strategy: the HTML is a constant holding no data at all (inline CSS and script, nothing fetched but the
JSON: it works without the internet). Its script polls the JSON and builds the page with `textContent` and
`setAttribute` only, never markup from data, since addresses, reasons and versions come from the network.
A Content-Security-Policy that allows only this script and this style, by hash, backs that up: anything
injected could not run. The JSON lists the `ServiceClient`s registered in the application
(`brubeckservice.mixin.registry`), with their counters and each worker's `WorkerInfo`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import time
from typing import Any, ClassVar

import msgspec

from brubeck.handlers import WebMessageHandler
from brubeck.response import HTTPResponse
from brubeck.types import Application
from brubeck.wire.mongrel2 import header
from brubeckservice.mixin import registry

__all__ = ["ServiceStatusHandler", "service_status"]


def service_status(application: Application) -> dict[str, Any]:
    """What the status page shows: the server's time (`timestamp`, Unix seconds) and, for each service
    registered in `application`, by address: its calls pending and queued, whether it is in reach, its
    counters (`stats`) and its workers (each `WorkerInfo` as a dict)."""
    services = [{"address": address, "pending": client.pending, "queued": client.queued,
                 "available": client.available, "stats": dict(sorted(client.stats.items())),
                 "workers": [dataclasses.asdict(info) for info in client.workers]}
                for address, client in sorted(registry(application).items())]
    return {"timestamp": round(time.time(), 3), "services": services}


STYLE = """
:root { --ink: #1d2733; --muted: #5f6c7b; --line: #e3e7ec; --page: #f4f6f9; --card: #fff; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem 2rem 3rem; background: var(--page); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
h1 { font-size: 1.5rem; margin: 0; } h2 { font-size: 1.05rem; margin: 0 0 .4rem; }
h3 { font-size: .9rem; margin: 1rem 0 .3rem; color: var(--muted); }
code { font: .88em ui-monospace, Menlo, Consolas, monospace; overflow-wrap: break-word; }
.muted, .summary, .empty { color: var(--muted); } .empty { font-style: italic; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 1rem 1.3rem;
        margin: 1rem 0; }
.problem { background: #fdecec; color: #c53030; border-radius: 8px; padding: .5rem 1rem; }
table { width: 100%; border-collapse: collapse; font-size: .85rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.reason { color: var(--muted); overflow-wrap: break-word; min-width: 8rem; }
td.address { min-width: 11rem; } td.address code { overflow-wrap: break-word; word-break: break-all; }
td.latency, td.served-latency { white-space: nowrap; }
.scroll { overflow-x: auto; }
.badge { display: inline-block; padding: .05rem .55rem; border-radius: 999px; font-weight: 600;
         background: #edf0f3; color: var(--muted); }
.s-alive { background: #e6f6ee; color: #25855a; } .s-busy { background: #fef5e7; color: #b7791f; }
.s-draining { background: #ebf4ff; color: #2b6cb0; } .s-dead, .s-refused { background: #fdecec; color: #c53030; }
.chart { width: 100%; max-width: 44rem; height: auto; display: block; }
.axis { stroke: #a0aab5; stroke-width: 1; } .grid { stroke: #edf0f3; stroke-width: 1; }
.tick, .label { fill: var(--muted); font-size: 11px; }
.line { fill: none; stroke: var(--c); stroke-width: 2; } .dot { fill: var(--c); }
.w0 { --c: #2b6cb0; } .w1 { --c: #dd6b20; } .w2 { --c: #38a169; } .w3 { --c: #805ad5; } .w4 { --c: #d53f8c; }
.w5 { --c: #319795; }
.legend { list-style: none; padding: 0; margin: .3rem 0; display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; }
.swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: 2px; margin-right: .35rem;
          background: var(--c); vertical-align: -1px; }
.stat { display: inline-block; margin: 0 .9rem .2rem 0; } .stat.bad, td.bad { color: #c53030; font-weight: 600; }
"""

SCRIPT = r"""
"use strict";
(() => {
  const INTERVAL = Number(document.body.dataset.interval) || 1000;
  const HISTORY = Number(document.body.dataset.history) || 60;
  const STATES = ["connecting", "alive", "busy", "draining", "dead", "refused", "leaving"];
  const ERRORS = ["timeouts", "unavailable", "forged", "late", "malformed", "lost", "past_deadline"];
  const COLUMNS = ["Worker", "State", "In flight / capacity", "Load", "Served", "Errors", "Round trip p50 / p99",
                   "Served in p50 / p99", "Uptime", "Version", "Reason"];
  const SVGNS = "http://www.w3.org/2000/svg";
  const W = 640, H = 170, LEFT = 74, RIGHT = 10, TOP = 10, BOTTOM = 32;
  const root = document.getElementById("services");
  const problem = document.getElementById("problem");
  const updated = document.getElementById("updated");
  let series = new Map();  // service address -> Map(worker address -> p50 ms or null, one per poll)
  let polls = 0;

  // Data only ever becomes text nodes and attribute values: never markup.
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const count = (v) => (isNum(v) ? String(v) : "\u2013");
  const ms = (v) => (isNum(v) ? v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2) + " ms" : "\u2013");
  const pair = (a, b) => ms(a) + " / " + ms(b);
  function uptime(s) {
    if (!isNum(s)) return "\u2013";
    if (s < 120) return s.toFixed(0) + " s";
    return s < 7200 ? (s / 60).toFixed(0) + " min" : (s / 3600).toFixed(1) + " h";
  }

  function remember(service, next) {
    const old = series.get(service.address) || new Map();
    const lines = new Map();
    for (const worker of service.workers) {
      const points = old.get(worker.address) || [];
      points.push(isNum(worker.latency_p50_ms) ? worker.latency_p50_ms : null);
      lines.set(worker.address, points.slice(-HISTORY));
    }
    next.set(service.address, lines);
    return lines;
  }

  function row(worker) {
    const tr = el("tr", "worker");
    tr.setAttribute("data-address", worker.address);
    const state = STATES.includes(worker.state) ? worker.state : "unknown";
    const cells = [["address", el("code", "", worker.address)], ["state", el("span", "badge s-" + state, worker.state)],
      ["inflight", count(worker.inflight) + " / " + count(worker.capacity)], ["load", count(worker.load)],
      ["served", count(worker.served)], ["errors", count(worker.errors)],
      ["latency", pair(worker.latency_p50_ms, worker.latency_p99_ms)],
      ["served-latency", pair(worker.served_p50_ms, worker.served_p99_ms)], ["uptime", uptime(worker.uptime)],
      ["version", worker.version ?? "\u2013"], ["reason", worker.reason ?? ""]];
    for (const [name, content] of cells) {
      const td = el("td", name);
      td.append(content);  // (a string becomes a text node)
      tr.append(td);
    }
    if (isNum(worker.errors) && worker.errors > 0) tr.querySelector("td.errors").classList.add("bad");
    return tr;
  }

  function nice(v) {  // the round number (1, 2, 2.5 or 5 times a power of ten) at or above v
    const power = Math.pow(10, Math.floor(Math.log10(v)));
    return [1, 2, 2.5, 5, 10].map((m) => m * power).find((n) => n >= v);
  }

  function chart(lines) {
    let highest = 1;
    for (const points of lines.values()) for (const v of points) if (v !== null && v > highest) highest = v;
    const top = nice(highest * 1.1);
    const plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM, step = plotW / Math.max(1, HISTORY - 1);
    const box = svg("svg", {viewBox: "0 0 " + W + " " + H, class: "chart", role: "img",
                            "aria-label": "round trip p50 per worker"});
    box.append(svg("line", {x1: LEFT, y1: TOP, x2: LEFT, y2: TOP + plotH, class: "axis"}),
               svg("line", {x1: LEFT, y1: TOP + plotH, x2: W - RIGHT, y2: TOP + plotH, class: "axis"}),
               svg("line", {x1: LEFT, y1: TOP + plotH / 2, x2: W - RIGHT, y2: TOP + plotH / 2, class: "grid"}),
               svg("text", {x: LEFT - 5, y: TOP + 8, class: "tick", "text-anchor": "end"}, ms(top)),
               svg("text", {x: LEFT - 5, y: TOP + plotH / 2 + 4, class: "tick", "text-anchor": "end"}, ms(top / 2)),
               svg("text", {x: LEFT - 5, y: TOP + plotH, class: "tick", "text-anchor": "end"}, "0"),
               svg("text", {x: 12, y: TOP + plotH / 2, class: "label", "text-anchor": "middle",
                            transform: "rotate(-90 12 " + (TOP + plotH / 2) + ")"}, "p50 (ms)"),
               svg("text", {x: LEFT + plotW / 2, y: H - 8, class: "label", "text-anchor": "middle"},
                   "round trip p50 per worker, last " + HISTORY + " polls (one every " + INTERVAL / 1000 + " s)"));
    let index = 0;
    for (const [address, points] of lines) {
      const xy = [];
      points.forEach((v, i) => {
        if (v !== null) xy.push([LEFT + (HISTORY - points.length + i) * step, TOP + plotH * (1 - v / top)]);
      });
      const line = svg("polyline", {class: "line w" + (index % 6), "data-worker": address, "data-points": xy.length,
                                    points: xy.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" ")});
      line.append(svg("title", {}, address));
      box.append(line);
      if (xy.length) {
        const [x, y] = xy[xy.length - 1];
        box.append(svg("circle", {cx: x.toFixed(1), cy: y.toFixed(1), r: 3, class: "dot w" + (index % 6)}));
      }
      index += 1;
    }
    return box;
  }

  function legend(lines) {
    const list = el("ul", "legend");
    let index = 0;
    for (const address of lines.keys()) {
      const item = el("li");
      item.append(el("span", "swatch w" + (index++ % 6)), el("code", "", address));
      list.append(item);
    }
    return list;
  }

  function stats(service) {
    const counters = service.stats && typeof service.stats === "object" ? service.stats : {};
    const chip = (name, value, bad) => {
      const node = el("span", bad && value > 0 ? "stat bad" : "stat");
      node.setAttribute("data-stat", name);
      node.append(el("b", "", count(value)), " " + name);
      return node;
    };
    const workerErrors = service.workers.reduce((sum, w) => sum + (isNum(w.errors) ? w.errors : 0), 0);
    const errors = el("p", "errors");
    errors.append(...ERRORS.map((name) => chip(name, counters[name] ?? 0, true)),
                  chip("worker errors", workerErrors, true));
    const others = el("p", "counters");
    const names = Object.keys(counters).filter((name) => !ERRORS.includes(name));
    others.append(...(names.length ? names.map((name) => chip(name, counters[name], false)) : ["none yet"]));
    return [el("h3", "", "Errors"), errors, el("h3", "", "Counters"), others];
  }

  function section(service, lines) {
    const box = el("section", "card service");
    box.setAttribute("data-address", service.address);
    const title = el("h2");
    title.append(el("code", "", service.address));
    box.append(title, el("p", "summary", count(service.pending) + " pending, " + count(service.queued) + " queued"
                                         + (service.available === false ? ", out of reach" : "")));
    if (service.workers.length) {
      const table = el("table", "workers"), head = el("thead"), body = el("tbody");
      head.append(el("tr"));
      head.firstChild.append(...COLUMNS.map((name) => el("th", "", name)));
      body.append(...service.workers.map(row));
      table.append(head, body);
      const scroll = el("div", "scroll");
      scroll.append(table);
      box.append(scroll, el("h3", "", "Latency"), chart(lines), legend(lines));
    } else {
      box.append(el("p", "empty", "No workers."));
    }
    box.append(...stats(service));
    return box;
  }

  function show(data) {
    const services = Array.isArray(data.services) ? data.services : [];
    const next = new Map();
    const nodes = services.map((service) => {
      if (!Array.isArray(service.workers)) service.workers = [];
      return section(service, remember(service, next));
    });
    series = next;
    root.replaceChildren(...(nodes.length ? nodes : [el("p", "empty", "No services registered.")]));
    updated.textContent = "Updated " + new Date(data.timestamp * 1000).toLocaleTimeString() + " (server clock)";
    document.body.setAttribute("data-polls", String(++polls));
  }

  async function poll() {
    try {
      const response = await fetch(location.pathname + "?format=json",
                                   {headers: {Accept: "application/json"}, cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      show(await response.json());
      problem.hidden = true;
    } catch (err) {
      problem.textContent = "Cannot read the status: " + (err && err.message ? err.message : String(err));
      problem.hidden = false;
    }
    setTimeout(poll, INTERVAL);
  }
  poll();
})();
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


#: Only this page's own script and style run, and the script may fetch from this origin only.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; script-src '{_sha256(SCRIPT)}'; style-src '{_sha256(STYLE)}'; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

PAGE = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>@TITLE@</title>\n"
        f"<style>{STYLE}</style>\n</head>\n"
        "<body data-interval=\"@INTERVAL@\" data-history=\"@HISTORY@\">\n"
        "<header><h1>@TITLE@</h1><p id=\"updated\" class=\"muted\">Waiting for the first poll\u2026</p></header>\n"
        "<p id=\"problem\" class=\"problem\" hidden></p>\n"
        "<main id=\"services\"><p class=\"empty\">Loading\u2026</p></main>\n"
        "<noscript><p>This page needs JavaScript; its data is at <code>?format=json</code>.</p></noscript>\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n")

#: Both answers change every moment: never cached, never sniffed as another type.
NO_CACHE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class ServiceStatusHandler(WebMessageHandler):
    """`GET`: the status page of the application's registered services, or its data as JSON for
    `?format=json` (or an Accept header naming application/json but not text/html). Subclass to change
    the class attributes."""

    #: Seconds between the page's polls of the JSON.
    poll_interval: ClassVar[float] = 1.0
    #: Polls the latency chart spans.
    history: ClassVar[int] = 60
    #: The page's title and heading.
    title: ClassVar[str] = "Service status"

    def wants_json(self) -> bool:
        if self.get_argument("format") == "json":
            return True
        accept = header(getattr(self.message, "headers", {}), "accept").lower()
        return "application/json" in accept and "text/html" not in accept

    def get(self) -> HTTPResponse:
        if self.wants_json():
            self.set_body(msgspec.json.encode(service_status(self.application)),
                          {"Content-Type": "application/json", **NO_CACHE})
        else:
            self.set_body(self.page(), {"Content-Type": "text/html; charset=utf-8",
                                        "Content-Security-Policy": CONTENT_SECURITY_POLICY, **NO_CACHE})
        return self.render()

    def page(self) -> str:
        """The HTML: the constant page with this class's settings (numbers, and the title escaped)."""
        interval_ms = max(100, round(float(self.poll_interval) * 1000))
        return (PAGE.replace("@INTERVAL@", str(interval_ms)).replace("@HISTORY@", str(max(2, int(self.history))))
                .replace("@TITLE@", html.escape(self.title)))
