//! The node's HTTP endpoint (`http_addr`): `GET /metrics` (Prometheus, see [`crate::metrics`]),
//! `GET /` (the status page: nodes up or down as this node sees them, ring shares, hint backlog,
//! anti-entropy and repair activity, request rates and p99 of the last minutes; rendered on the
//! server and refreshed by the page itself every two seconds) and `GET /status.json` (what the
//! page shows).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use serde_json::json;

use crate::admin::cluster_status;
use crate::coordinator::Coordinator;

/// Serves the endpoint on `listener` (until the task is dropped).
pub async fn serve(
    listener: tokio::net::TcpListener,
    coordinator: Arc<Coordinator>,
    data_dir: PathBuf,
) -> std::io::Result<()> {
    let metrics = {
        let coordinator = coordinator.clone();
        move || {
            let coordinator = coordinator.clone();
            let data_dir = data_dir.clone();
            async move {
                let body = coordinator.store.metrics.render(&coordinator, &data_dir);
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }
    };
    let status = {
        let coordinator = coordinator.clone();
        move || {
            let coordinator = coordinator.clone();
            async move {
                let body = serde_json::to_string(&status_json(&coordinator)).unwrap_or_else(|_| "{}".into());
                ([(CONTENT_TYPE, "application/json")], body)
            }
        }
    };
    let page = move || {
        let coordinator = coordinator.clone();
        async move { axum::response::Html(page(&status_json(&coordinator))) }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/status.json", get(status))
        .route("/", get(page));
    axum::serve(listener, app).await
}

/// What the status page shows, as JSON.
pub fn status_json(coordinator: &Coordinator) -> serde_json::Value {
    let status = cluster_status(coordinator);
    let metrics = &coordinator.store.metrics;
    let nodes: Vec<serde_json::Value> = status
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "addr": n.addr,
                "zone": n.zone,
                "up": n.up,
                "degraded": n.degraded,
                "ring_share": n.ring_share,
                "hints_held": n.hints_held,
                "anti_entropy": {
                    "last_ms_ago": n.ae_last_ms_ago,
                    "differing": n.ae_differing,
                    "repaired": n.ae_repaired,
                    "error": n.ae_error,
                },
            })
        })
        .collect();
    json!({
        "node_id": status.asked_node,
        "layout_version": status.layout_version,
        "hint_backlog": status.hint_backlog,
        "nodes": nodes,
        "activity": {
            "read_repairs": metrics.read_repairs.get(),
            "handoffs": metrics.handoffs.get(),
            "anti_entropy_differing": metrics.anti_entropy_differing.get(),
            "anti_entropy_repaired": metrics.anti_entropy_repaired.get(),
        },
        "recent": metrics.recent(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn str_of<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// The state cell of a node: `up`, `down` or `degraded`.
fn state(node: &serde_json::Value) -> &'static str {
    match (node["up"].as_bool(), str_of(node, "degraded").is_empty()) {
        (Some(true), true) => "up",
        (Some(true), false) => "degraded",
        _ => "down",
    }
}

/// The page, rendered from `status` (the same JSON its script fetches to refresh itself).
fn page(status: &serde_json::Value) -> String {
    let mut rows = String::new();
    for n in status["nodes"].as_array().into_iter().flatten() {
        let ae = &n["anti_entropy"];
        let last = ae["last_ms_ago"].as_i64().unwrap_or(-1);
        let _ = write!(
            rows,
            "<tr data-node=\"{id}\"><td>{id}</td><td>{addr}</td><td>{zone}</td>\
             <td class=\"state {state}\">{state}</td><td>{share:.1}%</td><td>{hints}</td><td>{ae}</td></tr>",
            id = esc(str_of(n, "node_id")),
            addr = esc(str_of(n, "addr")),
            zone = esc(str_of(n, "zone")),
            state = state(n),
            share = n["ring_share"].as_f64().unwrap_or(0.0) * 100.0,
            hints = n["hints_held"].as_u64().unwrap_or(0),
            ae = if last < 0 {
                "not yet".to_owned()
            } else {
                format!(
                    "{} s ago: {} differing, {} repaired",
                    last / 1000,
                    ae["differing"].as_u64().unwrap_or(0),
                    ae["repaired"].as_u64().unwrap_or(0)
                )
            },
        );
    }
    let data = serde_json::to_string(status)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/");
    PAGE.replace("{{NODE}}", &esc(str_of(status, "node_id")))
        .replace("{{ROWS}}", &rows)
        .replace("{{DATA}}", &data)
}

/// The page template: `{{NODE}}`, `{{ROWS}}` (the nodes table) and `{{DATA}}` (the JSON) are
/// filled in per request.
const PAGE: &str = include_str!("status.html");
