//! `cartctl`: the operator's command line. Parsing is clap's; each command is one client call;
//! output is a readable table or, with `--json`, the same as JSON.
//!
//! - `cartctl cart …` reads and changes carts through a [`CartClient`]; `cart get ID --local`
//!   shows the asked node's own replica (no quorum, no read repair: what anti-entropy sees).
//! - `cartctl status` asks the first endpoint that answers for `AdminService.ClusterStatus`: one
//!   row per node as that node sees it (up or down, share of the ring, hints it holds for it).
//! - `cartctl cluster …` changes the membership (see [`crate::cluster_cli`]).
//! - `cartctl hints discard --secret SECRET` drops every hint the asked node holds. An operator
//!   action, for a backlog that can never be delivered (a node removed for good): afterwards only
//!   anti-entropy repairs those owners. It needs the cluster secret and acts on exactly one node.

use std::time::{Duration, UNIX_EPOCH};

use cart_crdt::{format_money, CartView, ItemSnapshot};
use cart_proto::admin_pb::admin_service_client::AdminServiceClient;
use cart_proto::admin_pb::{ClusterStatusReply, ClusterStatusRequest, DiscardHintsRequest, LocalReadRequest};
use cart_proto::SECRET_HEADER;
use clap::{Args, Parser, Subcommand};
use comfy_table::{presets, CellAlignment, Table};
use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::Code;

use crate::client::lazy_channel;
use crate::cluster_cli::{ClusterCmd, TransferRow};
use crate::{CartClient, ClientError, ClientOptions, Consistency, OrderView};

#[derive(Debug, Parser)]
#[command(
    name = "cartctl",
    version,
    about = "cartdb command line: read and change carts, see the cluster"
)]
pub struct Cli {
    /// Node to talk to, HOST:PORT; repeat for failover. Cart commands learn the cluster from it and
    /// go to each cart's owners; `status` asks the first that answers; `hints discard` needs one.
    #[arg(long = "endpoint", global = true, default_value = "127.0.0.1:7001")]
    pub endpoints: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline per attempt, in milliseconds.
    #[arg(long, global = true, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Read quorum override (0 = cluster default).
    #[arg(long, global = true, default_value_t = 0)]
    pub r: u32,
    /// Write quorum override (0 = cluster default).
    #[arg(long, global = true, default_value_t = 0)]
    pub w: u32,
    /// Price the cart for this region of the cluster's pricing rules (`DE`, `US-CA`; `""`: no
    /// tax or shipping): discounts, tax, shipping and total print under the lines.
    #[arg(long, global = true)]
    pub region: Option<String>,
    #[command(flatten)]
    pub security: crate::SecurityArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read and change carts.
    #[command(subcommand)]
    Cart(CartCmd),
    /// The cluster as the first endpoint that answers sees it: nodes, up/down, ring shares, hints.
    Status,
    /// Hinted-handoff maintenance (operator actions).
    #[command(subcommand)]
    Hints(HintsCmd),
    /// Membership: show the layout, stage join/leave/replace, plan, commit (operator actions).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The cluster's pricing rules: coupons, tax and shipping per region.
    #[command(subcommand)]
    Pricing(PricingCmd),
}

