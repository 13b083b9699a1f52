"""Load and capacity reports: Markdown, JSON and PNG plots (docs/loadtest.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest import harness as h
from teststack.series import rate_series

COLORS = {"local": "tab:blue", "azure": "tab:orange"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if abs(v) < 1000 else f"{v:,.0f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def _finish(plt: Any, fig: Any, ax: Any, path: Path, ylabel: str, title: str,
            legend: str) -> None:
    """Labels, grid, legend, thousands as k; save and close."""
    ax.set_xlabel("seconds")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)
    ax.yaxis.set_major_formatter(lambda v, _p: f"{v / 1000:.0f}k")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(samples: Sequence[h.Sample], destinations: Sequence[str], path: Path,
                    target: Sequence[tuple[float, float]] = (), title: str = "",
                    shade: Sequence[tuple[float, float, str]] = ()) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ts = [s.t for s in samples]
    if target:
        ax.plot([p[0] for p in target], [p[1] for p in target], color="grey", ls="--",
                lw=1.2, label="target (profile)", drawstyle="steps-post")
    t, r = rate_series(ts, [float(s.produced) for s in samples])
    ax.plot(t, r, color="black", lw=1.2, label="offered (Kafka)")
    for d in destinations:
        t, r = rate_series(ts, [s.stored(d) for s in samples], span=3.0)
        ax.plot(t, r, color=COLORS.get(d), lw=1.4, label=f"stored: {d}")
    for a, b, label in shade:
        ax.axvspan(a, b, color="tab:red", alpha=0.08)
        ax.text(a, ax.get_ylim()[1] * 0.97, label, fontsize=7, va="top")
    _finish(plt, fig, ax, path, "flows/s (2 s window)", title or "offered vs stored flows/s",
            "lower right")


def plot_lag(samples: Sequence[h.Sample], destinations: Sequence[str], path: Path,
             title: str = "") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    ts = [s.t for s in samples]
    ax.plot(ts, [s.lag() for s in samples], color="tab:red", lw=1.3,
            label="consumer lag (outlet gauge: high watermark - committed)")
    for d in destinations:
        ax.plot(ts, [max(0.0, s.produced - s.stored(d)) for s in samples],
                color=COLORS.get(d), lw=1, ls=":", label=f"backlog: produced - stored {d}")
    _finish(plt, fig, ax, path, "flows", title or "consumer lag", "upper left")


def plot_latency(insert: dict[str, dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    qs = ["p50", "p90", "p99"]
    width = 0.8 / max(1, len(insert))
    for i, (d, pct) in enumerate(insert.items()):
        xs = [j + i * width for j in range(len(qs))]
        ax.bar(xs, [pct.get(q) or 0 for q in qs], width, color=COLORS.get(d), label=d)
    ax.set_xticks([j + width * (len(insert) - 1) / 2 for j in range(len(qs))], qs)
    ax.set_ylabel("ms")
    ax.set_title("insert latency per destination (outlet histogram)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_load_report(report: dict[str, Any], samples: Sequence[h.Sample], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dests = report.get("destinations") or []
    h.write_json(out / "report.json", report)
    timeline = (report.get("produced") or {}).get("timeline") or []
    t0 = float(report.get("load_start_s", 0.0))
    target = [(t0 + p[0], p[1]) for p in timeline]
    name = report["profile"]["name"]
    if samples:
        plot_throughput(samples, dests, out / "throughput.png", target,
                        f"{name}: offered vs stored flows/s (outlet dual-write)")
        plot_lag(samples, dests, out / "lag.png", f"{name}: consumer lag")
    if report.get("insert_latency_ms"):
        plot_latency(report["insert_latency_ms"], out / "latency.png")
    (out / "report.md").write_text(load_markdown(report))


def load_markdown(r: dict[str, Any]) -> str:
    p = r["profile"]
    rates = r.get("rates") or {}
    prod = r.get("produced") or {}
    lines = [
        f"# Load report: {p['name']} — {'PASS' if r['ok'] else 'FAIL'}",
        "",
        f"{p.get('description', '')}",
        "",
        f"- started {r.get('started_at')}, topic `{r.get('topic')}` "
        f"({r.get('partitions')} partitions), run id {r.get('run_id')}",
        f"- profile: {p['interpolation']} interpolation, {len(p['points'])} points, "
        f"{p['duration']:g} s of profile time replayed in {p['wall-duration']:g} s "
        f"({p['speedup']:g}x; time scale {r.get('time_scale'):g}), rate scale "
        f"{p['rate-scale']:g} (RATE_SCALE {r.get('rate_scale'):g})",
        f"- outlet: dual-write {' + '.join(r.get('destinations') or [])} (first = primary), "
        f"maximum-batch-size {r.get('outlet_batch_size')}, maximum-wait-time "
        f"{r.get('outlet_wait_time')}, direct connections (no Toxiproxy)",
        f"- producer: Locust, {r.get('producer_batch')} flows per request event",
        f"- {r.get('box')}",
        "",
    ]
    if r.get("error"):
        lines += [f"**Error:** `{r['error']}`", ""]
    lines += ["## Flows", "", "| | flows | Bytes sum | distinct ids | duplicates | missing | ok |",
              "|---|---:|---:|---:|---:|---:|:-:|"]
    if prod:
        delivered = prod["failed"] == 0 and prod["undelivered"] == 0
        lines.append(f"| produced (Kafka acks) | {prod['flows']:,} | {prod['bytes_sum']:,} | "
                     f"| | | {'yes' if delivered else 'no'} |")
    for c in r.get("destinations_check") or []:
        lines.append(f"| stored: {c['destination']} | {c['rows']:,} | {c['bytes_sum']:,} | "
                     f"{c['distinct']:,} | {c['duplicates']:,} | {c['missing']:,} | "
                     f"{'yes' if c['ok'] else '**NO**'} |")
    lines += ["", "## Rates", "", "| metric | value |", "|---|---:|"]
    labels = {
        "target_mean": "target mean flows/s (profile)", "target_peak": "target peak flows/s",
        "offered_mean": "offered mean flows/s (produced / load time)",
        "offered_peak": "offered peak flows/s (2 s window)",
        "stored_peak_local": "stored peak flows/s: local",
        "stored_peak_azure": "stored peak flows/s: azure",
        "lag_max": "max consumer lag (messages)",
        "backlog_max": "max backlog during load (produced - stored primary)",
        "outlet_cpu_s": "outlet CPU seconds", "outlet_cores_mean": "outlet cores (mean)",
        "outlet_cpu_us_per_flow": "outlet CPU µs per flow",
    }
    for k, v in rates.items():
        lines.append(f"| {labels.get(k, k)} | {_fmt(v)} |")
    lines += ["", "![throughput](throughput.png)", "", "![lag](lag.png)", "",
              "## Insert latency (outlet histogram `outlet_destination_insert_duration_seconds`)",
              "", "| destination | inserts | p50 ms | p90 ms | p99 ms | mean ms |",
              "|---|---:|---:|---:|---:|---:|"]
    for d, pct in (r.get("insert_latency_ms") or {}).items():
        lines.append(f"| {d} | {_fmt(int(pct.get('count') or 0))} | {_fmt(pct.get('p50'))} | "
                     f"{_fmt(pct.get('p90'))} | {_fmt(pct.get('p99'))} | "
                     f"{_fmt(pct.get('mean'))} |")
    lines += ["", "Percentiles interpolate within the histogram's buckets (Prometheus "
              "`histogram_quantile`), so they are approximate.", "", "![latency](latency.png)",
              "", "## End-to-end latency (produce -> stored)", "",
              "Time from a flow's arrival in Kafka (topic high watermarks) to its destination "
              "counting it as written (insert acknowledged), FIFO approximation on the 0.5 s "
              "samples of the two cumulative counts; it includes the batch wait "
              "(maximum-wait-time) and the insert.", "",
              "| destination | p50 s | p99 s | max s |", "|---|---:|---:|---:|"]
    for d, e in (r.get("end_to_end_latency_s") or {}).items():
        lines.append(f"| {d} | {_fmt(e.get('p50'))} | {_fmt(e.get('p99'))} | "
                     f"{_fmt(e.get('max'))} |")
    loc = r.get("locust") or {}
    if loc:
        lines += ["", "## Locust (one request = one produced batch, response time = produce "
                  "-> broker ack of the batch's last record)", "",
                  "| requests | failures | req/s | median ms | p95 ms | p99 ms | max ms |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {loc['requests']:,} | {loc['failures']:,} | {loc['requests_per_s']} | "
                  f"{loc['median_ms']:g} | {loc['p95_ms']:g} | {loc['p99_ms']:g} | "
                  f"{loc['max_ms']:g} |", "",
                  "Locust's own report: [locust.html](locust.html), `locust_stats.csv`, "
                  "`locust_stats_history.csv`, `locust.json`; its log: `locust.log`."]
    lines += ["", "## Samples", "", "Every 0.5 s sample (Kafka watermarks, outlet counters, lag, "
              "CPU) is in `report.json` (`samples`).", ""]
    return "\n".join(lines)
