//! The JSON document (`--json FILE`) and the table printed at the end of a run.
//!
//! JSON shape (stable; later tooling reads it):
//! `{"profile", "duration_s", "concurrency", "rate", "carts", "distribution", "seed",
//!   "targets": [{"target", "ops_per_s", "errors", "not_found", "dropped", "elapsed_s",
//!                "overall": Summary, "ops": {"add_item": Summary, …}, "error_codes": {…},
//!                "schedule_lag": {…} (open loop only),
//!                "window": {"start_s", "end_s", "inside": Summary, "outside": Summary} (--window),
//!                "hedges": {"calls", "hedges", "extra_percent"} (cartdb)}]}`
//! where `Summary` has `count, not_found, errors, dropped, ops_per_s, mean_us, p50_us, p95_us,
//! p99_us, p999_us, max_us`. `rate` is `null` for a closed loop. `--profile add-to-size` adds a
//! top-level `cart_lines` (the size of the measured cart), `--ops N` a top-level `ops`.

use std::collections::BTreeMap;
use std::time::Duration;

use comfy_table::{presets, CellAlignment, Table};
use serde::Serialize;

use crate::profile::{OpKind, Profile};
use crate::runner::RunResult;
use crate::stats::{LatencySummary, Summary};
use crate::workload::KeyDistribution;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub profile: Profile,
    pub duration_s: f64,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub carts: u64,
    pub distribution: KeyDistribution,
    pub seed: u64,
    /// `--ops`: the run stopped after this many operations (or at the deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<u64>,
    /// `add-to-size` only: lines of the measured cart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart_lines: Option<u32>,
    pub targets: Vec<TargetReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub ops_per_s: f64,
    pub errors: u64,
    pub not_found: u64,
    pub dropped: u64,
    pub elapsed_s: f64,
    pub overall: Summary,
    /// Keyed by operation name, in report order.
    pub ops: BTreeMap<OpKind, Summary>,
    pub error_codes: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_lag: Option<LatencySummary>,
    /// `--window`: the requests due inside it and those outside, each summarised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowReport>,
    /// What the client's hedging added (cartdb).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedges: Option<HedgeReport>,
    /// One message per error code, printed to stderr, not part of the JSON.
    #[serde(skip)]
    pub error_examples: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub start_s: f64,
    pub end_s: f64,
    pub inside: Summary,
    pub outside: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct HedgeReport {
    pub calls: u64,
    pub hedges: u64,
    /// hedges ÷ calls, in percent.
    pub extra_percent: f64,
}

impl HedgeReport {
    pub fn of(stats: cart_client::HedgeStats) -> Self {
        HedgeReport {
            calls: stats.calls,
            hedges: stats.hedges,
            extra_percent: if stats.calls == 0 {
                0.0
            } else {
                (stats.hedges as f64 * 10_000.0 / stats.calls as f64).round() / 100.0
            },
        }
    }
}

impl TargetReport {
    /// Summarises a run; `kinds` are the operations the profile issues (shown even when zero).
    pub fn new(target: String, kinds: &[OpKind], result: &RunResult, open_loop: bool) -> Self {
        let elapsed = result.elapsed;
        let all = result.recorder.overall();
        let overall = Summary::of(&all, elapsed);
        let ops = kinds
            .iter()
            .map(|k| (*k, Summary::of(result.recorder.op(*k), elapsed)))
            .collect();
        TargetReport {
            target,
            ops_per_s: overall.ops_per_s,
            errors: overall.errors,
            not_found: overall.not_found,
            dropped: overall.dropped,
            elapsed_s: round3(elapsed),
            overall,
            ops,
            error_codes: all.error_codes,
            schedule_lag: open_loop.then(|| LatencySummary::of(result.recorder.schedule_lag())),
            error_examples: result.recorder.error_examples().clone(),
            window: result.recorder.phases().map(|(w, inside, outside)| {
                let length = w.end.saturating_sub(w.start).min(elapsed);
                WindowReport {
                    start_s: round3(w.start),
                    end_s: round3(w.end),
                    inside: Summary::of(inside, length),
                    outside: Summary::of(outside, elapsed.saturating_sub(length)),
                }
            }),
            hedges: None,
        }
    }