#[derive(Debug, Subcommand)]
pub enum PricingCmd {
    /// Set FILE (TOML, README "Pricing") as the next version of the rules, agreed by a majority
    /// of the members; a bad document is refused whole, naming the key.
    Set {
        file: std::path::PathBuf,
        /// The cluster secret (`[cluster] secret`).
        #[arg(long, env = "CARTDB_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Print the current rules (TOML, with their version).
    Show,
}

#[derive(Debug, Subcommand)]
pub enum HintsCmd {
    /// Drop every hint the asked node holds (give exactly one --endpoint). The hints' owners then
    /// miss those writes until anti-entropy repairs them. Needs the cluster secret.
    Discard {
        /// The cluster secret (`[cluster] secret`).
        #[arg(long, env = "CARTDB_SECRET", hide_env_values = true)]
        secret: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CartCmd {
    /// Show a cart.
    Get {
        id: String,
        /// The replica of the one --endpoint given, as stored there: no quorum read, no read
        /// repair (to see what a node holds, e.g. before and after anti-entropy).
        #[arg(long)]
        local: bool,
    },
    /// Add a quantity of a product.
    Add(AddArgs),
    /// Set a line's quantity (0 removes it).
    Set { id: String, product: String, qty: u32 },
    /// Add a signed delta to a line's quantity (`--delta=-2` to take two away).
    Adjust {
        id: String,
        product: String,
        #[arg(long, allow_hyphen_values = true)]
        delta: i64,
    },
    /// Remove a line.
    Remove { id: String, product: String },
    /// Remove every line and coupon (saved-for-later stays).
    Clear { id: String },
    /// Move a line to saved-for-later.
    Save { id: String, product: String },
    /// Move a saved item back into the cart.
    Move { id: String, product: String },
    /// Apply or remove a coupon.
    #[command(subcommand)]
    Coupon(CouponCmd),
    /// Push a product's current catalogue data into the cart (its line or saved item shows it
    /// beside the add-time price; `--unavailable` keeps it out of the totals).
    Refresh(RefreshArgs),
    /// Merge a guest cart into a user cart (at login). Safe to repeat.
    Merge {
        guest: String,
        user: String,
        /// merge: guest lines join the user's (a product in both takes the larger quantity);
        /// replace: the guest cart's lines and coupons replace the user's.
        #[arg(long, value_enum, default_value_t = MergeModeArg::Merge)]
        mode: MergeModeArg,
    },
    /// Check out the lines a version of the cart showed (default: the cart as read now).
    Checkout {
        id: String,
        /// A version token from `cartctl cart get` (or any reply); without it, the current cart.
        #[arg(long)]
        version: Option<String>,
        /// Makes the checkout once-only: repeat with the same id to get the same order back
        /// (default: a fresh id).
        #[arg(long)]
        request_id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeModeArg {
    Merge,
    Replace,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    pub id: String,
    pub product: String,
    #[arg(long, default_value_t = 1)]
    pub qty: u32,
    /// Item name as shown to the customer.
    #[arg(long)]
    pub name: String,
    /// Unit price in minor units (1299 = 12.99 EUR).
    #[arg(long)]
    pub price: u64,
    /// ISO 4217 code, e.g. EUR.
    #[arg(long)]
    pub currency: String,
    #[arg(long)]
    pub image_url: Option<String>,
    /// Item attribute KEY=VALUE; repeatable.
    #[arg(long = "attr", value_parser = parse_attr)]
    pub attrs: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
pub struct RefreshArgs {
    #[command(flatten)]
    pub item: AddArgs,
    /// The catalogue's version of this data (≥ 1): the highest wins.
    #[arg(long)]
    pub catalog_version: u64,
    /// The product can no longer be bought.
    #[arg(long)]
    pub unavailable: bool,
}

#[derive(Debug, Subcommand)]
pub enum CouponCmd {
    Add { id: String, code: String },
    Remove { id: String, code: String },
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Runs one parsed command and returns what to print.
pub async fn run(cli: Cli) -> Result<String, ClientError> {
    let options = ClientOptions {
        request_timeout: Duration::from_millis(cli.timeout_ms),
        consistency: Consistency {
            r: (cli.r > 0).then_some(cli.r),
            w: (cli.w > 0).then_some(cli.w),
        },
        credentials: cli.security.credentials()?,
        ..ClientOptions::default()
    };
    match cli.command {
        Command::Cart(CartCmd::Get { id, local: true }) => {
            let (endpoint, cart) = local_cart(&cli.endpoints, &options, &id).await?;
            match (cli.json, cart) {
                (true, cart) => to_json(&cart),
                (false, Some(cart)) => Ok(render(&cart)),
                (false, None) => Ok(format!("{endpoint} holds no replica of {id}\n")),
            }
        }
        Command::Cart(CartCmd::Merge { guest, user, mode }) => {
            let client = CartClient::connect_with(&cli.endpoints, options).await?;
            let mode = match mode {
                MergeModeArg::Merge => crate::MergeMode::Merge,
                MergeModeArg::Replace => crate::MergeMode::Replace,
            };
            let (user_cart, guest_cart) = client.merge_carts(&guest, &user, mode).await?;
            if cli.json {
                return to_json(&serde_json::json!({ "cart": user_cart, "guest": guest_cart }));
            }
            Ok(format!("{}\n{}", render(&user_cart), render(&guest_cart)))
        }
        Command::Cart(CartCmd::Checkout {
            id,
            version,
            request_id,
        }) => {
            let client = CartClient::connect_with(&cli.endpoints, options).await?;
            let version = match version {
                Some(v) => v,
                None => client.get_cart(&id).await?.version,
            };
            let request_id = request_id.unwrap_or_else(crate::new_request_id);
            let (order, cart) = client.checkout(&id, &version, &request_id).await?;
            if cli.json {
                return to_json(&serde_json::json!({ "request_id": request_id, "order": order, "cart": cart }));
            }
            Ok(format!("{}\n{}", render_order(&order, &request_id), render(&cart)))
        }
        Command::Cart(cmd) => {
            let mut client = CartClient::connect_with(&cli.endpoints, options).await?;
            if let Some(region) = &cli.region {
                client = client.priced(region);
            }
            let cart = run_cart(&client, cmd).await?;
            if cli.json {
                to_json(&cart)
            } else {
                Ok(render(&cart))
            }
        }
        Command::Status => {
            let status = cluster_status(&cli.endpoints, &options).await?;
            if cli.json {
                to_json(&status)
            } else {
                Ok(render_status(&status))
            }
        }
        Command::Cluster(cmd) => crate::cluster_cli::run(cmd, &cli.endpoints, &options, cli.json).await,
        Command::Pricing(cmd) => crate::cluster_cli::pricing(cmd, &cli.endpoints, &options, cli.json).await,
        Command::Hints(HintsCmd::Discard { secret }) => {
            let discarded = discard_hints(&cli.endpoints, &options, &secret).await?;
            if cli.json {
                to_json(&discarded)
            } else {
                Ok(format!(
                    "{} discarded {} hint(s); anti-entropy will repair their owners\n",
                    discarded.endpoint, discarded.discarded
                ))
            }
        }
    }
}

async fn run_cart(client: &CartClient, cmd: CartCmd) -> Result<CartView, ClientError> {
    match cmd {
        CartCmd::Get { id, .. } => client.get_cart(&id).await,
        CartCmd::Add(a) => {
            let mut snapshot = ItemSnapshot::new(a.name, a.price, a.currency);
            snapshot.image_url = a.image_url;
            snapshot.attributes.extend(a.attrs);
            client.add_item(&a.id, &a.product, a.qty, snapshot).await
        }
        CartCmd::Set { id, product, qty } => client.set_quantity(&id, &product, qty).await,
        CartCmd::Adjust { id, product, delta } => client.adjust_quantity(&id, &product, delta).await,
        CartCmd::Remove { id, product } => client.remove_item(&id, &product).await,
        CartCmd::Clear { id } => client.clear_cart(&id).await,
        CartCmd::Save { id, product } => client.save_for_later(&id, &product).await,
        CartCmd::Move { id, product } => client.move_to_cart(&id, &product).await,
        CartCmd::Coupon(CouponCmd::Add { id, code }) => client.apply_coupon(&id, &code).await,
        CartCmd::Coupon(CouponCmd::Remove { id, code }) => client.remove_coupon(&id, &code).await,
        CartCmd::Refresh(r) => {
            let a = r.item;
            let mut snapshot = ItemSnapshot::new(a.name, a.price, a.currency);
            snapshot.image_url = a.image_url;
            snapshot.attributes.extend(a.attrs);
            let item = crate::RefreshedItem {
                product_id: a.product,
                snapshot,
                available: !r.unavailable,
                catalog_version: r.catalog_version,
            };
            client.refresh_items(&a.id, vec![item]).await
        }
        CartCmd::Merge { user, .. } | CartCmd::Checkout { id: user, .. } => Err(ClientError::Usage {
            reason: format!("{user}: merge and checkout are run by `run`"),
        }),
    }
}

/// The human-readable form of an order.
pub fn render_order(order: &OrderView, request_id: &str) -> String {
    let mut out = format!("order (request id {request_id})\n");
    let mut table = Table::new();
    table.load_style(presets::UTF8_BORDERS_ONLY);
    table.set_header(["product", "name", "qty", "unit price"]);
    for line in &order.lines {
        let s = &line.snapshot;
        table.add_row([
            line.product_id.clone(),
            s.name.clone(),
            line.quantity.to_string(),
            format_money(i64::try_from(s.unit_price_minor).unwrap_or(i64::MAX), &s.currency),
        ]);
    }
    out.push_str(&format!("{table}\n"));
    for money in &order.totals {
        out.push_str(&format!("total: {}\n", money.display()));
    }
    if !order.coupons.is_empty() {
        out.push_str(&format!("coupons: {}\n", order.coupons.join(", ")));
    }
    out
}

fn to_json<T: Serialize>(value: &T) -> Result<String, ClientError> {
    serde_json::to_string_pretty(value).map_err(|e| ClientError::Output { reason: e.to_string() })
}

/// `cartctl status`: the cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered, and the endpoint it was asked at.
    pub asked_node: String,
    pub endpoint: String,
    pub nodes: Vec<NodeRow>,
    /// Every hint the asked node holds.
    pub hint_backlog: u64,
    /// The asked node's newest layout version.
    #[serde(default)]
    pub layout_version: u64,
    /// The asked node's part of a layout change in progress.
    #[serde(default)]
    pub transfer: Option<TransferRow>,
    /// False while the asked node waits to be added (started with `--join`).
    #[serde(default = "yes")]
    pub asked_is_member: bool,
    /// The asked node's anti-entropy digests are built (not rebuilding), over this many carts.
    #[serde(default)]
    pub digests_ready: bool,
    #[serde(default)]
    pub digest_carts: u64,
    /// Not ready because they move to a new layout (rather than rebuild at start).
    #[serde(default)]
    pub digests_moving: bool,
}

fn yes() -> bool {
    true
}

/// One node as the asked node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node_id: String,
    pub addr: String,
    /// As seen by the asked node (always true for itself).
    pub up: bool,
    /// Fraction (0–1) of the hash space this node is the first owner of.
    pub ring_share: f64,
    /// Hints the asked node holds for this node.
    pub hints_held: u64,
    #[serde(default)]
    pub zone: String,
    /// The layout version this node last reported, and the one it has handed its carts over for.
    #[serde(default)]
    pub layout_version: u64,
    #[serde(default)]
    pub synced_version: u64,
    /// The asked node's last anti-entropy exchange with this node: ms ago (-1: none yet), how
    /// long it took, carts differing and repaired, its error.
    #[serde(default)]
    pub ae_last_ms_ago: i64,
    #[serde(default)]
    pub ae_took_ms: u64,
    #[serde(default)]
    pub ae_differing: u64,
    #[serde(default)]
    pub ae_repaired: u64,
    #[serde(default)]
    pub ae_error: String,
    /// Why the node's storage takes no writes (empty: it does); the state then reads "degraded".
    #[serde(default)]
    pub degraded: String,
}

impl ClusterStatus {
    pub fn from_reply(reply: ClusterStatusReply, endpoint: &str) -> Self {
        ClusterStatus {
            asked_node: reply.asked_node,
            endpoint: endpoint.to_owned(),
            nodes: reply
                .nodes
                .into_iter()
                .map(|n| NodeRow {
                    node_id: n.node_id,
                    addr: n.addr,
                    up: n.up,
                    ring_share: n.ring_share,
                    hints_held: n.hints_held,
                    zone: n.zone,
                    layout_version: n.layout_version,
                    synced_version: n.synced_version,
                    ae_last_ms_ago: n.ae_last_ms_ago,
                    ae_took_ms: n.ae_took_ms,
                    ae_differing: n.ae_differing,
                    ae_repaired: n.ae_repaired,
                    ae_error: n.ae_error,
                    degraded: n.degraded,
                })
                .collect(),
            hint_backlog: reply.hint_backlog,
            layout_version: reply.layout_version,
            transfer: reply.transfer.map(TransferRow::from_proto),
            asked_is_member: reply.asked_is_member,
            digests_ready: reply.digests_ready,
            digest_carts: reply.digest_carts,
            digests_moving: reply.digests_moving,
        }
    }
}

/// Whether an admin call's failure means "this node did not answer: ask the next one".
fn unanswered(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// `ClusterStatus` from the first endpoint that answers.
async fn cluster_status(endpoints: &[String], options: &ClientOptions) -> Result<ClusterStatus, ClientError> {
    let mut last_error = ClientError::NoEndpoints;
    for endpoint in endpoints {
        let mut client = AdminServiceClient::new(lazy_channel(endpoint, options)?);
        let request = options.request(ClusterStatusRequest {});
        match client.cluster_status(request).await {
            Ok(reply) => return Ok(ClusterStatus::from_reply(reply.into_inner(), endpoint)),
            Err(status) if unanswered(status.code()) => last_error = ClientError::status(&status, endpoint),
            Err(status) => return Err(ClientError::status(&status, endpoint)),
        }
    }
    Err(last_error)
}

/// What `cartctl hints discard` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discarded {
    pub endpoint: String,
    pub discarded: u64,
}

/// The one endpoint of a command that acts on one node (no failover).
fn one_endpoint<'a>(endpoints: &'a [String], command: &str) -> Result<&'a String, ClientError> {
    match endpoints {
        [endpoint] => Ok(endpoint),
        _ => Err(ClientError::Usage {
            reason: format!(
                "{command} acts on one node: give exactly one --endpoint (got {})",
                endpoints.len()
            ),
        }),
    }
}

/// `LocalRead` on the one endpoint given: that node's replica of `id` (`None`: it holds none).
async fn local_cart(
    endpoints: &[String],
    options: &ClientOptions,
    id: &str,
) -> Result<(String, Option<CartView>), ClientError> {
    let endpoint = one_endpoint(endpoints, "cart get --local")?;
    let mut client = AdminServiceClient::new(lazy_channel(endpoint, options)?);
    let request = options.request(LocalReadRequest { cart_id: id.into() });
    let reply = client
        .local_read(request)
        .await
        .map_err(|status| ClientError::status(&status, endpoint))?
        .into_inner();
    Ok((
        endpoint.clone(),
        reply.cart.filter(|_| reply.present).map(CartView::from),
    ))
}

/// `DiscardHints` on the one endpoint given: hints belong to a node, so no failover.
async fn discard_hints(endpoints: &[String], options: &ClientOptions, secret: &str) -> Result<Discarded, ClientError> {
    let endpoint = one_endpoint(endpoints, "hints discard")?;
    let secret: MetadataValue<Ascii> = secret.parse().map_err(|_| ClientError::Usage {
        reason: "the secret must be printable ASCII".into(),
    })?;
    let mut client = AdminServiceClient::new(lazy_channel(endpoint, options)?);
    let mut request = options.request(DiscardHintsRequest {});
    request.metadata_mut().insert(SECRET_HEADER, secret);
    let reply = client
        .discard_hints(request)
        .await
        .map_err(|status| ClientError::status(&status, endpoint))?;
    Ok(Discarded {
        endpoint: endpoint.clone(),
        discarded: reply.into_inner().discarded,
    })
}

/// The human-readable form of a cluster status.
pub fn render_status(status: &ClusterStatus) -> String {
    let mut out = format!(
        "cluster as seen by {} (asked at {}), layout version {}\n",
        status.asked_node, status.endpoint, status.layout_version
    );
    if !status.asked_is_member {
        out.push_str("the asked node is not a member yet: add it with `cartctl cluster join`\n");
    }
    let mut table = Table::new();
    table.load_style(presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "node",
        "address",
        "zone",
        "state",
        "ring share",
        "hints held",
        "layout/synced",
        "last anti-entropy",
    ]);
    for node in &status.nodes {
        table.add_row([
            node.node_id.clone(),
            node.addr.clone(),
            if node.zone.is_empty() {
                "-".into()
            } else {
                node.zone.clone()
            },
            match (node.up, node.degraded.is_empty()) {
                (false, _) => "down",
                (true, true) => "up",
                (true, false) => "degraded",
            }
            .to_owned(),
            format!("{:.1}%", node.ring_share * 100.0),
            node.hints_held.to_string(),
            format!("{}/{}", node.layout_version, node.synced_version),
            render_exchange(node),
        ]);
    }
    for column in [4, 5, 6] {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    out.push_str(&format!("{table}\n"));
    out.push_str(&format!("hint backlog: {}\n", status.hint_backlog));
    out.push_str(&format!(
        "anti-entropy digests: {} ({} carts)\n",
        match (status.digests_ready, status.digests_moving) {
            (true, _) => "built",
            (false, true) => "moving to the new layout",
            (false, false) => "rebuilding",
        },
        status.digest_carts
    ));
    for node in status.nodes.iter().filter(|n| !n.degraded.is_empty()) {
        out.push_str(&format!("{} takes no writes: {}\n", node.node_id, node.degraded));
    }
    if let Some(t) = &status.transfer {
        out.push_str(&t.render());
    }
    out
}

/// The asked node's last exchange with a node: "2.1s ago, 3 ms, 0 differing".
fn render_exchange(node: &NodeRow) -> String {
    match (node.ae_last_ms_ago, node.ae_error.is_empty()) {
        (ms, _) if ms < 0 => "-".into(),
        (ms, true) => format!(
            "{:.1}s ago, {} ms, {} differing, {} repaired",
            ms as f64 / 1e3,
            node.ae_took_ms,
            node.ae_differing,
            node.ae_repaired
        ),
        (ms, false) => format!("{:.1}s ago, failed: {}", ms as f64 / 1e3, node.ae_error),
    }
}

/// The human-readable form of a cart.
pub fn render(cart: &CartView) -> String {
    let owner = match cart.owner {
        cart_crdt::OwnerKind::User => "user",
        cart_crdt::OwnerKind::Guest => "guest",
    };
    let touched = if cart.touched_at_ms == 0 {
        "never written".to_owned()
    } else {
        format!(
            "touched {}",
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(cart.touched_at_ms))
        )
    };
    let mut out = format!("cart {} ({owner}, {touched})\n", cart.cart_id);
    if cart.expires_at_ms > 0 {
        out.push_str(&format!(
            "expires {} unless changed\n",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(cart.expires_at_ms))
        ));
    }
    if let Some(user) = &cart.merged_into {
        out.push_str(&format!("merged into {user}\n"));
    }
    if cart.lines.is_empty() {
        out.push_str("(no items)\n");
    } else {
        let mut table = Table::new();
        table.load_style(presets::UTF8_BORDERS_ONLY);
        table.set_header(["product", "name", "qty", "unit price", "line total"]);
        for line in &cart.lines {
            let s = &line.snapshot;
            let total = i64::try_from(u128::from(line.quantity) * u128::from(s.unit_price_minor)).unwrap_or(i64::MAX);
            table.add_row([
                line.product_id.clone(),
                s.name.clone(),
                line.quantity.to_string(),
                format_money(i64::try_from(s.unit_price_minor).unwrap_or(i64::MAX), &s.currency),
                format_money(total, &s.currency),
            ]);
        }
        out.push_str(&format!("{table}\n"));
        for line in &cart.lines {
            if let Some(c) = &line.current {
                out.push_str(&render_current(&line.product_id, c));
            }
        }
    }
    for money in &cart.subtotals {
        out.push_str(&format!("subtotal: {}\n", money.display()));
    }
    if !cart.coupons.is_empty() {
        out.push_str(&format!("coupons: {}\n", cart.coupons.join(", ")));
    }
    if let Some(pricing) = &cart.pricing {
        out.push_str(&render_pricing(pricing));
    }
    for saved in &cart.saved {
        out.push_str(&format!(
            "saved for later: {} × {} ({})\n",
            saved.quantity, saved.snapshot.name, saved.product_id
        ));
        if let Some(c) = &saved.current {
            out.push_str(&format!("  {}", render_current(&saved.product_id, c)));
        }
    }
    if !cart.version.is_empty() && !cart.lines.is_empty() {
        out.push_str(&format!("version: {}\n", cart.version));
    }
    out
}

/// What a refresh says of a line or saved item now.
fn render_current(product_id: &str, c: &crate::Current) -> String {
    let price = format_money(
        i64::try_from(c.snapshot.unit_price_minor).unwrap_or(i64::MAX),
        &c.snapshot.currency,
    );
    let mut flags = Vec::new();
    if c.price_changed {
        flags.push("price changed");
    }
    if !c.available {
        flags.push("unavailable: not in the totals");
    }
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(" ({})", flags.join(", "))
    };
    format!(
        "{product_id} now: {price}, catalogue version {}{flags}\n",
        c.catalog_version
    )
}

