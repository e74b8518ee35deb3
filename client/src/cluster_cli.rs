//! `cartctl cluster …`: membership changes, the way Riak's `cluster join / plan / commit` and
//! Garage's `layout assign / show / apply` work.
//!
//! Changes are staged on the asked node (the first `--endpoint`; give the same one for `join`,
//! `plan` and `commit`), shown with their effect by `plan`, and become the next layout version
//! with `commit`, which a majority of the current members must accept. Staging, committing and
//! discarding need the cluster secret; `show` and `plan` do not.

use std::collections::BTreeMap;

use cart_proto::admin_pb::admin_service_client::AdminServiceClient;
use cart_proto::admin_pb::{
    CommitLayoutRequest, DiscardStagedRequest, LayoutInfo, LayoutReply, PlanLayoutReply, PlanLayoutRequest,
    ShowLayoutRequest, StageChangeRequest, StagedChange, TransferProgress,
};
use cart_proto::SECRET_HEADER;
use clap::Subcommand;
use comfy_table::{presets, CellAlignment, Table};
use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::Request;

use crate::client::lazy_channel;
use crate::{ClientError, ClientOptions};

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// The layout: version, members, zones, weights, ring shares, staged changes, transfer.
    Show,
    /// Stage a node joining (or a member's new address, zone or weight). Nothing moves yet.
    Join {
        node_id: String,
        /// HOST:PORT the node serves on.
        addr: String,
        #[arg(long, default_value = "")]
        zone: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long, env = "CARTDB_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Stage a member leaving (it hands its carts over first). Nothing moves yet.
    Leave {
        node_id: String,
        #[arg(long, env = "CARTDB_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Stage NEW taking the place (zone, weight) of OLD, which is presumed dead.
    Replace {
        old: String,
        new: String,
        /// HOST:PORT of the new node.
        addr: String,
        #[arg(long, env = "CARTDB_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// The staged changes and their effect: ring shares before and after, what moves where.
    Plan,
    /// Make the staged changes the next layout version (a majority of members must agree).
    Commit {
        #[arg(long, env = "CARTDB_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Drop the staged changes.
    Discard {
        #[arg(long, env = "CARTDB_SECRET", hide_env_values = true)]
        secret: String,
    },
}

/// `cluster show` (and the answer of every change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutView {
    pub asked_node: String,
    pub version: u64,
    pub n: u32,
    pub r: u32,
    pub w: u32,
    pub members: Vec<MemberRow>,
    /// The version carts still move out of, while they do.
    pub moving_from: Option<u64>,
    pub staged: Vec<StagedRow>,
    pub transfer: Option<TransferRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRow {
    pub node_id: String,
    pub addr: String,
    pub zone: String,
    pub weight: u32,
    pub ring_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedRow {
    pub kind: String,
    pub node_id: String,
    pub addr: String,
    pub zone: String,
    pub weight: u32,
    pub replaces: String,
}

/// The transfer into a new layout version as the asked node does it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRow {
    pub from_version: u64,
    pub to_version: u64,
    pub phase: String,
    pub carts_scanned: u64,
    pub carts_sent: u64,
    pub bytes_sent: u64,
    pub waiting_for: Vec<String>,
    pub waiting_reason: String,
    #[serde(default)]
    pub carts_dropped: u64,
}

impl TransferRow {
    pub fn from_proto(t: TransferProgress) -> Self {
        TransferRow {
            from_version: t.from_version,
            to_version: t.to_version,
            phase: t.phase,
            carts_scanned: t.carts_scanned,
            carts_sent: t.carts_sent,
            bytes_sent: t.bytes_sent,
            waiting_for: t.waiting_for,
            waiting_reason: t.waiting_reason,
            carts_dropped: t.carts_dropped,
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "transfer {} -> {} on this node: {} ({} carts scanned, {} sent, {} bytes; {} deleted after hand-over)",
            self.from_version,
            self.to_version,
            self.phase,
            self.carts_scanned,
            self.carts_sent,
            self.bytes_sent,
            self.carts_dropped
        );
        if !self.waiting_for.is_empty() || !self.waiting_reason.is_empty() {
            out.push_str(&format!(
                "\n  waiting: {} [{}]",
                self.waiting_reason,
                self.waiting_for.join(", ")
            ));
        }
        out.push('\n');
        out
    }
}

fn staged_row(c: StagedChange) -> StagedRow {
    StagedRow {
        kind: c.kind,
        node_id: c.node_id,
        addr: c.addr,
        zone: c.zone,
        weight: c.weight,
        replaces: c.replaces,
    }
}

impl LayoutView {
    pub fn from_reply(reply: LayoutReply) -> Self {
        let current = reply.current.unwrap_or_default();
        LayoutView {
            asked_node: reply.asked_node,
            version: current.version,
            n: current.n,
            r: current.r,
            w: current.w,
            members: current
                .members
                .into_iter()
                .map(|m| MemberRow {
                    ring_share: reply.ring_shares.get(&m.node_id).copied().unwrap_or(0.0),
                    node_id: m.node_id,
                    addr: m.addr,
                    zone: m.zone,
                    weight: m.weight,
                })
                .collect(),
            moving_from: reply.previous.map(|p| p.version),
            staged: reply.staged.into_iter().map(staged_row).collect(),
            transfer: reply.transfer.map(TransferRow::from_proto),
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "layout version {} (n={} r={} w={}), as {} sees it\n",
            self.version, self.n, self.r, self.w, self.asked_node
        );
        if let Some(from) = self.moving_from {
            out.push_str(&format!(
                "carts are moving from version {from}: reads follow version {from} until every node has handed over\n"
            ));
        }
        let mut table = Table::new();
        table.load_style(presets::UTF8_BORDERS_ONLY);
        table.set_header(["node", "address", "zone", "weight", "ring share"]);
        for m in &self.members {
            table.add_row([
                m.node_id.clone(),
                m.addr.clone(),
                if m.zone.is_empty() { "-".into() } else { m.zone.clone() },
                m.weight.to_string(),
                format!("{:.1}%", m.ring_share * 100.0),
            ]);
        }
        right_align(&mut table, &[3, 4]);
        out.push_str(&format!("{table}\n"));
        if let Some(t) = &self.transfer {
            out.push_str(&t.render());
        }
        out.push_str(&render_staged(&self.staged));
        out
    }
}

fn right_align(table: &mut Table, columns: &[usize]) {
    for column in columns {
        if let Some(c) = table.column_mut(*column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn render_staged(staged: &[StagedRow]) -> String {
    if staged.is_empty() {
        return "no staged changes\n".into();
    }
    let mut out = String::from("staged changes (`cartctl cluster plan` shows their effect, `commit` applies them):\n");
    for c in staged {
        out.push_str(&match c.kind.as_str() {
            "leave" => format!("  leave   {}\n", c.node_id),
            "replace" => format!("  replace {} by {} at {}\n", c.replaces, c.node_id, c.addr),
            _ => format!(
                "  join    {} at {} zone {:?} weight {}\n",
                c.node_id, c.addr, c.zone, c.weight
            ),
        });
    }
    out
}

/// `cluster plan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    pub current_version: u64,
    pub next_version: u64,
    pub staged: Vec<StagedRow>,
    /// Per node: ring share before and after.
    pub shares: BTreeMap<String, (f64, f64)>,
    pub moves: Vec<MoveRow>,
    /// Fraction of carts whose owners change.
    pub carts_changed: f64,
    pub cluster_carts: u64,
    pub cluster_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRow {
    pub from_node: String,
    pub to_node: String,
    pub fraction: f64,
    pub carts: u64,
    pub bytes: u64,
}

impl PlanView {
    pub fn from_reply(reply: PlanLayoutReply) -> Self {
        let version = |l: Option<LayoutInfo>| l.map_or(0, |l| l.version);
        let mut shares: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (node, s) in reply.shares_before {
            shares.entry(node).or_default().0 = s;
        }
        for (node, s) in reply.shares_after {
            shares.entry(node).or_default().1 = s;
        }
        PlanView {
            current_version: version(reply.current),
            next_version: version(reply.next),
            staged: reply.staged.into_iter().map(staged_row).collect(),
            shares,
            moves: reply
                .moves
                .into_iter()
                .map(|m| MoveRow {
                    from_node: m.from_node,
                    to_node: m.to_node,
                    fraction: m.fraction,
                    carts: m.carts,
                    bytes: m.bytes,
                })
                .collect(),
            carts_changed: reply.carts_changed,
            cluster_carts: reply.cluster_carts,
            cluster_bytes: reply.cluster_bytes,
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!("plan: version {} -> {}\n", self.current_version, self.next_version);
        out.push_str(&render_staged(&self.staged));
        let mut table = Table::new();
        table.load_style(presets::UTF8_BORDERS_ONLY);
        table.set_header(["node", "ring share before", "after"]);
        for (node, (before, after)) in &self.shares {
            table.add_row([
                node.clone(),
                format!("{:.1}%", before * 100.0),
                format!("{:.1}%", after * 100.0),
            ]);
        }
        right_align(&mut table, &[1, 2]);
        out.push_str(&format!("{table}\n"));
        out.push_str(&format!(
            "{:.1}% of carts change owners; about {} carts ({} bytes) in the cluster\n",
            self.carts_changed * 100.0,
            self.cluster_carts,
            self.cluster_bytes
        ));
        let mut moves = Table::new();
        moves.load_style(presets::UTF8_BORDERS_ONLY);
        moves.set_header(["from", "to", "share of carts", "carts (est.)", "bytes (est.)"]);
        for m in &self.moves {
            moves.add_row([
                m.from_node.clone(),
                m.to_node.clone(),
                format!("{:.1}%", m.fraction * 100.0),
                m.carts.to_string(),
                m.bytes.to_string(),
            ]);
        }
        right_align(&mut moves, &[2, 3, 4]);
        out.push_str(&format!("{moves}\n"));
        out
    }
}

fn first_endpoint(endpoints: &[String]) -> Result<&String, ClientError> {
    endpoints.first().ok_or(ClientError::NoEndpoints)
}

fn with_secret<T>(message: T, secret: Option<&str>, options: &ClientOptions) -> Result<Request<T>, ClientError> {
    let mut request = options.request(message);
    if let Some(secret) = secret {
        let value: MetadataValue<Ascii> = secret.parse().map_err(|_| ClientError::Usage {
            reason: "the secret must be printable ASCII".into(),
        })?;
        request.metadata_mut().insert(SECRET_HEADER, value);
    }
    Ok(request)
}

/// Runs one `pricing` command against the first endpoint; the rendered output.
pub async fn pricing(
    cmd: crate::cli::PricingCmd,
    endpoints: &[String],
    options: &ClientOptions,
    json: bool,
) -> Result<String, ClientError> {
    use cart_proto::admin_pb::{GetPricingRequest, SetPricingRequest};
    let endpoint = first_endpoint(endpoints)?;
    let mut client = AdminServiceClient::new(lazy_channel(endpoint, options)?);
    let status = |s: tonic::Status| ClientError::status(&s, endpoint);
    let reply = match cmd {
        crate::cli::PricingCmd::Set { file, secret } => {
            let document = std::fs::read_to_string(&file).map_err(|e| ClientError::Usage {
                reason: format!("cannot read {}: {e}", file.display()),
            })?;
            let request = with_secret(SetPricingRequest { document }, Some(&secret), options)?;
            client.set_pricing(request).await.map_err(status)?.into_inner()
        }
        crate::cli::PricingCmd::Show => client
            .get_pricing(with_secret(GetPricingRequest {}, None, options)?)
            .await
            .map_err(status)?
            .into_inner(),
    };
    if json {
        return serde_json::to_string_pretty(&serde_json::json!({
            "version": reply.version,
            "document": reply.document,
        }))
        .map(|s| s + "\n")
        .map_err(|e| ClientError::Usage { reason: e.to_string() });
    }
    Ok(match reply.version {
        0 => "the cluster has no pricing rules yet (`cartctl pricing set FILE --secret S`)\n".to_owned(),
        _ => format!("# pricing rules version {}\n{}", reply.version, reply.document),
    })
}

/// Runs one `cluster` command against the first endpoint; the rendered output.
pub async fn run(
    cmd: ClusterCmd,
    endpoints: &[String],
    options: &ClientOptions,
    json: bool,
) -> Result<String, ClientError> {
    let endpoint = first_endpoint(endpoints)?;
    let mut client = AdminServiceClient::new(lazy_channel(endpoint, options)?);
    let status = |s: tonic::Status| ClientError::status(&s, endpoint);
    let stage =
        |kind: &str, node_id: String, addr: String, zone: String, weight: u32, replaces: String| StageChangeRequest {
            change: Some(StagedChange {
                kind: kind.into(),
                node_id,
                addr,
                zone,
                weight,
                replaces,
            }),
        };
    // Commits wait for a majority; give them the peer round trips they need.
    let layout = match cmd {
        ClusterCmd::Plan => {
            let reply = client
                .plan_layout(with_secret(PlanLayoutRequest {}, None, options)?)
                .await
                .map_err(status)?;
            let plan = PlanView::from_reply(reply.into_inner());
            return match json {
                true => to_json(&plan),
                false => Ok(plan.render()),
            };
        }
        ClusterCmd::Show => {
            client
                .show_layout(with_secret(ShowLayoutRequest {}, None, options)?)
                .await
        }
        ClusterCmd::Join {
            node_id,
            addr,
            zone,
            weight,
            secret,
        } => {
            let request = stage("join", node_id, addr, zone, weight, String::new());
            client.stage_change(with_secret(request, Some(&secret), options)?).await
        }
        ClusterCmd::Leave { node_id, secret } => {
            let request = stage("leave", node_id, String::new(), String::new(), 0, String::new());
            client.stage_change(with_secret(request, Some(&secret), options)?).await
        }
        ClusterCmd::Replace { old, new, addr, secret } => {
            let request = stage("replace", new, addr, String::new(), 0, old);
            client.stage_change(with_secret(request, Some(&secret), options)?).await
        }
        ClusterCmd::Commit { secret } => {
            let mut request = with_secret(CommitLayoutRequest {}, Some(&secret), options)?;
            request.set_timeout(options.request_timeout * 3);
            client.commit_layout(request).await
        }
        ClusterCmd::Discard { secret } => {
            client
                .discard_staged(with_secret(DiscardStagedRequest {}, Some(&secret), options)?)
                .await
        }
    };
    let view = LayoutView::from_reply(layout.map_err(status)?.into_inner());
    match json {
        true => to_json(&view),
        false => Ok(view.render()),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, ClientError> {
    serde_json::to_string_pretty(value).map_err(|e| ClientError::Output { reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cart_proto::admin_pb::Member;

    fn reply() -> LayoutReply {
        LayoutReply {
            asked_node: "n1".into(),
            current: Some(LayoutInfo {
                version: 3,
                members: vec![Member {
                    node_id: "n1".into(),
                    addr: "127.0.0.1:7001".into(),
                    weight: 2,
                    zone: "a".into(),
                }],
                n: 1,
                r: 1,
                w: 1,
                retired: Vec::new(),
            }),
            previous: Some(LayoutInfo {
                version: 2,
                ..LayoutInfo::default()
            }),
            staged: vec![StagedChange {
                kind: "leave".into(),
                node_id: "n9".into(),
                ..StagedChange::default()
            }],
            transfer: None,
            ring_shares: [("n1".to_string(), 1.0)].into_iter().collect(),
        }
    }

    #[test]
    fn show_renders_members_transfer_state_and_staged_changes() {
        let view = LayoutView::from_reply(reply());
        let text = view.render();
        assert!(text.contains("layout version 3"), "{text}");
        assert!(text.contains("moving from version 2"), "{text}");
        assert!(text.contains("100.0%") && text.contains("leave   n9"), "{text}");
        let json = to_json(&view).unwrap();
        assert_eq!(serde_json::from_str::<LayoutView>(&json).unwrap(), view);
    }

    #[test]
    fn cluster_commands_parse() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "cartctl",
            "cluster",
            "join",
            "n4",
            "127.0.0.1:7004",
            "--zone",
            "b",
            "--secret",
            "s3cret-s3cret",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            crate::cli::Command::Cluster(ClusterCmd::Join { ref node_id, ref zone, weight: 1, .. }) if node_id == "n4" && zone == "b"
        ));
        assert!(
            crate::cli::Cli::try_parse_from(["cartctl", "cluster", "commit"]).is_err(),
            "commit needs the secret"
        );
    }
}
