"""`watti-watchman simulate`: a scenario on a plant preset with one controller, scored, optionally plotted.

Virtual time, no network: see `sim/virtual.py`. The meter-limited oracle is run alongside as the
physical bound for the same scenario and plant.
"""

import html
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from watti_watchman.sim.plant import PRESETS
from watti_watchman.sim.scenario import Scenario, load_scenario
from watti_watchman.sim.score import Score, score
from watti_watchman.sim.virtual import ControllerKind, RunResult, simulate_run

EXIT_OK = 0
EXIT_USAGE = 2
COLUMNS = (
    "controller",
    "exported Wh",
    "imported Wh",
    "RMS error W",
    "settling s",
    "overshoot W",
    "reversals",
    "setpoint writes",
)
CHOICES: dict[str, ControllerKind] = {"watti": "watti", "reference": "reference"}


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def score_row(name: str, result: Score) -> list[str]:
    """One table row: energies (Wh, 3 decimals), RMS (W), settling (s), overshoot (W), counts."""
    settling = _cell(result.settling_s, 1)
    if result.unsettled:
        settling += f" ({result.unsettled} unsettled)"
    return [
        name,
        f"{result.export_wh:.3f}",
        f"{result.import_wh:.3f}",
        f"{result.rms_w:.0f}",
        settling,
        _cell(result.overshoot_w, 0),
        str(result.reversals),
        str(result.writes),
    ]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded for the terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def run_simulate(scenario: str, plant: str, controller: str, plot: Path | None) -> int:
    """Run, print the score table, write the plot; 0 on success, 2 for an unknown name."""
    try:
        chosen: Scenario = load_scenario(scenario)
    except ValueError as error:
        print(f"simulate: {error}", file=sys.stderr)
        return EXIT_USAGE
    if plant not in PRESETS:
        print(f"simulate: unknown plant {plant!r} (presets: {', '.join(PRESETS)})", file=sys.stderr)
        return EXIT_USAGE
    if controller not in CHOICES:
        print(f"simulate: unknown controller {controller!r} (watti, reference)", file=sys.stderr)
        return EXIT_USAGE
    result = simulate_run(chosen, plant, CHOICES[controller])
    bound = simulate_run(chosen, plant, "meter_oracle")
    inverter = PRESETS[plant]
    slew = "none" if inverter.slew_w_per_s is None else f"{inverter.slew_w_per_s:g} W/s per phase"
    print(f"scenario {chosen.name}: {chosen.description}")
    print(
        f"plant {plant}: dead time {inverter.dead_time_s * 1000:g} ms, lag {inverter.lag_s * 1000:g} ms,"
        f" slew {slew}; {chosen.duration_s:g} s, target {result.target_w:g} W"
    )
    print()
    rows = [score_row(controller, score(result)), score_row("meter-limited oracle", score(bound))]
    print(format_table(COLUMNS, rows))
    if plot is not None:
        plot.write_text(plot_html(result, bound))
        print(f"\nplot written to {plot}")
    return EXIT_OK


Series = tuple[str, str, Sequence[float]]
"""(label, colour, values) of one line in a chart."""
WIDTH, HEIGHT, MARGIN_LEFT, MARGIN_BOTTOM = 960, 220, 60, 24
PLOT_STEP = 2
"""Plot every n-th trace sample (the trace has one every 10 ms)."""


def _ticks(low: float, high: float) -> list[float]:
    """About five round tick values covering low..high."""
    span = max(high - low, 1e-9)
    raw = span / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [
        k * step for k in range(math.floor(low / step), math.ceil(high / step) + 1) if low <= k * step <= high
    ]


def _chart(title: str, times_s: Sequence[float], series: Sequence[Series]) -> str:
    """One SVG chart: lines over time with axes, ticks and a legend."""
    values = [v for _, _, data in series for v in data]
    low, high = min(values), max(values)
    pad = max((high - low) * 0.05, 10.0)
    low, high = low - pad, high + pad
    t0, t1 = times_s[0], times_s[-1]
    inner_w, inner_h = WIDTH - MARGIN_LEFT - 10, HEIGHT - MARGIN_BOTTOM - 20

    def x(t: float) -> float:
        return MARGIN_LEFT + (t - t0) / max(t1 - t0, 1e-9) * inner_w

    def y(v: float) -> float:
        return 20 + (high - v) / (high - low) * inner_h

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{html.escape(title)}">'
    ]
    parts.append(f'<text x="{MARGIN_LEFT}" y="14" class="title">{html.escape(title)}</text>')
    for tick in _ticks(low, high):
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
            f'<text x="{MARGIN_LEFT - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
    for tick in _ticks(t0, t1):
        parts.append(f'<text x="{x(tick):.1f}" y="{HEIGHT - 6}" text-anchor="middle">{tick:g} s</text>')
    legend_x = MARGIN_LEFT + 20 + 7 * len(title)
    for label, colour, data in series:
        points = " ".join(
            f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times_s[::PLOT_STEP], data[::PLOT_STEP], strict=True)
        )
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.2"/>')
        parts.append(f'<text x="{legend_x}" y="14" style="fill:{colour}">{html.escape(label)}</text>')
        legend_x += 16 + 6 * len(label)
    parts.append("</svg>")
    return "\n".join(parts)


def plot_html(result: RunResult, bound: RunResult | None = None) -> str:
    """A self-contained HTML page (inline SVG, no scripts) of grid vs target, battery and setpoint."""
    trace, times = result.trace, result.trace.times_s
    grid: list[Series] = [
        ("target", "#888", [result.target_w] * len(times)),
        (f"grid ({result.controller})", "#c0392b", trace.grid_w),
    ]
    if bound is not None and len(bound.trace.grid_w) == len(times):
        grid.insert(1, ("grid (meter-limited oracle)", "#2e86c1", bound.trace.grid_w))
    charts = [
        _chart("Grid power, total (W, + = import)", times, grid),
        _chart("Battery power, total (W, + = charging)", times, [("battery", "#27ae60", trace.battery_w)]),
        _chart("Setpoint at the inverter, total (W)", times, [("setpoint", "#8e44ad", trace.setpoint_w)]),
    ]
    figures = score(result)
    table = format_table(COLUMNS, [score_row(result.controller, figures)])
    title = f"{result.scenario.name} on the {result.plant} plant, controller {result.controller}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; max-width: 1000px; }}
svg text {{ font-size: 11px; fill: #333; }} svg text.title {{ font-weight: bold; }}
svg .grid {{ stroke: #e4e4e4; }} pre {{ font-size: 12px; overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(result.scenario.description)}</p>
<pre>{html.escape(table)}</pre>
{"".join(charts)}
</body></html>
"""
