#!/usr/bin/env python3
"""Side-by-side tables from cart-bench JSON reports (used by the bench/run-*.sh scripts).

  summarize.py compare LABEL=FILE...          first LABEL is the baseline of the ratio columns
  summarize.py scaling NODES=FILE...          first is the baseline (1 node)
  summarize.py cart-size LINES:C=FILE...      AddItem cost by cart size and concurrency
  summarize.py summary-json OUT MODE:LABEL=FILE...
                                              writes OUT: a JSON object with one entry per
                                              MODE/LABEL (e.g. closed:cartdb=…)

Each FILE is a cart-bench --json report; its first target is read. Latencies are HDR percentiles
in µs as cart-bench measured them (open loop: from the intended send time). CPU per operation
comes from the `.cpu` file the bench scripts write beside a report ("SERVER_TICKS CLIENT_TICKS",
1/100 s); without one, the table has no CPU row and the JSON has null.
"""

import json
import os
import sys


def load(path):
    with open(path) as f:
        report = json.load(f)
    return report, report["targets"][0]


def fmt_us(us):
    if us < 1_000:
        return f"{us}µs"
    if us < 1_000_000:
        return f"{us / 1e3:.2f}ms"
    return f"{us / 1e6:.3f}s"


def ratio(value, base):
    if not base:
        return "-"
    r = value / base
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def pairs(args):
    out = []
    for arg in args:
        label, _, path = arg.partition("=")
        if not path:
            sys.exit(f"expected LABEL=FILE, got {arg!r}")
        out.append((label, path))
    return out


def cpu_per_op(path):
    """(server µs, cart-bench µs) of CPU per completed operation, from the `.cpu` file beside the
    report at `path`; None when that file is missing or unreadable or nothing completed."""
    try:
        with open(path.removesuffix(".json") + ".cpu") as f:
            server_ticks, client_ticks = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return None
    done = load(path)[1]["overall"]["count"]
    if not done:
        return None
    return server_ticks * 10_000 / done, client_ticks * 10_000 / done


def cpu_row(label, path):
    """A row of the CPU table (absent .cpu file: no row)."""
    cpu = cpu_per_op(path)
    if cpu is None:
        return None
    server, client = cpu
    return [label, f"{server:.0f}µs", f"{client:.0f}µs", f"{server + client:.0f}µs"]


def compare(args):
    runs = [(label, *load(path)) for label, path in pairs(args)]
    report0, base = runs[0][1], runs[0][2]
    mode = f"open loop at {report0['rate']:.0f} ops/s" if report0["rate"] else "closed loop"
    print(
        f"profile {report0['profile']}, {mode}, concurrency {report0['concurrency']}, "
        f"{report0['duration_s']:.0f} s per target, seed {report0['seed']}; ratios are target / {runs[0][0]}"
    )
    rows = []
    for label, _, t in runs:
        o, b = t["overall"], base["overall"]
        rows.append([
            label, f"{t['ops_per_s']:.0f}", fmt_us(o["p50_us"]), fmt_us(o["p99_us"]), fmt_us(o["p999_us"]),
            t["errors"], t["dropped"],
            ratio(t["ops_per_s"], base["ops_per_s"]), ratio(o["p50_us"], b["p50_us"]),
            ratio(o["p99_us"], b["p99_us"]), ratio(o["p999_us"], b["p999_us"]),
        ])
    print(table(["target", "ops/s", "p50", "p99", "p99.9", "errors", "dropped",
                 "ops/s ratio", "p50 ratio", "p99 ratio", "p99.9 ratio"], rows))
    cpu_rows = [row for label, path in pairs(args) if (row := cpu_row(label, path))]
    if cpu_rows:
        print()
        print("CPU per operation (user + system, from /proc; the load generator shares the cores):")
        print(table(["target", "servers", "cart-bench", "total"], cpu_rows))
    print()
    print("per operation, p50 / p99 (not_found counted as completed):")
    ops = list(base["ops"].keys())
    rows = []
    for op in ops:
        row = [op]
        for _, _, t in runs:
            s = t["ops"].get(op)
            row.append(f"{fmt_us(s['p50_us'])} / {fmt_us(s['p99_us'])}" if s and s["count"] else "-")
        rows.append(row)
    print(table(["op"] + [label for label, _, _ in runs], rows))


