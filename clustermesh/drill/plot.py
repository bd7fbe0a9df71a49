"""The timeline of a drill as a PNG: one lane per agent, seconds since the fault on the x axis.

Each lane shows the agent's own phases as markers, one colour and shape per kind of event (named in the legend
under the lanes, rather than labelled in place: phases crowd together at the heal); the stretch during which it
had lost the broken cluster (peer.disconnected → peer.ready) as a red bar, and the stretch during which its DNS
sent clients elsewhere (dns.failover → dns.restored) as an orange bar. The fault itself (fault.injected →
fault.healed) is shaded across every lane, and the drill's own events (and a restarted component's) sit in the
top lane. Drawn from a Report only (a saved report can be drawn again), with matplotlib's Agg canvas: no display,
no pyplot global state.
"""

from __future__ import annotations

import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from clustermesh.drill import report, timeline

EventName = timeline.EventName

_LANE_HEIGHT = 0.9
_WIDTH = 11.0
_LEGEND_HEIGHT = 1.0
# (colour, marker) per event; events not listed are drawn as small grey dots.
_STYLES: dict[str, tuple[str, str]] = {
    EventName.FAULT_INJECTED.value: ("#c0392b", "X"),
    EventName.FAULT_HEALED.value: ("#27ae60", "P"),
    EventName.COMPONENT_RESTARTED.value: ("#2c3e50", "s"),
    EventName.ETCD_COMPACTED.value: ("#8e44ad", "D"),
    EventName.PEER_DISCONNECTED.value: ("#e74c3c", "v"),
    EventName.PEER_RECONNECTED.value: ("#f39c12", "^"),
    EventName.PEER_READY.value: ("#2ecc71", "^"),
    EventName.PEER_REVOKED.value: ("#8e44ad", "<"),
    EventName.PEER_RESTORED.value: ("#9b59b6", ">"),
    EventName.DNS_FAILOVER.value: ("#d35400", "o"),
    EventName.DNS_RESTORED.value: ("#16a085", "o"),
    EventName.CACHE_CONVERGED.value: ("#2980b9", "*"),
    EventName.AGENT_RESTARTED.value: ("#000000", "s"),
    EventName.AGENT_UNREACHABLE.value: ("#7f8c8d", "s"),
}
_OTHER = ("#95a5a6", ".")
# Churn and verdict events are in the table; on the plot they only crowd the drill's lane.
_NOT_DRAWN = frozenset({EventName.CHURN_STARTED.value, EventName.CHURN_STOPPED.value, EventName.VERDICT.value})
_FAULT_COLOR = "#f5b7b1"
_LOST_COLOR = "#e74c3c"
_FAILOVER_COLOR = "#e67e22"


def _size(marker: str) -> float:
    # A star of the same size looks half as big as the other markers.
    return 11.0 if marker == "*" else 8.0


def _spans(entries: list[report.TimelineEntry], start: str, end: str, end_at: float) -> list[tuple[float, float]]:
    """[start, end) intervals of one lane; an interval never closed runs to end_at."""
    spans: list[tuple[float, float]] = []
    opened: float | None = None
    for entry in entries:
        if entry.event == start and opened is None:
            opened = entry.t
        elif entry.event == end and opened is not None:
            spans.append((opened, entry.t))
            opened = None
    if opened is not None:
        spans.append((opened, end_at))
    return spans


def draw(result: report.Report) -> Figure:
    """The figure of a report (lanes: the drill, then every agent in mesh order; the legend below)."""
    lanes = [timeline.DRILL, *(agent.agent for agent in result.agents)]
    entries = [e for e in result.timeline if e.event not in _NOT_DRAWN]
    times = [e.t for e in entries] or [0.0]
    left, right = min([*times, 0.0]) - 0.3, max(times) + 0.3
    figure = Figure(figsize=(_WIDTH, _LEGEND_HEIGHT + _LANE_HEIGHT * len(lanes)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(lanes), 1, sharex=True, squeeze=False)[:, 0]
    injected = next((e.t for e in result.timeline if e.event == EventName.FAULT_INJECTED.value), None)
    healed = next((e.t for e in result.timeline if e.event == EventName.FAULT_HEALED.value), None)
    drawn: dict[str, tuple[str, str]] = {}
    for ax, lane in zip(axes, lanes, strict=True):
        own = [e for e in entries if e.agent == lane or (lane == timeline.DRILL and e.agent not in lanes)]
        if injected is not None:
            ax.axvspan(injected, healed if healed is not None else right, color=_FAULT_COLOR, alpha=0.35, lw=0)
        for start, end in _spans(own, EventName.PEER_DISCONNECTED.value, EventName.PEER_READY.value, right):
            ax.broken_barh([(start, end - start)], (0.12, 0.22), color=_LOST_COLOR, alpha=0.55)
        for start, end in _spans(own, EventName.DNS_FAILOVER.value, EventName.DNS_RESTORED.value, right):
            ax.broken_barh([(start, end - start)], (0.66, 0.22), color=_FAILOVER_COLOR, alpha=0.55)
        for entry in own:
            color, marker = _STYLES.get(entry.event, _OTHER)
            drawn[entry.event] = (color, marker)
            ax.plot([entry.t], [0.5], marker=marker, color=color, markersize=_size(marker), linestyle="none",
                    markeredgecolor="white", markeredgewidth=0.6)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_ylabel(lane, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xlim(left, right)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("seconds since the fault")
    handles: list[Line2D | Patch] = [
        Patch(color=_FAULT_COLOR, alpha=0.6, label="the fault"),
        Patch(color=_LOST_COLOR, alpha=0.55, label="cluster lost (disconnected → ready)"),
        Patch(color=_FAILOVER_COLOR, alpha=0.55, label="DNS failed over (failover → restored)"),
        *(Line2D([], [], marker=marker, color=color, linestyle="none", markersize=_size(marker), label=event)
          for event, (color, marker) in drawn.items()),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle(f"clustermesh drill {result.scenario} on {result.cluster}: {result.verdict} "
                    f"({result.stale} stale, {result.missing} missing)", fontsize=10)
    figure.tight_layout(rect=(0, _LEGEND_HEIGHT / (_LEGEND_HEIGHT + _LANE_HEIGHT * len(lanes)), 1, 1))
    return figure


def write(result: report.Report, path: pathlib.Path) -> None:
    """Draw the report into a PNG at path (OSError if it cannot be written)."""
    draw(result).savefig(path, format="png", dpi=110)