/// The pricing summary under a cart's lines: per currency, each step down to the total.
pub fn render_pricing(p: &cart_crdt::pricing::PricingSummary) -> String {
    let region = if p.region.is_empty() {
        "no region"
    } else {
        p.region.as_str()
    };
    let mut out = format!("priced for {region} (pricing rules version {})\n", p.rules_version);
    for c in &p.currencies {
        let money = |v: u64| format_money(i64::try_from(v).unwrap_or(i64::MAX), &c.currency);
        let mut table = Table::new();
        table.load_style(presets::NOTHING);
        table.add_row(["subtotal".to_owned(), money(c.subtotal)]);
        for d in &c.discounts {
            let what = if d.free_shipping && d.amount == 0 {
                format!("coupon {} (free shipping)", d.code)
            } else {
                format!("coupon {}", d.code)
            };
            table.add_row([what, format!("-{}", money(d.amount))]);
        }
        if c.tax_included > 0 || c.tax == 0 {
            table.add_row(["tax (included)".to_owned(), money(c.tax_included)]);
        }
        if c.tax > 0 {
            table.add_row(["tax".to_owned(), money(c.tax)]);
        }
        table.add_row(["shipping".to_owned(), money(c.shipping)]);
        table.add_row(["total".to_owned(), money(c.total)]);
        out.push_str(&format!("{table}\n"));
        for n in &c.not_applied {
            out.push_str(&format!("  coupon {} not applied: {}\n", n.code, n.reason));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn status() -> ClusterStatus {
        let row = |id: &str, up, share, hints| NodeRow {
            node_id: id.into(),
            addr: format!("127.0.0.1:700{}", &id[1..]),
            up,
            ring_share: share,
            hints_held: hints,
            zone: String::new(),
            layout_version: 2,
            synced_version: 2,
            ae_last_ms_ago: -1,
            ae_took_ms: 0,
            ae_differing: 0,
            ae_repaired: 0,
            ae_error: String::new(),
            degraded: String::new(),
        };
        ClusterStatus {
            asked_node: "n1".into(),
            endpoint: "127.0.0.1:7001".into(),
            nodes: vec![
                row("n1", true, 0.3349, 0),
                row("n2", true, 0.33, 0),
                row("n3", false, 0.3351, 42),
            ],
            hint_backlog: 42,
            layout_version: 2,
            transfer: None,
            asked_is_member: true,
            digests_ready: true,
            digest_carts: 42,
            digests_moving: false,
        }
    }

    #[test]
    fn status_renders_a_row_per_node_with_state_share_and_hints() {
        let out = render_status(&status());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "cluster as seen by n1 (asked at 127.0.0.1:7001), layout version 2"
        );
        assert_eq!(lines[lines.len() - 2], "hint backlog: 42");
        assert_eq!(lines.last(), Some(&"anti-entropy digests: built (42 carts)"));
        let row = |id: &str| {
            lines
                .iter()
                .map(|l| l.split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>())
                .find(|words| words.first() == Some(&id))
                .unwrap_or_else(|| panic!("no row for {id}:\n{out}"))
        };
        assert_eq!(row("n1"), ["n1", "127.0.0.1:7001", "-", "up", "33.5%", "0", "2/2", "-"]);
        assert_eq!(row("n2"), ["n2", "127.0.0.1:7002", "-", "up", "33.0%", "0", "2/2", "-"]);
        assert_eq!(
            row("n3"),
            ["n3", "127.0.0.1:7003", "-", "down", "33.5%", "42", "2/2", "-"]
        );
    }

    #[test]
    fn status_json_round_trips() {
        let json = to_json(&status()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["asked_node"], "n1");
        assert_eq!(value["nodes"][2]["up"], false);
        assert_eq!(value["nodes"][2]["hints_held"], 42);
        assert_eq!(serde_json::from_str::<ClusterStatus>(&json).unwrap(), status());
    }

    #[test]
    fn status_comes_from_the_wire_reply() {
        let reply = ClusterStatusReply {
            asked_node: "n2".into(),
            nodes: vec![cart_proto::admin_pb::NodeStatus {
                node_id: "n2".into(),
                addr: "10.0.0.2:7001".into(),
                up: true,
                ring_share: 1.0,
                hints_held: 0,
                ..Default::default()
            }],
            hint_backlog: 0,
            ..Default::default()
        };
        let status = ClusterStatus::from_reply(reply, "10.0.0.2:7001");
        assert_eq!(status.nodes[0].ring_share, 1.0);
        assert!(render_status(&status).contains("100.0%"));
    }

    #[test]
    fn status_and_hints_discard_parse() {
        let cli = Cli::try_parse_from(["cartctl", "status", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status) && cli.json);
        let cli = Cli::try_parse_from(["cartctl", "hints", "discard", "--secret", "s3cret-s3cret"]).unwrap();
        assert!(matches!(cli.command, Command::Hints(HintsCmd::Discard { ref secret }) if secret == "s3cret-s3cret"));
    }

    #[tokio::test]
    async fn hints_discard_refuses_several_endpoints_before_calling_anyone() {
        let cli = Cli::try_parse_from([
            "cartctl",
            "--endpoint",
            "127.0.0.1:1",
            "--endpoint",
            "127.0.0.1:2",
            "hints",
            "discard",
            "--secret",
            "s3cret-s3cret",
        ])
        .unwrap();
        let err = run(cli).await.unwrap_err();
        assert!(matches!(err, ClientError::Usage { .. }), "{err}");
        assert!(err.to_string().contains("exactly one --endpoint"), "{err}");
    }
}