def scaling(args):
    runs = [(label, *load(path)) for label, path in pairs(args)]
    report0, base = runs[0][1], runs[0][2]
    print(
        f"profile {report0['profile']}, closed loop, concurrency {report0['concurrency']}, "
        f"{report0['duration_s']:.0f} s each, seed {report0['seed']}"
    )
    rows = []
    for label, _, t in runs:
        o = t["overall"]
        rows.append([label, f"{t['ops_per_s']:.0f}", fmt_us(o["p50_us"]), fmt_us(o["p99_us"]),
                     fmt_us(o["p999_us"]), t["errors"], ratio(t["ops_per_s"], base["ops_per_s"])])
    print(table(["nodes", "ops/s", "p50", "p99", "p99.9", "errors", f"ops/s vs {runs[0][0]} node"], rows))


def cart_size(args):
    rows = []
    first = None
    for label, path in pairs(args):
        lines, _, concurrency = label.partition(":")
        report, t = load(path)
        first = first or report
        a = t["ops"]["add_item"]
        rows.append([lines, concurrency, f"{t['ops_per_s']:.0f}", fmt_us(a["p50_us"]), fmt_us(a["p99_us"]),
                     fmt_us(a["p999_us"]), fmt_us(a["max_us"]), t["errors"]])
    print(f"AddItem (+1 on an existing line) to a cart of N lines, closed loop, {first['duration_s']:.0f} s each")
    print(table(["lines", "C", "ops/s", "p50", "p99", "p99.9", "max", "errors"], rows))


def summary_entry(mode, label, path):
    """One entry of summary-json: the headline numbers of one run (CPU null without a .cpu)."""
    report, t = load(path)
    o = t["overall"]
    cpu = cpu_per_op(path)
    entry = {
        "target": label,
        "mode": mode,
        "profile": report.get("profile"),
        "carts": report.get("carts"),
        "concurrency": report.get("concurrency"),
        "rate": report.get("rate"),
        "duration_s": report.get("duration_s"),
        "ops_per_s": round(t["ops_per_s"], 1),
        "p50_us": o["p50_us"],
        "p99_us": o["p99_us"],
        "p999_us": o["p999_us"],
        "server_cpu_us_per_op": None if cpu is None else round(cpu[0], 1),
        "client_cpu_us_per_op": None if cpu is None else round(cpu[1], 1),
    }
    entry["completed"] = o["count"]
    for key in ("not_found", "errors", "dropped"):
        if key in t:
            entry[key] = t[key]
    if t.get("error_codes"):
        entry["error_codes"] = t["error_codes"]
    return entry


def summary_json(args):
    if len(args) < 2:
        sys.exit(__doc__)
    out, runs = args[0], []
    for arg in args[1:]:
        mode, sep, rest = arg.partition(":")
        if not sep or not mode:
            sys.exit(f"expected MODE:LABEL=FILE, got {arg!r}")
        runs.append((mode, *pairs([rest])[0]))
    summary = {}
    for mode, label, path in runs:
        key = f"{mode}/{label}"
        if key in summary:
            sys.exit(f"{key} given twice")
        try:
            summary[key] = summary_entry(mode, label, path)
        except (OSError, ValueError, KeyError, IndexError) as e:
            sys.exit(f"{path}: no cart-bench report read from it ({e})")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    os.replace(tmp, out)
    print(f"summary written to {out} ({len(summary)} runs)")


COMMANDS = {"compare": compare, "scaling": scaling, "cart-size": cart_size, "summary-json": summary_json}


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
