"""Turning runs into a verdict: medians, ratios to the same run's baseline, the table, JSON and the chart.

A ratio target is judged on the median of the per-run ratios (subject / baseline measured minutes apart
in the same run), which cancels most of a shared machine's drift; the medians of each side are shown too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cases import Benchmark, Figures, Target
from bench.stats import median, spread

HEADINGS = {"rate": "rate/s", "p50_us": "p50 us", "p99_us": "p99 us", "bytes_per_call": "B/call",
            "rss_before": "RSS0 MiB", "rss_after": "RSS1 MiB", "growth_pct": "growth %", "errors": "errors",
            "client_cpu_us": "cli CPU us", "server_cpu_us": "srv CPU us", "service_cpu_us": "svc CPU us",
            # many workers (bench/workers.py)
            "p50_ms": "p50 ms", "cores": "wkr cores", "failed": "failed", "calls": "calls", "roll_s": "roll s",
            "fail_ms": "fail ms", "fail_max_ms": "fail max", "dead_ms": "dead ms", "dead_max_ms": "dead max",
            "alive_ms": "alive ms", "alive_max_ms": "alive max", "rate_before": "before/s",
            "rate_during": "during/s", "during_pct": "during %", "cost_pct": "cost %"}
#: The y axis of a benchmark's panel, by its first metric (default: a rate).
UNITS = {"bytes_per_call": "bytes per in-flight call", "fail_ms": "ms from the fault to the failed call",
         "failed": "calls failed"}


def summarize(benchmark: Benchmark, runs: Sequence[dict[str, Figures]], errors: Sequence[str]) -> dict[str, Any]:
    """Per variant and metric: every run's figure, their median, min and max."""
    variants: dict[str, Any] = {}
    for variant in benchmark.variants:
        figures = [run[variant] for run in runs if variant in run]
        metrics = sorted({k for f in figures for k, v in f.items() if isinstance(v, int | float)})
        variants[variant] = {
            metric: {"runs": [float(f.get(metric, math.nan)) for f in figures],
                     "median": median([float(f.get(metric, math.nan)) for f in figures]),
                     "spread": spread([float(f.get(metric, math.nan)) for f in figures])}
            for metric in metrics}
    return {"number": benchmark.number, "title": benchmark.title, "runs": list(runs), "errors": list(errors),
            "variants": variants}


def judge(target: Target, runs: Sequence[dict[str, Figures]]) -> dict[str, Any]:
    """The target's value (median of per-run ratios, or of the figure) and whether it is met."""
    per_run: list[float] = []
    for run in runs:
        subject = run.get(target.subject, {}).get(target.metric)
        if subject is None:
            continue
        if target.baseline is None:
            per_run.append(float(subject))
            continue
        base = run.get(target.baseline, {}).get(target.metric)
        if base:
            per_run.append(float(subject) / float(base))
    value = median(per_run)
    has_goal = target.minimum is not None or target.maximum is not None
    met = None if not has_goal or math.isnan(value) else target.met(value)
    return {"label": target.label, "benchmark": target.benchmark, "subject": target.subject,
            "baseline": target.baseline, "metric": target.metric, "per_run": per_run, "value": value,
            "minimum": target.minimum, "maximum": target.maximum, "met": met, "margin": margin(target, value)}


def margin(target: Target, value: float) -> float:
    """How far the value is from the goal, as a fraction of the goal: > 0 met with room, < 0 missed."""
    if math.isnan(value):
        return math.nan
    if target.minimum is not None:
        return value / target.minimum - 1
    if target.maximum is not None:
        return 1 - value / target.maximum
    return math.nan


# -- the table --------------------------------------------------------------------------------------------


