"""The results of a run: a table, the issue's targets as ratios, JSON, CSV and a PNG chart.

    python -m benchmarks.report results/<stamp>.json        # print a saved run again
    python -m benchmarks.report --chart results/<stamp>.json results/<stamp>.png

The chart needs matplotlib: the current interpreter's if it has it, else the
peers' virtualenv's (``benchmarks.peers`` installs it there). Without either,
the chart is skipped with a note and everything else is written.

Queue CPU per job is the workers' CPU per job minus the bare pool's for the
same job: the bare pool measured beside that case when the run paired them
(``pair_<job>_cpu_ms``), else the bare pool's own case of the same
repetition. What the queue itself costs.

Targets against the bare pool use the paired figures when there are any, and
the send() and batch targets the alternating producer rounds (rows of system
``sends``) when the run has them: the median of the rounds' ratios. Each target is
printed per repetition, then once over all of them (in how many it was met).

``send/s`` is ``send()`` one by one with each system's default settings. On
RabbitMQ those differ (greenq waits for a publisher confirm of each message,
Dramatiq does not), so RabbitMQ rows also have ``send conf/s`` and ``send
unconf/s``: the same workload with publisher confirms on and off for both, and
the send() target compares like with like.
"""

import argparse
import collections
import csv
import json
import os
import statistics
import subprocess
import sys
import time

COLUMNS = [
    ("system", "system", "{}"), ("broker", "broker", "{}"), ("rep", "rep", "{}"),
    ("noop_rate", "noop/s", "{:.0f}"), ("noop_cpu_ms", "noop cpu ms", "{:.3f}"),
    ("queue_cpu_noop_ms", "q-cpu noop", "{:.3f}"), ("server_cpu_noop_ms", "srv-cpu noop", "{:.3f}"),
    ("scrape_rate", "scrape/s", "{:.0f}"), ("scrape_cpu_ms", "scrape cpu ms", "{:.3f}"),
    ("queue_cpu_scrape_ms", "q-cpu scrape", "{:.3f}"), ("server_cpu_scrape_ms", "srv-cpu scrape", "{:.3f}"),
    ("scrape_ka_rate", "scrape-ka/s", "{:.0f}"), ("queue_cpu_scrape_ka_ms", "q-cpu ka", "{:.3f}"),
    ("latency_p50_ms", "lat p50 ms", "{:.1f}"), ("latency_p99_ms", "lat p99 ms", "{:.1f}"),
    ("enqueue_one", "send/s", "{:.0f}"), ("enqueue_one_confirmed", "send conf/s", "{:.0f}"),
    ("enqueue_one_unconfirmed", "send unconf/s", "{:.0f}"), ("enqueue_batch", "batch/s", "{:.0f}"),
    ("rss_mib", "rss MiB", "{:.1f}"), ("conns", "conns", "{}"), ("conns_small_t", "conns small-t", "{}"),
    ("error", "error", "{}"),
]

# "flat": at full -t the workers may hold this many more broker connections than at the small -t
CONNS_MARGIN = 2


def derive(rows):
    """Add the queue's own CPU per job: minus the paired bare pool's, else the bare case's of the repetition."""
    bare = {r.get("rep"): r for r in rows if r["system"] == "bare" and "error" not in r}
    for row in rows:
        if row["system"] in ("bare", "sends"):
            continue
        base = bare.get(row.get("rep")) or {}
        for job in ("noop", "scrape", "scrape_ka"):
            own = row.get(f"{job}_cpu_ms")
            other = row.get(f"pair_{job}_cpu_ms", base.get(f"{job}_cpu_ms"))
            if own is not None and other is not None:
                row[f"queue_cpu_{job}_ms"] = own - other
    return rows


def measured(rows):
    """The rows of cases (not of the send() rounds)."""
    return [r for r in rows if r["system"] != "sends"]


