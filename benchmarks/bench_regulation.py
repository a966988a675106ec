"""Regulation: our controller vs the reference law vs the meter-limited and ideal oracles.

Every bundled scenario (except the looping `demo`) on every plant preset, in virtual time
(`watti_watchman.sim.virtual`): the real `ChargeController` task, its meters read by the modelled
production poller on meter windows that wander, jitter and (`--timing disturbed`, the default)
jump every 2–4 s, with 2 ms reads and a 5 ms write latency, the reference loop (blind 100 ms
polls at random phases, averaged over `--seeds` phase draws), and both oracles. Prints two
Markdown tables (energy and dynamics) and a verdict on the issue's targets: exported energy
<= 1.25 × the meter-limited oracle and below the reference everywhere, no oscillation (no
segment with 2 or more band reversals).

Run: `uv run python -m benchmarks.bench_regulation [--seeds N] [--set key=value ...]`
(`--set` overrides a `ChargeControllerConfig` field for our controller, e.g. `--set deadband=0`).
"""

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from benchmarks.support import print_table
from watti_watchman.config.services import ChargeControllerConfig
from watti_watchman.sim.meter_clock import DISTURBED, FIELD, PERFECT, MeterTiming
from watti_watchman.sim.plant import PRESETS
from watti_watchman.sim.scenario import bundled_scenarios, load_scenario
from watti_watchman.sim.score import Score, score
from watti_watchman.sim.virtual import RunOptions, default_controller_config, simulate_run

EXPORT_RATIO_TARGET = 1.25
EXPORT_FLOOR_WH = 0.005
"""Exports below this (18 J) are rounding; a ratio against them is meaningless (shown as —)."""
SKIPPED = {"demo"}


@dataclass(frozen=True)
class Row:
    """Scores of one scenario × plant: ours, the reference (per seed), both oracles."""

    scenario: str
    plant: str
    ours: Score
    reference: list[Score]
    meter_oracle: Score
    ideal_oracle: Score

    def reference_mean(self, field: str) -> float:
        """The mean of a reference figure over the phase draws."""
        return statistics.fmean(float(getattr(s, field)) for s in self.reference)

    @property
    def oracle_ratio(self) -> float | None:
        """Our exported energy / the meter-limited oracle's; None when the oracle exports ~nothing."""
        oracle_wh = self.meter_oracle.export_wh
        return None if oracle_wh < EXPORT_FLOOR_WH else self.ours.export_wh / oracle_wh

    @property
    def reference_ratio(self) -> float | None:
        """Our exported energy / the reference's (mean over phase draws); None below the floor."""
        reference_wh = self.reference_mean("export_wh")
        return None if reference_wh < EXPORT_FLOOR_WH else self.ours.export_wh / reference_wh

    @property
    def within_oracle_target(self) -> bool:
        """Exported <= 1.25 × the meter-limited oracle, or both below the floor."""
        oracle_wh = self.meter_oracle.export_wh
        return (
            self.ours.export_wh <= EXPORT_RATIO_TARGET * oracle_wh
            or max(self.ours.export_wh, oracle_wh) < EXPORT_FLOOR_WH
        )

    @property
    def below_reference(self) -> bool:
        """Exported less than the reference, or both below the floor."""
        reference_wh = self.reference_mean("export_wh")
        return self.ours.export_wh < reference_wh or max(self.ours.export_wh, reference_wh) < EXPORT_FLOOR_WH

    @property
    def ringing(self) -> bool:
        """Two or more band reversals in a segment, more than the meter-limited oracle shows there."""
        return self.ours.reversals >= 2 and self.ours.reversals > self.meter_oracle.reversals


TIMINGS = {"disturbed": DISTURBED, "field": FIELD, "perfect": PERFECT}
"""Meter windows: the field's wander and jitter, plus (disturbed) a phase jump every 2–4 s;
`perfect` is an exact 200 ms grid (steps then fall on window boundaries)."""


def measure(
    scenario: str, plant: str, config: ChargeControllerConfig, seeds: int, timing: MeterTiming
) -> Row:
    """Run all four controllers on one scenario and plant, the meters' windows moving as `timing` says."""
    chosen = load_scenario(scenario)
    options = RunOptions(timing=timing)
    return Row(
        scenario,
        plant,
        score(simulate_run(chosen, plant, "watti", config, options)),
        [
            score(simulate_run(chosen, plant, "reference", options=RunOptions(seed=seed, timing=timing)))
            for seed in range(1, seeds + 1)
        ],
        score(simulate_run(chosen, plant, "meter_oracle", options=options)),
        score(simulate_run(chosen, plant, "ideal_oracle", options=options)),
    )


