//! `cartctl`: the operator's command line. Parsing is clap's; each command is one client call;
//! output is a readable table or, with `--json`, the cart as JSON.

use std::time::{Duration, UNIX_EPOCH};

use cart_crdt::{format_money, CartView, ItemSnapshot};
use clap::{Args, Parser, Subcommand};
use comfy_table::{presets, Table};

use crate::{CartClient, ClientError, ClientOptions, Consistency};

#[derive(Debug, Parser)]
#[command(name = "cartctl", version, about = "cartdb command line: read and change carts")]
pub struct Cli {
    /// Node to talk to, HOST:PORT; repeat for failover.
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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read and change carts.
    #[command(subcommand)]
    Cart(CartCmd),
}

#[derive(Debug, Subcommand)]
pub enum CartCmd {
    /// Show a cart.
    Get { id: String },
    /// Add a quantity of a product.
    Add(AddArgs),
    /// Set a line's quantity (0 removes it).
    Set { id: String, product: String, qty: u32 },
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
        ..ClientOptions::default()
    };
    let client = CartClient::connect_with(&cli.endpoints, options).await?;
    let Command::Cart(cmd) = cli.command;
    let cart = match cmd {
        CartCmd::Get { id } => client.get_cart(&id).await?,
        CartCmd::Add(a) => {
            let mut snapshot = ItemSnapshot::new(a.name, a.price, a.currency);
            snapshot.image_url = a.image_url;
            snapshot.attributes.extend(a.attrs);
            client.add_item(&a.id, &a.product, a.qty, snapshot).await?
        }
        CartCmd::Set { id, product, qty } => client.set_quantity(&id, &product, qty).await?,
        CartCmd::Remove { id, product } => client.remove_item(&id, &product).await?,
        CartCmd::Clear { id } => client.clear_cart(&id).await?,
        CartCmd::Save { id, product } => client.save_for_later(&id, &product).await?,
        CartCmd::Move { id, product } => client.move_to_cart(&id, &product).await?,
        CartCmd::Coupon(CouponCmd::Add { id, code }) => client.apply_coupon(&id, &code).await?,
        CartCmd::Coupon(CouponCmd::Remove { id, code }) => client.remove_coupon(&id, &code).await?,
    };
    if cli.json {
        serde_json::to_string_pretty(&cart).map_err(|e| ClientError::Output { reason: e.to_string() })
    } else {
        Ok(render(&cart))
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
    }
    for money in &cart.subtotals {
        out.push_str(&format!("subtotal: {}\n", money.display()));
    }
    if !cart.coupons.is_empty() {
        out.push_str(&format!("coupons: {}\n", cart.coupons.join(", ")));
    }
    for saved in &cart.saved {
        out.push_str(&format!(
            "saved for later: {} × {} ({})\n",
            saved.quantity, saved.snapshot.name, saved.product_id
        ));
    }
    out
}
