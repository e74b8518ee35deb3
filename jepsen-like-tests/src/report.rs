//! The Jepsen-style summary (stdout) and a self-contained HTML report: the summary, latency over
//! time per operation (ok / fail / unknown) with the fault intervals shaded, and the faults.

use std::fmt::Write as _;
use std::path::Path;

use comfy_table::{presets, Table};
use serde::Serialize;

use crate::checker::{Counts, Verdict};
use crate::history::{History, Outcome};

/// What the run was, for the report's header.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// "namespaces", "loopback-proxy" or "simulation".
    pub mode: String,
    pub seed: u64,
    pub nodes: usize,
    pub nemeses: Vec<String>,
    pub workloads: Vec<String>,
    pub time_limit_s: u64,
}

fn row(table: &mut Table, name: &str, c: &Counts) {
    table.add_row(vec![
        name.to_string(),
        c.attempted.to_string(),
        c.acknowledged.to_string(),
        c.unknown.to_string(),
        c.failed.to_string(),
        c.survived.to_string(),
        c.lost.to_string(),
    ]);
}

/// The summary as printed at the end of a run.
pub fn summary(info: &RunInfo, v: &Verdict) -> String {
    let mut table = Table::new();
    table.load_style(presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "operation",
        "attempted",
        "acknowledged",
        "unknown",
        "failed",
        "survived",
        "lost",
    ]);
    row(&mut table, "cart-set add", &v.adds);
    row(&mut table, "cart-set remove", &v.removes);
    row(&mut table, "quantity ±k (lines)", &v.adjustments);
    row(&mut table, "read", &v.reads);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cart-jepsen: {} nodes ({}), seed {}, nemesis [{}], workload [{}], {} s",
        info.nodes,
        info.mode,
        info.seed,
        info.nemeses.join(","),
        info.workloads.join(","),
        info.time_limit_s
    );
    let _ = writeln!(out, "{table}");
    let _ = writeln!(
        out,
        "(quantity row: survived / lost count lines inside / outside the pn-counter range; remove row: survived = stayed removed)"
    );
    let examples = |items: &[String]| {
        if items.is_empty() {
            String::new()
        } else {
            let shown: Vec<&str> = items.iter().take(5).map(String::as_str).collect();
            format!(" (e.g. {})", shown.join(", "))
        }
    };
    let _ = writeln!(
        out,
        "lost acknowledged adds: {}{}",
        v.lost_items.len(),
        examples(&v.lost_items)
    );
    let _ = writeln!(
        out,
        "removed items back without a concurrent add: {}{}",
        v.resurrected_items.len(),
        examples(&v.resurrected_items)
    );
    let _ = writeln!(
        out,
        "phantom items: {}{}",
        v.phantom_items.len(),
        examples(&v.phantom_items)
    );
    let _ = writeln!(out, "quantity out of pn-counter range: {}", v.quantity_violations.len());
    for q in v.quantity_violations.iter().take(5) {
        let _ = writeln!(
            out,
            "  {}/{} on {}: {} not in [{}, {}]",
            q.cart, q.line, q.node, q.value, q.low, q.high
        );
    }
    let _ = writeln!(
        out,
        "quantity requests: {} unknown at first and settled by a retry with their id ({} of them only after \
         more than {} later requests to their cart: past the exactly-once window, checked as once or twice), \
         {} still unknown ({})",
        v.quantity_resolved,
        v.quantity_late,
        cart_crdt::REQUESTS_PER_CART_MAX,
        v.quantity_unresolved,
        if v.quantity_unresolved == 0 && v.quantity_late == 0 {
            "every counter checked exactly"
        } else {
            "those counters checked as a range, every other exactly"
        }
    );
    for (line, items) in [
        ("merge: acknowledged guest adds lost", &v.merge_lost),
        ("merge: merged lines counted twice", &v.merge_doubled),
        ("checkout: items in two orders", &v.checkout_twice),
        (
            "checkout: ordered items the version did not show",
            &v.checkout_not_in_version,
        ),
        (
            "checkout: acknowledged adds neither in the cart nor in an order",
            &v.checkout_lost,
        ),
        ("checkout: ordered items back in the cart", &v.checkout_back),
        ("expired carts back", &v.expired_back),
    ] {
        let _ = writeln!(out, "{line}: {}{}", items.len(), examples(items));
    }
    let _ = writeln!(
        out,
        "replicas not byte-identical: {}{}",
        v.divergent_carts.len(),
        examples(&v.divergent_carts)
    );
    let (refused_attached, refused_failover, refused_checkouts) = v.refused_during_faults;
    for (who, (attempted, acked), refused) in [
        ("clients attached to one node", v.writes_during_faults, refused_attached),
        (
            "clients that fail over (cart-client default)",
            v.failover_writes_during_faults,
            refused_failover,
        ),
        (
            "checkouts (strict: a majority read, W owners)",
            v.checkouts_during_faults,
            refused_checkouts,
        ),
    ] {
        if attempted > 0 {
            let percent = |n: usize| n as f64 * 100.0 / attempted as f64;
            let _ = writeln!(
                out,
                "availability during faults, {who}: {:.2}% acknowledged ({acked} of {attempted}); \
                 {:.2}% answered (with {refused} refused for what the cart holds, e.g. NotFound)",
                percent(acked),
                percent(acked + refused)
            );
        } else {
            let _ = writeln!(out, "availability during faults, {who}: none during faults");
        }
    }
    let _ = writeln!(out, "valid: {}", v.valid);
    out
}

