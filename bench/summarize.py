#!/usr/bin/env python3
"""Side-by-side tables from cart-bench JSON reports (used by the bench/run-*.sh scripts).

  summarize.py compare LABEL=FILE...          first LABEL is the baseline of the ratio columns
  summarize.py scaling NODES=FILE...          first is the baseline (1 node)
  summarize.py cart-size LINES:C=FILE...      AddItem cost by cart size and concurrency

Each FILE is a cart-bench --json report; its first target is read. Latencies are HDR percentiles
in µs as cart-bench measured them (open loop: from the intended send time).
"""

import json
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


def cpu_row(label, path):
    """CPU µs per completed operation of the servers and the load generator, from the `.cpu`
    file the bench scripts write next to a report (absent: no row)."""
    try:
        with open(path.removesuffix(".json") + ".cpu") as f:
            server_ticks, client_ticks = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        return None
    t = load(path)[1]
    done = t["overall"]["count"]
    if not done:
        return None
    per_op = lambda ticks: f"{ticks * 10_000 / done:.0f}µs"
    return [label, per_op(server_ticks), per_op(client_ticks), per_op(server_ticks + client_ticks)]


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


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("compare", "scaling", "cart-size"):
        sys.exit(__doc__)
    {"compare": compare, "scaling": scaling, "cart-size": cart_size}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