def _s(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _settling(result: Score) -> str:
    return _s(result.settling_s) + ("*" if result.unsettled else "")


def energy_table(rows: Sequence[Row]) -> None:
    """Exported/imported Wh per controller and the two ratios."""
    headers = [
        "scenario",
        "plant",
        "exp ours",
        "exp ref",
        "exp meter-oracle",
        "exp ideal",
        "ours/meter-oracle",
        "ours/ref",
        "imp ours",
        "imp ref",
        "imp meter-oracle",
        "imp ideal",
    ]
    print_table(
        headers,
        [
            [
                r.scenario,
                r.plant,
                f"{r.ours.export_wh:.3f}",
                f"{r.reference_mean('export_wh'):.3f}",
                f"{r.meter_oracle.export_wh:.3f}",
                f"{r.ideal_oracle.export_wh:.3f}",
                _s(r.oracle_ratio, 2),
                _s(r.reference_ratio, 2),
                f"{r.ours.import_wh:.3f}",
                f"{r.reference_mean('import_wh'):.3f}",
                f"{r.meter_oracle.import_wh:.3f}",
                f"{r.ideal_oracle.import_wh:.3f}",
            ]
            for r in rows
        ],
    )


def dynamics_table(rows: Sequence[Row]) -> None:
    """RMS error, settling, overshoot, reversals, steady-state error (mean grid − target over the
    final 20 s of a quiet tail) and writes: ours / reference / meter oracle."""
    headers = [
        "scenario",
        "plant",
        "RMS W ours/ref/oracle/ideal",
        "settling s ours/ref/oracle",
        "overshoot W ours/ref/oracle",
        "reversals ours/ref/oracle",
        "steady W ours/ref/oracle",
        "writes ours/ref",
    ]
    table = []
    for r in rows:
        worst_ref = max(r.reference, key=lambda s: s.reversals)
        table.append(
            [
                r.scenario,
                r.plant,
                f"{r.ours.rms_w:.0f} / {r.reference_mean('rms_w'):.0f} / {r.meter_oracle.rms_w:.0f}"
                f" / {r.ideal_oracle.rms_w:.0f}",
                f"{_settling(r.ours)} / {_settling(worst_ref)} / {_settling(r.meter_oracle)}",
                " / ".join(
                    "—" if s.overshoot_w is None else f"{s.overshoot_w:.0f}"
                    for s in (r.ours, worst_ref, r.meter_oracle)
                ),
                f"{r.ours.reversals} / {worst_ref.reversals} / {r.meter_oracle.reversals}",
                " / ".join(
                    _s(value, 0)
                    for value in (
                        r.ours.steady_error_w,
                        None if r.reference[0].steady_error_w is None else r.reference_mean("steady_error_w"),
                        r.meter_oracle.steady_error_w,
                    )
                ),
                f"{r.ours.writes} / {r.reference_mean('writes'):.0f}",
            ]
        )
    print_table(headers, table)


def verdict(rows: Sequence[Row]) -> None:
    """Which targets hold, and where they do not."""
    over = [r for r in rows if not r.within_oracle_target]
    not_below = [r for r in rows if not r.below_reference]
    ringing = [r for r in rows if r.ringing]
    total = len(rows)
    print(f"\nexport <= {EXPORT_RATIO_TARGET} × meter-limited oracle: {total - len(over)}/{total}")
    for r in over:
        print(f"  miss: {r.scenario} {r.plant} ({r.ours.export_wh:.3f} vs {r.meter_oracle.export_wh:.3f} Wh)")
    print(f"export below the reference: {total - len(not_below)}/{total}")
    for r in not_below:
        reference_wh = r.reference_mean("export_wh")
        print(f"  miss: {r.scenario} {r.plant} ({r.ours.export_wh:.3f} vs {reference_wh:.3f} Wh)")
    print(
        f"no oscillation (no segment with >= 2 reversals beyond the oracle's): {total - len(ringing)}/{total}"
    )
    for r in ringing:
        print(f"  miss: {r.scenario} {r.plant} ({r.ours.reversals} vs {r.meter_oracle.reversals} reversals)")


def _override(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def main() -> None:
    """Parse options, run every scenario × plant, print the tables and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=5, help="reference phase draws (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], type=_override, metavar="KEY=VALUE")
    parser.add_argument("--scenario", action="append", help="only these scenarios")
    parser.add_argument("--plant", action="append", choices=list(PRESETS), help="only these plants")
    parser.add_argument("--timing", choices=list(TIMINGS), default="disturbed", help="meter windows")
    args = parser.parse_args()
    config = default_controller_config(**dict(args.set))
    scenarios = args.scenario or [name for name in bundled_scenarios() if name not in SKIPPED]
    plants = args.plant or list(PRESETS)
    started = time.process_time()
    timing = TIMINGS[args.timing]
    rows = [measure(name, plant, config, args.seeds, timing) for name in scenarios for plant in plants]
    changed = {key: getattr(config, key) for key, _ in args.set}
    print(f"our controller: original example config{f', {changed}' if changed else ''}\n")
    energy_table(rows)
    print()
    dynamics_table(rows)
    verdict(rows)
    print(f"\n{len(rows)} scenario × plant pairs in {time.process_time() - started:.1f} s CPU")


if __name__ == "__main__":
    main()
