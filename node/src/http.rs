//! The node's HTTP endpoint (`http_addr`): `GET /metrics` (Prometheus, see [`crate::metrics`]),
//! `GET /` (the status page: nodes up or down as this node sees them, ring shares, hint backlog,
//! anti-entropy and repair activity, request rates and p99 of the last minutes; rendered by its
//! script from the status embedded in it, then refreshed every two seconds) and
//! `GET /status.json` (what the page shows).

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

/// The page, with `status` (the same JSON its script fetches to refresh itself) embedded for
/// the first render.
fn page(status: &serde_json::Value) -> String {
    let node = status["node_id"].as_str().unwrap_or("");
    let data = serde_json::to_string(status)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/");
    PAGE.replace("{{NODE}}", &esc(node)).replace("{{DATA}}", &data)
}

/// The page template: `{{NODE}}` and `{{DATA}}` (the JSON) are filled in per request.
const PAGE: &str = include_str!("status.html");