def _cell(row, key, fmt):
    value = row.get(key)
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def table(rows):
    rows = derive(measured(rows))
    keys = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = [[title for _, title, _ in keys]]
    lines += [[_cell(r, key, fmt) for key, _, fmt in keys] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(keys))]
    out = ["  ".join(cell.rjust(w) if i > 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "-" * len(out[0]))
    if any(c[0] == "enqueue_one_confirmed" for c in keys):
        out.append("send/s: each system's defaults (RabbitMQ: greenq confirms each message, Dramatiq does not); "
                   "send conf/s, send unconf/s: RabbitMQ publisher confirms on / off for both.")
    return "\n".join(out)


# --- targets --------------------------------------------------------------------------------

def _find(rows, rep, system, broker):
    for row in rows:
        if row.get("rep") == rep and row["system"] == system and row["broker"] == broker and "error" not in row:
            return row
    return None


def _send_rounds(rows, rep, broker):
    for row in rows:
        if row["system"] == "sends" and row.get("rep") == rep and row["broker"] == broker and row.get("rounds"):
            return row["rounds"]
    return None


def _median_ratio(rounds, key, dramatiq_key=None):
    """The median over rounds of greenq's ``key`` over Dramatiq's ``dramatiq_key`` (default: the same), and the
    ratios; None if a round misses a figure."""
    dramatiq_key = dramatiq_key or key
    ratios = [r["greenq"][key] / r["dramatiq"][dramatiq_key] for r in rounds or ()
              if r["greenq"].get(key) and r["dramatiq"].get(dramatiq_key)]
    return (statistics.median(ratios), ratios) if ratios and len(ratios) == len(rounds) else None


def _rounds_text(ratio, each, digits):
    """How a target taken from the alternating rounds reads: the median, then every round's ratio."""
    rounds = ", ".join(f"{r:.{digits}f}x" for r in each)
    return f"{ratio:.{digits}f}x, median of {len(each)} alternating rounds ({rounds})"


def _send_comparisons(broker, g, d):
    """``[(row key, label suffix)]``: which send() figures of greenq and Dramatiq compare like with like."""
    if broker != "rabbitmq":
        return [("enqueue_one", "")]
    pairs = [("enqueue_one_confirmed", ", both with publisher confirms"),
             ("enqueue_one_unconfirmed", ", both without publisher confirms")]
    pairs = [(key, how) for key, how in pairs if g.get(key) and d.get(key)]
    # a run saved before the confirm columns existed: defaults only, and the label says how they differ
    return pairs or [("enqueue_one", ", defaults: greenq confirms, dramatiq does not")]


def _server_ceiling(g, bare, job):
    """What the broker's server alone leaves of the bare pool's rate, as a note ('' when not measured).

    The bare pool keeps both cores busy, and the server runs on the same cores:
    even a queue whose workers cost no more CPU per job than the bare pool
    reaches at most bare / (bare + server) of its rate.
    """
    server = g.get(f"server_cpu_{job}_ms")
    own = g.get(f"pair_{job}_cpu_ms", (bare or {}).get(f"{job}_cpu_ms"))
    if not server or not own:
        return ""
    return f"; the broker's server takes {server:.3f} ms/job, a ceiling of {own / (own + server):.0%}"


def targets(rows):
    """``[(rep, target, measured text, met or None when not measurable)]`` for the issue's targets."""
    derive(rows)
    results = []
    for rep in sorted({r.get("rep") for r in rows}):
        bare = _find(rows, rep, "bare", "none")

        def check(name, ok, text):
            results.append((rep, name, text, ok))

        for broker in ("redis", "rabbitmq", "sqlite"):
            g = _find(rows, rep, "greenq", broker)
            if g is None:
                continue
            d = _find(rows, rep, "dramatiq", broker)
            if d is not None:
                ratio = g["noop_rate"] / d["noop_rate"]
                check(f"noop >= 2x dramatiq ({broker})", ratio >= 2, f"{ratio:.2f}x")
                gq, dq = g.get("queue_cpu_scrape_ms"), d.get("queue_cpu_scrape_ms")
                if gq is not None and dq is not None:
                    ok = gq <= dq / 3
                    check(f"queue CPU/job <= 1/3 dramatiq ({broker}, scrape)", ok,
                          f"{gq:.3f} vs {dq:.3f} ms ({gq / dq:.2f}x)" if dq > 0 else f"{gq:.3f} vs {dq:.3f} ms")
                gq, dq = g.get("queue_cpu_noop_ms"), d.get("queue_cpu_noop_ms")
                if gq is not None and dq is not None:
                    check(f"queue CPU/job <= 1/3 dramatiq ({broker}, noop)", gq <= dq / 3,
                          f"{gq:.3f} vs {dq:.3f} ms" + (f" ({gq / dq:.2f}x)" if dq > 0 else ""))
                rounds = _send_rounds(rows, rep, broker)
                for key, how in _send_comparisons(broker, g, d):
                    paired = _median_ratio(rounds, {"enqueue_one": "one_by_one", "enqueue_one_confirmed": "confirmed",
                                                    "enqueue_one_unconfirmed": "unconfirmed"}[key])
                    if paired is not None:
                        ratio, each = paired
                        check(f"send() >= dramatiq's ({broker}{how})", ratio >= 1, _rounds_text(ratio, each, 2))
                    else:
                        ratio = g[key] / d[key]
                        check(f"send() >= dramatiq's ({broker}{how})", ratio >= 1,
                              f"{ratio:.2f}x ({g[key]:.0f} vs {d[key]:.0f}/s)")
                if broker == "redis" and g.get("enqueue_batch"):
                    paired = _median_ratio(rounds, "batch", "one_by_one")
                    if paired is not None:
                        ratio, each = paired
                        check("batch >= 10x dramatiq send() (redis)", ratio >= 10, _rounds_text(ratio, each, 1))
                    else:
                        ratio = g["enqueue_batch"] / d["enqueue_one"]
                        check("batch >= 10x dramatiq send() (redis)", ratio >= 10, f"{ratio:.1f}x")
                if g.get("rss_mib") and d.get("rss_mib"):
                    check(f"worker RSS <= dramatiq's ({broker})", g["rss_mib"] <= d["rss_mib"],
                          f"{g['rss_mib']:.1f} vs {d['rss_mib']:.1f} MiB")
            for job, name, least in (("noop", "noop", 0.75), ("scrape", "scrape", 0.95),
                                     ("scrape_ka", "scrape keep-alive", 0.95)):
                base, how = g.get(f"pair_{job}_rate"), "paired"
                if base is None and bare is not None:
                    base, how = bare.get(f"{job}_rate"), "bare case"
                if base and g.get(f"{job}_rate") is not None:
                    ratio = g[f"{job}_rate"] / base
                    check(f"{name} >= {least:.0%} of bare pool ({broker})", ratio >= least,
                          f"{ratio:.0%} ({g[f'{job}_rate']:.0f} vs {base:.0f}/s, {how})"
                          + _server_ceiling(g, bare, job))
            if g.get("latency_p50_ms") is not None:
                check(f"idle latency p50 < 5 ms, p99 < 20 ms ({broker})",
                      g["latency_p50_ms"] < 5 and g["latency_p99_ms"] < 20,
                      f"p50 {g['latency_p50_ms']:.1f} ms, p99 {g['latency_p99_ms']:.1f} ms")
            if g.get("conns") is not None and g.get("conns_small_t") is not None:
                check(f"connections flat as -t grows ({broker})", g["conns"] <= g["conns_small_t"] + CONNS_MARGIN,
                      f"{g['conns_small_t']} at small -t, {g['conns']} at full -t")
    return results


def targets_text(results):
    if not results:
        return "No targets could be checked (greenq and its comparison cases did not all run)."
    lines = ["Targets (ratios within the same repetition; against the bare pool and Dramatiq's send(), paired):"]
    for rep, name, text, ok in results:
        mark = "met " if ok else "MISS"
        lines.append(f"  [{mark}] rep {rep}: {name}: {text}")
    reps = sorted({rep for rep, _, _, _ in results})
    if len(reps) > 1:
        lines.append(f"Over the {len(reps)} repetitions:")
        by_name = collections.OrderedDict()
        for _, name, _, ok in results:
            by_name.setdefault(name, []).append(ok)
        for name, oks in by_name.items():
            met = sum(1 for ok in oks if ok)
            lines.append(f"  [{'met ' if met == len(oks) else 'MISS' if met == 0 else 'some'}] {name}: "
                         f"met in {met} of {len(oks)}")
    return "\n".join(lines)


# --- files ------------------------------------------------------------------------------------

def write(rows, meta, folder, chart=True):
    """Write <stamp>.json, .csv and (if matplotlib is somewhere) .png; return the paths written."""
    derive(rows)
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, time.strftime("%Y%m%d-%H%M%S"))
    data = {"meta": meta, "rows": rows, "targets": [list(t) for t in targets(rows)]}
    with open(stem + ".json", "w") as f:
        json.dump(data, f, indent=2)
    cases = measured(rows)
    keys = [c[0] for c in COLUMNS if any(c[0] in r for r in cases)]
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(cases)
    paths = [stem + ".json", stem + ".csv"]
    if chart:
        try:
            png = make_chart(stem + ".json", stem + ".png")
        except Exception as e:  # the figures are written; a chart that fails must not lose the table
            print(f"chart skipped: {type(e).__name__}: {e}", file=sys.stderr)
            png = None
        if png:
            paths.append(png)
    return paths


