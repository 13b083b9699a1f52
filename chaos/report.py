"""Chaos run reports: ``reports/chaos/<scenario>/report.json``, ``report.md``, ``timeline.png``.

``report.json`` holds everything (checks, per-destination table stats, executed timeline
with actual times, final metrics, the 1 Hz samples); ``report.md`` is the human summary
(invariants table: expected, observed, pass/fail; key metrics); ``timeline.png`` plots the
flows/s stored per destination (from the servers' row counts, the ground truth) and the
consumer lag, with the fault windows shaded and labelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaos import alerts
from chaos.results import RunResult, Sample, metric_value, reported_loss
from chaos.scenario import MULTI_DC, Action, Scenario, format_duration, planned_windows
from outlet import metrics as names
from teststack.series import rate_series

COLORS = {"local": "tab:blue", "azure": "tab:orange"}
FAULT_COLORS = ["tab:red", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"]


def actual_windows(result: RunResult) -> list[tuple[float, float | None, str]]:
    """Fault windows from the executed timeline (actual times): a fault starts when its
    action started and ends when the healing action finished; restarts that took time
    (Kafka, ClickHouse, outlet) are windows from start to end."""
    starts = ("disable_proxy", "add_toxic", "kill_outlet", "stop_outlet", "pause_outlet")
    instant = ("restart_clickhouse", "restart_kafka", "restart_outlet")
    acts = [Action(e.started if e.action in starts else e.ended, e.action, dict(e.params),
                   e.label, "") for e in result.events if e.action not in instant]
    end = result.info.get("load_end_s") or (result.samples[-1].t if result.samples else 0)
    out: list[tuple[float, float | None, str]] = []
    for a, b, label in planned_windows(acts):
        out.append((a, (end if b == float("inf") else b), label))
    for e in result.events:
        if e.action in instant:
            out.append((e.started, e.ended if e.ended - e.started > 0.5 else None, e.label))
    return sorted(out, key=lambda w: w[0])


def _rates(samples: list[Sample], dest: str, span: float = 3.0
           ) -> tuple[list[float], list[float]]:
    """Stored flows/s from the row counts, over a sliding ``span`` (batches arrive in
    steps; a 1 s derivative would be all spikes)."""
    return rate_series([s.t for s in samples], [s.rows.get(dest) for s in samples], span)


def plot_timeline(result: RunResult, sc: Scenario, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result.samples
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    verdict = "PASS" if result.passed else "FAIL"
    fig.suptitle(f"chaos scenario {sc.name}: {verdict}  (load {sc.load.rate:g} flows/s, "
                 f"time scale {sc.time_scale:g})", fontsize=13,
                 color="tab:green" if result.passed else "tab:red")
    windows = actual_windows(result)
    labels = list(dict.fromkeys(w[2] for w in windows))  # same label, same colour
    colors = {lb: FAULT_COLORS[i % len(FAULT_COLORS)] for i, lb in enumerate(labels)}
    for ax in (ax1, ax2):
        for a, b, label in windows:
            color = colors[label]
            if b is None:
                ax.axvline(a, color=color, linestyle="--", linewidth=1.5)
            else:
                ax.axvspan(a, b, color=color, alpha=0.12)
    # Rates stored per destination (multi-dc: per view).
    for d in sc.views:
        ts, rs = _rates(samples, d)
        role = "primary" if sc.metric_destination(d) == "primary" else "additional"
        ax1.plot(ts, rs, label=f"{d} ({role}) stored flows/s (3 s avg)", color=COLORS.get(d),
                 linewidth=2.6 if role == "primary" else 1.6,
                 linestyle="-" if role == "primary" else "--")
    ts = [s.t for s in samples]
    ax1.step(ts, [s.rate for s in samples], where="post", color="gray", linestyle=":",
             label="offered load flows/s")
    ax1.set_ylabel("flows/s stored")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ymax = ax1.get_ylim()[1]
    for i, label in enumerate(labels):  # each label once, at its first window
        a = next(w[0] for w in windows if w[2] == label)
        y = ymax * (0.97 - 0.08 * (i % 4))
        ax1.text(a, y, " " + label[:48], color=colors[label], fontsize=8, va="top",
                 ha="left", clip_on=True)
    # Lag.
    lag_t = [s.t for s in samples if s.lag is not None]
    lag_v = [s.lag for s in samples if s.lag is not None]
    ax2.plot(lag_t, lag_v, ".-", color="tab:red", label="consumer lag (outlet metric, msgs)",
             linewidth=1.2, markersize=3)
    primaries = ([(f"local-{dc}", dc) for dc in sc.view_datacenters("central")]
                 if sc.topology == MULTI_DC else [(sc.outlet.destinations[0], "")])
    for primary, dc in primaries:
        backlog = [(s.t, max(0, (s.produced_by.get(dc, 0) if dc else s.produced)
                             - (s.rows.get(primary) or 0)))
                   for s in samples if s.rows.get(primary) is not None]
        if backlog:
            ax2.plot([b[0] for b in backlog], [b[1] for b in backlog], alpha=0.6,
                     label=f"end-to-end backlog on {primary} (produced - stored)")
    down = [s.t for s in samples if not s.outlet_up]
    if down:
        ax2.plot(down, [0] * len(down), "x", color="black", label="outlet down (no metrics)")
    ax2.set_ylabel("messages / flows behind")
    ax2.set_xlabel("seconds since load start")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="upper left", fontsize=8, framealpha=0.9)
    load_end = result.info.get("load_end_s")
    if load_end:
        for ax in (ax1, ax2):
            ax.axvline(load_end, color="gray", linewidth=1)
        ax2.text(load_end, ax2.get_ylim()[1] * 0.95, " load stops", fontsize=8, color="gray",
                 va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(result: RunResult, sc: Scenario) -> str:
    info = result.info
    lines = [
        f"# Chaos scenario `{sc.name}`: {'PASS' if result.passed else 'FAIL'}",
        "",
    ]
    if sc.description:
        lines += [sc.description, ""]
    lines += [
        f"- load: {sc.load.rate:g} flows/s for {format_duration(sc.load.duration)} "
        f"(time scale {sc.time_scale:g}); produced {info.get('produced', '?')} unique flows",
        f"- topic `{info.get('topic')}`, consumer group `{info.get('consumer_group')}`, "
        f"run id {info.get('run_id', info.get('run_ids'))}",
        f"- wall time {info.get('wall_s')} s; quiet {info.get('quiesce_s', '?')} s after "
        "the load stopped",
        *([f"- outlet log: `{info.get('outlet_log')}`"] if "outlet_log" in info else
          [f"- outlet log ({dc}): `{path}`" for dc, path in info.get("outlet_logs", {}).items()]),
    ]
    lines += _rate_lines(info)
    if info.get("healed_at_end"):
        lines.append(f"- still faulty when the load ended, healed by the runner: "
                     f"{', '.join(info['healed_at_end'])}")
    if result.error:
        lines += ["", "**Harness error** (the run could not be completed):", "", "```",
                  result.error.strip()[-4000:], "```"]
    lines += ["", "## Invariants", "", "| invariant | expected | observed | result |",
              "|---|---|---|---|"]
    for c in result.checks:
        lines.append(f"| {_md_escape(c.name)} | {_md_escape(c.expected)} | "
                     f"{_md_escape(c.observed)} | {'pass' if c.passed else '**FAIL**'} |")
    lines += ["", "## Destinations", "",
              "| destination | rows | distinct flows | duplicates | missing | reported lost "
              "(retries_exceeded, spool drops included) | flows written (metric) |",
              "|---|---|---|---|---|---|---|"]

    for d, t in result.destinations.items():
        label = sc.metric_destination(d)
        whose = [{"dc": dc} for dc in sc.view_datacenters(d)] if sc.topology == MULTI_DC \
            else [{}]
        lost = sum(reported_loss(result.metrics, label, **w) for w in whose)
        written = sum(metric_value(result.metrics, names.DESTINATION_FLOWS_WRITTEN_TOTAL,
                                   destination=label, **w) for w in whose)
        lines.append(f"| {d} ({label}) | {t['rows']} | {t['distinct_flows']} | "
                     f"{t['duplicates']} | {t['missing']} | {lost:g} | {written:g} |")
    lines += ["", "## Key metrics (summed over outlet restarts)", ""]
    key = [k for k in sorted(result.metrics)
           if k.partition("{")[0] in KEY_METRICS and result.metrics[k] != 0]
    if key:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| `{_md_escape(k)}` | {result.metrics[k]:g} |" for k in key]
    else:
        lines.append("(none)")
    lines += ["", "## Timeline (actual times)", "", "| planned | started | took | action | ok |",
              "|---|---|---|---|---|"]
    for e in result.events:
        lines.append(f"| {e.at:.1f}s | {e.started:.1f}s | {e.ended - e.started:.1f}s | "
                     f"{e.action}: {_md_escape(e.label)} | "
                f"{'yes' if e.ok else _md_escape(e.error)} |")
    lines += alerts.render_markdown(info.get("alerts"))
    lines += ["", "![timeline](timeline.png)", ""]
    return "\n".join(lines)


def _rate_lines(info: dict[str, Any]) -> list[str]:
    """Where the load rate came from and what the producer really offered."""
    origin = info.get("rate_origin") or {}
    offered = info.get("offered_flows_per_s")
    out = []
    if origin.get("capacity_flows_per_s"):
        drain = origin.get("drain") or {}
        shape = (f" into {' + '.join(drain['destinations'])} in {drain['batch_size']:,}-flow "
                 "batches" if drain.get("destinations") else "")
        produced = origin.get("backlog_produce_flows_per_s")
        live = (f" and the producer's {produced:,} flows/s, time per flow added" if produced
                and drain.get("destinations") else "")
        out.append(f"- rate: {origin['fraction']:g} x {origin['capacity_flows_per_s']:,} "
                   f"flows/s (the calibration: make bench-outlet's drain{shape}, "
                   f"{drain.get('steady_flows_per_s', 0):,} flows/s steady{live}) instead of "
                   f"the file's {origin['file_rate']:g}")
    elif origin:
        out.append(f"- rate: {origin.get('rate')} flows/s ({origin.get('source')}) instead "
                   f"of the file's {origin.get('file_rate')}")
    if origin.get("lag_not_checked"):
        out.append("- not checked at this rate (the fault stops the primary; its catch-up "
                   "takes about as long as the fault at half capacity): lag "
                   + "; ".join(origin["lag_not_checked"]))
    if offered and info.get("rate"):
        out.append(f"- offered: {offered:,} flows/s ({100 * offered / info['rate']:.1f}% of "
                   "the target rate)")
    return out


def summary_figures(info: dict[str, Any]) -> dict[str, Any]:
    """The rate part of a scenario summary: target, offered, and the share of capacity."""
    origin = info.get("rate_origin") or {}
    out: dict[str, Any] = {"rate_target": info.get("rate"),
                           "offered_flows_per_s": info.get("offered_flows_per_s")}
    capacity = origin.get("capacity_flows_per_s")
    if capacity and info.get("offered_flows_per_s"):
        out["capacity_flows_per_s"] = capacity
        out["fraction_target"] = origin.get("fraction")
        out["fraction_offered"] = round(info["offered_flows_per_s"] / capacity, 3)
        out["calibration_load_average"] = origin.get("load_average")
    return out


def summary(result: RunResult, sc: Scenario) -> dict[str, Any]:
    """The scenario's figures for ``docs/results/`` (teststack/summary.py): verdict, rates,
    per-destination counts and the invariants; no samples, logs or paths."""
    info = result.info
    return {
        "scenario": sc.name, "passed": result.passed, "time_scale": sc.time_scale,
        **summary_figures(info),
        "produced": info.get("produced"), "load_duration_s": info.get("load_end_s"),
        "wall_s": info.get("wall_s"),
        "destinations": {d: {k: t.get(k) for k in ("rows", "duplicates", "missing")}
                         for d, t in result.destinations.items()},
        "checks": [{"check": c.name, "expected": c.expected, "observed": c.observed,
                    "passed": c.passed} for c in result.checks],
        "error": result.error,
    }


KEY_METRICS = {
    names.DESTINATION_FLOWS_WRITTEN_TOTAL,
    names.DESTINATION_DEDUPLICATED_BATCHES_TOTAL,
    names.DESTINATION_DEDUPLICATED_FLOWS_TOTAL,
    names.DESTINATION_BATCHES_WRITTEN_TOTAL,
    names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL,
    names.DESTINATION_RETRIES_EXCEEDED_BATCHES_TOTAL,
    names.DESTINATION_INSERT_ERRORS_TOTAL,
    names.DESTINATION_RETRIES_TOTAL,
    names.KAFKA_ERRORS_TOTAL,
    names.DECODE_ERRORS_TOTAL,
    names.FLOWS_RECEIVED_TOTAL,
    names.SPOOL_APPENDED_FLOWS_TOTAL,
    names.SPOOL_REPLAYED_FLOWS_TOTAL,
    names.SPOOL_DROPPED_FLOWS_TOTAL,
}


def write_report(result: RunResult, sc: Scenario) -> Path:
    out = result.report_dir
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = result.to_json()
    data["report_dir"] = str(out)
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    try:
        plot_timeline(result, sc, out / "timeline.png")
    except Exception as e:  # a plotting problem must not hide the verdict
        result.info["plot_error"] = f"{type(e).__name__}: {e}"
    (out / "report.md").write_text(render_markdown(result, sc))
    return out
