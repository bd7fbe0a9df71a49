"""Every benchmark of issue 7 in one pass, summarised as one JSON object that can be tracked over time.

Runs, each as its own process (so one benchmark's memory and threads never colour another's):
bench/etcd_baseline.py, bench/publish.py, bench/publish_writer.py, bench/agent_bootstrap.py, bench/propagation.py,
bench/end_to_end.py and bench/fanout.py, passing --quick on. With --repeat N each runs N times and every figure is
the median of its runs; each ratio is always computed within one run (the bare baseline it divides by is measured
in that same run), then the median of those ratios is taken.

The summary holds at least: bootstrap_ratio, rss_bytes_per_entry, propagation_p99_ratio_325,
propagation_keeps_up_3250, publish_ratio, big_service_ingest_ms, fanout_p99_ratio, the machine, the bare-etcd
baselines those were divided by (`baselines`), the targets (`targets`, `meets`), and every benchmark's own
JSON (`runs`). A benchmark that fails leaves its figures null, its error in `errors`, and the exit status 1.

    python bench/run_all.py [--quick] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import harness

BENCH = pathlib.Path(__file__).resolve().parent
BENCHMARKS = ("etcd_baseline", "publish", "publish_writer", "agent_bootstrap", "propagation", "end_to_end", "fanout")

Figure = Callable[[dict[str, Any]], Any]


def _rate(result: dict[str, Any], rate: int, key: str) -> Any:
    return next(row[key] for row in result["rates"] if row["rate_per_s"] == rate)


# (summary key, benchmark, how to read it from that benchmark's JSON)
FIGURES: tuple[tuple[str, str, Figure], ...] = (
    ("bootstrap_ratio", "agent_bootstrap", lambda r: r["bootstrap_ratio"]),
    ("rss_bytes_per_entry", "agent_bootstrap", lambda r: r["rss_bytes_per_entry"]),
    ("propagation_p99_ratio_325", "propagation", lambda r: _rate(r, 325, "p99_ratio")),
    ("propagation_keeps_up_3250", "propagation", lambda r: _rate(r, 3250, "keeps_up")),
    ("publish_ratio", "publish", lambda r: r["ratio_to_baseline"]),
    ("big_service_ingest_ms", "agent_bootstrap", lambda r: r["big_service_ingest_ms"]),
    ("fanout_p99_ratio", "fanout", lambda r: r["fanout_p99_ratio"]),
    # Context for the headline figures.
    ("propagation_p50_ratio_325", "propagation", lambda r: _rate(r, 325, "p50_ratio")),
    ("propagation_p99_ratio_3250", "propagation", lambda r: _rate(r, 3250, "p99_ratio")),
    ("big_service_put_to_cache_ms", "agent_bootstrap", lambda r: r["big_service_put_to_cache_p50_ms"]),
    ("cached_entries", "agent_bootstrap", lambda r: r["cached_entries"]),
    ("fanout_capacity_per_s", "fanout", lambda r: r["capacity_per_s"]),
    ("publish_writer_ratio", "publish_writer", lambda r: r["ratio_store_to_bare"]),
    ("end_to_end_p50_ms", "end_to_end", lambda r: r["file_to_agent_p50_ms"]),
    ("end_to_end_p99_ms", "end_to_end", lambda r: r["file_to_agent_p99_ms"]),
)
BASELINES: tuple[tuple[str, str, Figure], ...] = (
    ("bootstrap_bare_range_read_s", "agent_bootstrap", lambda r: r["bare_read_s"]),
    ("bootstrap_keys", "agent_bootstrap", lambda r: r["keys"]),
    ("big_service_bare_put_to_watch_ms", "agent_bootstrap", lambda r: r["bare_big_put_to_watch_p50_ms"]),
    ("propagation_bare_p50_ms_325", "propagation", lambda r: _rate(r, 325, "bare_p50_ms")),
    ("propagation_bare_p99_ms_325", "propagation", lambda r: _rate(r, 325, "bare_p99_ms")),
    ("propagation_bare_p50_ms_3250", "propagation", lambda r: _rate(r, 3250, "bare_p50_ms")),
    ("propagation_bare_p99_ms_3250", "propagation", lambda r: _rate(r, 3250, "bare_p99_ms")),
    ("publish_bare_batched_puts_per_s", "publish", lambda r: r["baseline_batched_puts_per_s"]),
    ("fanout_single_agent_p99_ms", "fanout", lambda r: r["single_p99_ms"]),
    ("etcd_batched_puts_per_s", "etcd_baseline", lambda r: r["batched_puts_per_s"]),
    ("etcd_range_read_keys_per_s", "etcd_baseline", lambda r: r["range_read_keys_per_s"]),
    ("etcd_watch_events_per_s", "etcd_baseline", lambda r: r["watch_events_per_s"]),
    ("etcd_put_watch_p50_ms", "etcd_baseline", lambda r: r["put_watch_p50_ms"]),
    ("etcd_put_watch_p99_ms", "etcd_baseline", lambda r: r["put_watch_p99_ms"]),
)
# (summary key, comparison, bound): the targets of issue 7.
TARGETS: dict[str, tuple[str, float | bool]] = {
    "bootstrap_ratio": ("<=", 1.5),
    "rss_bytes_per_entry": ("<=", 500),
    "propagation_p99_ratio_325": ("<=", 2.0),
    "propagation_keeps_up_3250": ("==", True),
    "publish_ratio": (">=", 0.7),
    "big_service_ingest_ms": ("<=", 10.0),
    "fanout_p99_ratio": ("<=", 3.0),
}


def run_benchmark(name: str, quick: bool, out: pathlib.Path) -> tuple[dict[str, Any] | None, str]:
    """Run bench/<name>.py; (its JSON, "") or (None, why it failed). Its table goes to our stdout."""
    command = [sys.executable, str(BENCH / f"{name}.py"), "--json", str(out), *(["--quick"] if quick else [])]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    done = subprocess.run(command, check=False)
    print(f"=== {name}: exit {done.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    if done.returncode != 0:
        return None, f"{name} exited with status {done.returncode}"
    return json.loads(out.read_text()), ""


def median(values: list[Any]) -> Any:
    """The median of numbers; for booleans, true only if every run says true."""
    if not values:
        return None
    if all(isinstance(value, bool) for value in values):
        return all(values)
    return statistics.median(values)


def meets(value: Any, comparison: str, bound: float | bool) -> bool | None:
    """Whether value meets the target; None when there is no value."""
    if value is None:
        return None
    if comparison == "<=":
        return bool(value <= bound)
    if comparison == ">=":
        return bool(value >= bound)
    return bool(value == bound)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The summary figures (medians over runs) and baselines."""

    def collect(table: tuple[tuple[str, str, Figure], ...]) -> dict[str, Any]:
        found = {}
        for key, benchmark, read in table:
            values = []
            for result in runs.get(benchmark, []):
                try:
                    values.append(read(result))
                except (KeyError, StopIteration, TypeError):
                    continue  # that run lacks the figure (e.g. a benchmark's JSON layout changed)
            found[key] = median(values)
        return found

    figures = collect(FIGURES)
    return {
        **figures,
        "baselines": collect(BASELINES),
        "targets": {key: f"{comparison} {bound}" for key, (comparison, bound) in TARGETS.items()},
        "meets": {key: meets(figures[key], *target) for key, target in TARGETS.items()},
    }


def report(summary: dict[str, Any]) -> None:
    """Print the headline figures against their targets."""
    rows = []
    for key, target in summary["targets"].items():
        verdict = {True: "meets", False: "MISSES", None: "no figure"}[summary["meets"][key]]
        value = summary[key]
        shown = value if not isinstance(value, float) else round(value, 3)
        rows.append((key, f"{shown}", f"target {target}: {verdict}"))
    harness.print_table(f"issue 7 summary ({summary['repeat']} run(s) each, medians)", rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each benchmark's short pass")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each benchmark (figures are medians)")
    parser.add_argument("--json", type=pathlib.Path, help="write the summary here")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in BENCHMARKS}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clustermesh-bench-") as tmp:
        for attempt in range(args.repeat):
            for name in BENCHMARKS:
                result, error = run_benchmark(name, args.quick, pathlib.Path(tmp) / f"{name}-{attempt}.json")
                if result is None:
                    errors.append(error)
                else:
                    runs[name].append(result)
    summary = {"quick": args.quick, "repeat": args.repeat, **summarise(runs), "errors": errors, "runs": runs}
    report(summary)
    harness.write_json(args.json, {"benchmark": "run_all", **summary})
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