def make_chart(json_path, png_path):
    """Draw the chart here if matplotlib imports, else in the peers' virtualenv; None if neither can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from . import peers

        if os.path.exists(peers.PEERS.python()):
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            done = subprocess.run([peers.PEERS.python(), "-m", "benchmarks.report", "--chart", json_path, png_path],
                                  cwd=root, capture_output=True, text=True)
            if done.returncode == 0:
                return png_path
            print(f"chart skipped: the peers' matplotlib failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
            return None
        print("chart skipped: matplotlib is not installed (python -m benchmarks.peers installs it "
              "in the peers' virtualenv)", file=sys.stderr)
        return None
    _draw(json_path, png_path)
    return png_path


def _draw(json_path, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(json_path) as f:
        data = json.load(f)
    rows = [r for r in measured(data["rows"]) if "error" not in r]
    panels = [("noop_rate", "no-op jobs/s"), ("scrape_rate", "scrape jobs/s (new connection)"),
              ("scrape_ka_rate", "scrape jobs/s (keep-alive Session)"), ("queue_cpu_scrape_ms", "queue CPU ms/job"),
              ("latency_p50_ms", "idle pickup p50 ms"), ("enqueue_one", "send() one by one /s (defaults)"),
              ("enqueue_one_confirmed", "RabbitMQ send() /s, publisher confirms on"),
              ("enqueue_one_unconfirmed", "RabbitMQ send() /s, publisher confirms off")]
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    for ax, (key, title) in zip(axes.flat, panels):
        picked = [r for r in rows if r.get(key) is not None]
        labels = [f"{r['system']}\n{r['broker']}" + (f"\n#{r['rep']}" if data["meta"].get("repeat", 1) > 1 else "")
                  for r in picked]
        colors = [{"greenq": "#2a9d8f", "dramatiq": "#e76f51", "celery": "#8d99ae", "bare": "#264653"}.get(
            r["system"], "grey") for r in picked]
        ax.bar(range(len(picked)), [r[key] for r in picked], color=colors)
        ax.set_xticks(range(len(picked)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(title, fontsize=10)
        if not picked:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
    meta = data["meta"]
    fig.suptitle(f"greenq vs Dramatiq vs Celery: N={meta['n']}, -p {meta['processes']} -t {meta['threads']}, "
                 f"{meta['cpus']} CPUs, {meta['when']}")
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path")
    parser.add_argument("png_path", nargs="?")
    parser.add_argument("--chart", action="store_true", help="draw the PNG (needs matplotlib here)")
    args = parser.parse_args()
    if args.chart:
        _draw(args.json_path, args.png_path or args.json_path[:-5] + ".png")
        return 0
    with open(args.json_path) as f:
        data = json.load(f)
    print(table(data["rows"]))
    print()
    print(targets_text(targets(data["rows"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