def _fmt(metric: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    if metric.startswith("rss"):
        return f"{value / 2**20:,.1f}"
    if metric == "growth_pct":
        return f"{value:+.2f}"
    if metric in ("failed", "calls"):  # counts
        return f"{value:,.0f}"
    if metric == "rate" or value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _ratio(goal: float) -> str:
    """A ratio target as written in the issue: 0.85, 2.5, 3.0 (one decimal at least, two when it has them)."""
    text = f"{goal:.2f}".rstrip("0")
    return f"{text}0" if text.endswith(".") else text


def table(summaries: dict[str, dict[str, Any]], benchmarks: Sequence[Benchmark],
          verdicts: Sequence[dict[str, Any]], runs: int) -> str:
    lines: list[str] = []
    for benchmark in benchmarks:
        summary = summaries.get(benchmark.name)
        if summary is None:
            continue
        head = f"{benchmark.number:>4} {benchmark.title}"
        columns = "".join(f"{HEADINGS[m]:>12}" for m in benchmark.metrics)
        lines.append(f"{head:<48}{'':>9}{columns}   spread of {benchmark.metrics[0]} over runs")
        for variant in benchmark.variants:
            stats = summary["variants"].get(variant, {})
            cells = "".join(f"{_fmt(m, stats.get(m, {}).get('median', math.nan)):>12}" for m in benchmark.metrics)
            low, high = stats.get(benchmark.metrics[0], {}).get("spread", (math.nan, math.nan))
            span = f"{_fmt(benchmark.metrics[0], low)} .. {_fmt(benchmark.metrics[0], high)}"
            lines.append(f"{'':<48}{variant:>9}{cells}   {span}")
        for error in summary["errors"]:
            lines.append(f"{'':<8}ERROR: {error.splitlines()[0]}")
        notes = {f"{v}: {f['note']}": None for run in summary["runs"] for v, f in run.items()
                 if isinstance(f.get("note"), str)}
        lines.extend(f"{'':<8}NOTE: {note}" for note in notes)
    lines.append("")
    lines.append(f"Targets: median over the runs ({runs} at most) of each run's value; a ratio is subject/baseline"
                 " measured in the same run")
    for verdict in verdicts:
        value = verdict["value"]
        if verdict["baseline"] is not None:
            shown = f"{value:.2f}x"
            goal = f">= {_ratio(verdict['minimum'])}x" if verdict["minimum"] is not None else ""
        else:
            shown = _fmt(verdict["metric"], value)
            goal = f"<= {_fmt(verdict['metric'], verdict['maximum'])}" if verdict["maximum"] is not None else ""
        mark = {True: "MET", False: "MISSED", None: ""}[verdict["met"]]
        how = ""
        if verdict["met"] is not None and not math.isnan(verdict["margin"]):
            how = f"{'by' if verdict['met'] else 'short by'} {abs(verdict['margin']) * 100:.0f}%"
        per_run = ", ".join(f"{v:.2f}" if verdict["baseline"] else _fmt(verdict["metric"], v)
                            for v in verdict["per_run"])
        lines.append(f"  {verdict['label']:<46}{shown:>9}  {goal:<11}{mark:<7}{how:<16}runs: {per_run}")
    return "\n".join(lines)


# -- JSON and PNG -----------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(_clean(document), indent=2, sort_keys=False) + "\n")
    temporary.replace(path)


def draw(path: Path, summaries: dict[str, dict[str, Any]], benchmarks: Sequence[Benchmark],
         verdicts: Sequence[dict[str, Any]], title: str) -> None:
    """One panel per benchmark (median bars, min-max whiskers) and one of ratios against their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [b for b in benchmarks if b.name in summaries and b.name != "soak"]
    count = len(panels) + 1
    columns = 3 if count > 2 else count
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    # The library in blues, the plain pyzmq floors (targets' baselines) darkest grey, zmq.green paler.
    colours = {"brubeck": "#1f77b4", "hello": "#1f77b4", "service": "#6baed6", "call": "#1f77b4",
               "send": "#6baed6", "plain": "#404040", "pipelined": "#404040", "floor": "#404040",
               "raw": "#7f7f7f", "raw+call": "#bdbdbd", "zerorpc": "#ff7f0e"}
    for ax, benchmark in zip(flat, panels, strict=False):
        metric = benchmark.metrics[0]
        stats = summaries[benchmark.name]["variants"]
        names = [v for v in benchmark.variants if metric in stats.get(v, {})]
        values = [stats[v][metric]["median"] for v in names]
        low = [max(0.0, val - stats[v][metric]["spread"][0]) for v, val in zip(names, values, strict=True)]
        high = [max(0.0, stats[v][metric]["spread"][1] - val) for v, val in zip(names, values, strict=True)]
        bars = ax.bar(names, values, yerr=[low, high], capsize=4, color=[colours.get(n, "#999") for n in names])
        ax.bar_label(bars, labels=[_fmt(metric, v) for v in values], fontsize=8)
        unit = UNITS.get(metric, "calls or requests / s")
        ax.set_title(f"{benchmark.number}. {benchmark.title}", fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        if metric == "bytes_per_call":
            ax.axhline(10 * 1024, color="red", linestyle="--", linewidth=1)
            ax.text(0, 10 * 1024, " target < 10 KiB", color="red", fontsize=7, va="bottom")
        ax.tick_params(labelsize=8)
    ax = flat[len(panels)]
    ratio_verdicts = [v for v in verdicts if v["baseline"] is not None and not math.isnan(v["value"])]
    labels = [v["label"] for v in ratio_verdicts]
    values = [v["value"] for v in ratio_verdicts]
    colours_r = ["#2ca02c" if v["met"] else "#d62728" if v["met"] is False else "#999" for v in ratio_verdicts]
    ax.barh(labels, values, color=colours_r)
    for i, verdict in enumerate(ratio_verdicts):
        if verdict["minimum"] is not None:
            ax.plot([verdict["minimum"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.text(verdict["value"], i, f" {verdict['value']:.2f}x", va="center", fontsize=7)
    soak = next((v for v in verdicts if v["benchmark"] == "soak"), None)
    note = "" if soak is None or math.isnan(soak["value"]) else f"   soak RSS growth {soak['value']:+.2f}%"
    ax.set_title(f"ratio to baseline (black: target){note}", fontsize=9)
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    for extra in flat[len(panels) + 1:]:
        extra.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