/// Writes history.jsonl, summary.txt, verdict.json and report.html into `dir`.
pub fn write_all(dir: &Path, info: &RunInfo, history: &History, v: &Verdict, summary: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    history.write_jsonl(&dir.join("history.jsonl"))?;
    std::fs::write(dir.join("summary.txt"), summary)?;
    std::fs::write(dir.join("verdict.json"), serde_json::to_vec_pretty(v)?)?;
    write_html(dir, info, history, v)?;
    Ok(())
}

/// Points drawn at most in the latency chart; above, every k-th operation is drawn.
const MAX_POINTS: usize = 20_000;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Writes `report.html` into `dir` and returns its path.
pub fn write_html(dir: &Path, info: &RunInfo, history: &History, v: &Verdict) -> std::io::Result<std::path::PathBuf> {
    let (w, h, left, bottom) = (1100.0_f64, 420.0_f64, 60.0_f64, 30.0_f64);
    let end_us = history
        .ops
        .iter()
        .map(|o| o.end_us)
        .chain(history.faults.iter().map(|f| f.end_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_ms = history
        .ops
        .iter()
        .map(|o| (o.end_us - o.start_us.min(o.end_us)) as f64 / 1000.0)
        .fold(1.0_f64, f64::max);
    // Log scale from 0.1 ms to the slowest operation.
    let (lo, hi) = (0.1_f64.ln(), max_ms.max(1.0).ln());
    let x = |us: f64| left + us / end_us * (w - left - 10.0);
    let y = |ms: f64| {
        let ms = ms.max(0.1);
        (h - bottom) - (ms.ln() - lo) / (hi - lo).max(1e-9) * (h - bottom - 10.0)
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    for f in &history.faults {
        let (x0, x1) = (x(f.start_us as f64), x(f.end_us as f64));
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="0" width="{:.1}" height="{:.1}" fill="#f4c7c3" opacity="0.6"><title>{} {}</title></rect><text x="{:.1}" y="12" fill="#a33">{}</text>"##,
            (x1 - x0).max(1.0),
            h - bottom,
            escape(&f.nemesis),
            escape(&f.detail),
            x0 + 2.0,
            escape(&f.nemesis)
        );
    }
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0] {
        if ms > max_ms * 1.5 && ms > 1.0 {
            break;
        }
        let yy = y(ms);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="2" y="{:.1}">{ms} ms</text>"##,
            w - 10.0,
            yy + 4.0
        );
    }
    let step = history.ops.len().div_ceil(MAX_POINTS).max(1);
    for op in history.ops.iter().step_by(step) {
        let color = match op.outcome {
            Outcome::Ok => "#2a7",
            Outcome::Fail => "#d33",
            Outcome::Unknown => "#e90",
        };
        let ms = (op.end_us - op.start_us.min(op.end_us)) as f64 / 1000.0;
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}"/>"#,
            x(op.start_us as f64),
            y(ms)
        );
    }
    let mut t = 0.0;
    let tick = ((end_us / 1e6) / 10.0).ceil().max(1.0);
    while t * 1e6 <= end_us {
        let xx = x(t * 1e6);
        let _ = write!(
            svg,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t} s</text>"#,
            h - 10.0
        );
        t += tick;
    }
    svg.push_str("</svg>");

    let mut faults = String::from("<table><tr><th>nemesis</th><th>detail</th><th>from (s)</th><th>to (s)</th></tr>");
    for f in &history.faults {
        let _ = write!(
            faults,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td></tr>",
            escape(&f.nemesis),
            escape(&f.detail),
            f.start_us as f64 / 1e6,
            f.end_us as f64 / 1e6
        );
    }
    faults.push_str("</table>");
    let sampled = if step > 1 {
        format!(" (every {step}th operation drawn)")
    } else {
        String::new()
    };
    let verdict_json = serde_json::to_string_pretty(v).unwrap_or_default();
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>cart-jepsen report, seed {seed}</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1150px}} pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}
.ok{{color:#2a7}} .bad{{color:#d33}}</style></head><body>
<h1>cart-jepsen: <span class="{cls}">{valid}</span></h1>
<pre>{summary}</pre>
<h2>Latency over time{sampled}</h2>
<p>Each dot is one operation at its start time; <span style="color:#2a7">ok</span>, <span style="color:#e90">unknown</span>, <span style="color:#d33">fail</span>. Shaded: faults active.</p>
{svg}
<h2>Faults</h2>{faults}
<h2>Verdict (JSON)</h2><pre>{verdict}</pre>
</body></html>"#,
        seed = info.seed,
        cls = if v.valid { "ok" } else { "bad" },
        valid = if v.valid { "valid" } else { "INVALID" },
        summary = escape(&summary(info, v)),
        verdict = escape(&verdict_json),
    );
    std::fs::create_dir_all(dir)?;
    let path = dir.join("report.html");
    std::fs::write(&path, html)?;
    Ok(path)
}