    /// The human-readable table: one row per operation and a total row.
    pub fn table(&self) -> String {
        let mut table = Table::new();
        table.load_style(presets::UTF8_BORDERS_ONLY);
        table.set_header([
            "op",
            "count",
            "ops/s",
            "not_found",
            "errors",
            "dropped",
            "p50",
            "p95",
            "p99",
            "p99.9",
            "max",
        ]);
        for (kind, s) in &self.ops {
            table.add_row(row(kind.name(), s));
        }
        table.add_row(row("overall", &self.overall));
        for i in 1..11 {
            if let Some(column) = table.column_mut(i) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        table.to_string()
    }
}

fn row(name: &str, s: &Summary) -> Vec<String> {
    vec![
        name.to_owned(),
        s.count.to_string(),
        format!("{:.0}", s.ops_per_s),
        s.not_found.to_string(),
        s.errors.to_string(),
        s.dropped.to_string(),
        fmt_us(s.p50_us),
        fmt_us(s.p95_us),
        fmt_us(s.p99_us),
        fmt_us(s.p999_us),
        fmt_us(s.max_us),
    ]
}

/// `412µs`, `12.35ms`, `1.234s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.3}s", us as f64 / 1e6),
    }
}

fn round3(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use crate::target::Outcome;

    fn sample_report(open_loop: bool) -> BenchReport {
        let mut recorder = Recorder::new();
        for us in [120, 250, 900, 4_000] {
            recorder.record(OpKind::AddItem, Outcome::Ok, Duration::from_micros(us));
            recorder.record(OpKind::GetCart, Outcome::Ok, Duration::from_micros(us / 2));
        }
        recorder.record(OpKind::SetQuantity, Outcome::NotFound, Duration::from_micros(300));
        recorder.record(
            OpKind::AddItem,
            Outcome::Error {
                code: "UNAVAILABLE".into(),
                message: "down".into(),
            },
            Duration::ZERO,
        );
        let result = RunResult {
            recorder,
            elapsed: Duration::from_secs(2),
        };
        let kinds = Profile::BlackFriday.kinds();
        BenchReport {
            profile: Profile::BlackFriday,
            duration_s: 2.0,
            concurrency: 8,
            rate: open_loop.then_some(100.0),
            carts: 10_000,
            distribution: KeyDistribution::Zipf,
            seed: 7,
            ops: None,
            cart_lines: None,
            targets: vec![TargetReport::new(
                "cartdb=127.0.0.1:7001".into(),
                &kinds,
                &result,
                open_loop,
            )],
        }
    }

    #[test]
    fn json_has_the_required_keys() {
        let json = serde_json::to_value(sample_report(false)).expect("serialises");
        for key in ["profile", "duration_s", "concurrency", "rate", "targets"] {
            assert!(json.get(key).is_some(), "missing top-level {key}");
        }
        assert_eq!(json["profile"], "black-friday");
        assert_eq!(json["distribution"], "zipf");
        assert!(json["rate"].is_null());
        assert!(json.get("cart_lines").is_none());
        assert!(json.get("ops").is_none());
        let target = &json["targets"][0];
        assert_eq!(target["target"], "cartdb=127.0.0.1:7001");
        assert_eq!(target["ops_per_s"], 4.5);
        assert_eq!(target["errors"], 1);
        assert!(target.get("schedule_lag").is_none());
        let summary_keys = [
            "count",
            "not_found",
            "errors",
            "dropped",
            "ops_per_s",
            "p50_us",
            "p95_us",
            "p99_us",
            "p999_us",
            "max_us",
        ];
        for key in summary_keys {
            assert!(target["overall"].get(key).is_some(), "overall lacks {key}");
        }
        let ops = target["ops"].as_object().expect("ops is an object");
        let names: Vec<&str> = ops.keys().map(String::as_str).collect();
        assert_eq!(names, ["add_item", "get_cart", "set_quantity"]);
        for (name, op) in ops {
            for key in summary_keys {
                assert!(op.get(key).is_some(), "{name} lacks {key}");
            }
        }
        assert_eq!(target["ops"]["add_item"]["count"], 4);
        let max = target["ops"]["add_item"]["max_us"]
            .as_u64()
            .expect("max_us is a number");
        assert!((4_000..=4_004).contains(&max), "max {max}");
        assert_eq!(target["ops"]["set_quantity"]["not_found"], 1);
        assert_eq!(target["error_codes"]["UNAVAILABLE"], 1);
    }

    #[test]
    fn open_loop_json_carries_rate_and_schedule_lag() {
        let json = serde_json::to_value(sample_report(true)).expect("serialises");
        assert_eq!(json["rate"], 100.0);
        assert!(json["targets"][0]["schedule_lag"].get("p99_us").is_some());
    }

    #[test]
    fn table_lists_every_op_and_the_total() {
        let report = sample_report(false);
        let table = report.targets[0].table();
        for needle in ["add_item", "get_cart", "set_quantity", "overall", "p99.9"] {
            assert!(table.contains(needle), "table lacks {needle}:\n{table}");
        }
    }

    #[test]
    fn formats_microseconds_readably() {
        assert_eq!(fmt_us(412), "412µs");
        assert_eq!(fmt_us(12_345), "12.35ms");
        assert_eq!(fmt_us(1_234_000), "1.234s");
    }
}
