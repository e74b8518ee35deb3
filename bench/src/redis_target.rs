//! Redis as a storefront team would use it for carts: the peer cartdb is compared with.
//!
//! Data model (one Redis server, no replication):
//! - `cart:<cart id>` is a hash. Field `<product id>` holds the line's quantity; field
//!   `item:<product id>` holds the item snapshot as JSON (`name`, `unit_price_minor`, `currency`:
//!   what cartdb stores for the line). One `HGETALL` returns the whole cart.
//! - `cart:<cart id>:coupons` is a set of coupon codes.
//!
//! Operations (each one round trip):
//!
//! | op | commands | NOT_FOUND when |
//! |---|---|---|
//! | GetCart | pipeline `HGETALL cart:<id>`, `SMEMBERS cart:<id>:coupons` | never |
//! | AddItem | `MULTI`, `HINCRBY cart:<id> <sku> <qty>`, `HSET cart:<id> item:<sku> <json>`, `EXEC` | never |
//! | SetQuantity n > 0 | `HSET cart:<id> <sku> <n>` | never (unlike cartdb, which refuses a line it does not hold) |
//! | SetQuantity 0 | `HDEL cart:<id> <sku> item:<sku>` | nothing was deleted |
//! | RemoveItem | `HDEL cart:<id> <sku> item:<sku>` | nothing was deleted (cartdb: NOT_FOUND) |
//! | ApplyCoupon | `SADD cart:<id>:coupons <code>` | never |
//! | RemoveCoupon | `SREM cart:<id>:coupons <code>` | nothing was removed (cartdb: NOT_FOUND) |
//!
//! GetCart also reads the coupons because cartdb's GetCart returns them; AddItem is a MULTI/EXEC
//! transaction so a quantity never exists without its snapshot. cartdb's writes answer with the
//! whole cart; these answer with counts, so a large cart costs Redis nothing extra on the reply.
//!
//! Connections: a small pool of multiplexed connections (`--redis-connections`, default 4), used
//! round robin. A multiplexed connection pipelines every concurrent request over one socket (no
//! request waits for another's reply before being sent), which is how `redis-rs` is meant to be
//! shared; a few of them spread the client-side socket and parsing work over the runtime's
//! threads, as a fleet of storefront instances would. The response timeout is 2 s, the cartdb
//! client's per-attempt deadline (`redis-rs` would otherwise fail requests after 500 ms).
//!
//! The mapping from [`Op`] to commands ([`RedisCall::of`]) and from replies to an [`Outcome`]
//! ([`RedisCall::outcome`]) are pure functions, tested without a server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};

use crate::error::BenchError;
use crate::target::{Outcome, Target};
use crate::workload::{Op, Sku};

/// Default size of the connection pool.
pub const DEFAULT_REDIS_CONNECTIONS: usize = 4;

/// How long a request may wait for its reply (the cartdb client's per-attempt deadline).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Currency of every bench item (as in the cartdb target).
pub const CURRENCY: &str = "EUR";

/// The hash holding a cart's lines.
pub fn cart_key(cart_id: &str) -> String {
    format!("cart:{cart_id}")
}

/// The set holding a cart's coupon codes.
pub fn coupons_key(cart_id: &str) -> String {
    format!("cart:{cart_id}:coupons")
}

/// The hash field holding a line's item snapshot (the quantity's field is the product id itself).
pub fn snapshot_field(product_id: &str) -> String {
    format!("item:{product_id}")
}

/// The snapshot JSON stored with a line: what cartdb stores for it.
pub fn snapshot_json(sku: Sku) -> String {
    serde_json::json!({
        "name": sku.name(),
        "unit_price_minor": sku.unit_price_minor(),
        "currency": CURRENCY,
    })
    .to_string()
}

/// The commands one operation becomes and how its replies are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisCall {
    /// Sent as one `MULTI … EXEC` transaction, else as a plain pipeline; one round trip either way.
    pub transaction: bool,
    /// Each command as its words (`["HDEL", "cart:user:bench-1", "sku-001", "item:sku-001"]`).
    pub commands: Vec<Vec<String>>,
    /// `Some(i)`: reply `i` is a count, and 0 means the line or coupon was not there (NOT_FOUND).
    pub not_found_if_zero: Option<usize>,
}

impl RedisCall {
    pub fn of(op: &Op) -> Self {
        let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        let single = |command: Vec<String>, not_found_if_zero: Option<usize>| RedisCall {
            transaction: false,
            commands: vec![command],
            not_found_if_zero,
        };
        match op {
            Op::GetCart { cart_id } => RedisCall {
                transaction: false,
                commands: vec![
                    words(&["HGETALL", &cart_key(cart_id)]),
                    words(&["SMEMBERS", &coupons_key(cart_id)]),
                ],
                not_found_if_zero: None,
            },
            Op::AddItem { cart_id, sku, quantity } => {
                let (key, product_id) = (cart_key(cart_id), sku.product_id());
                RedisCall {
                    transaction: true,
                    commands: vec![
                        words(&["HINCRBY", &key, &product_id, &quantity.to_string()]),
                        words(&["HSET", &key, &snapshot_field(&product_id), &snapshot_json(*sku)]),
                    ],
                    not_found_if_zero: None,
                }
            }
            Op::SetQuantity { cart_id, sku, quantity } if *quantity > 0 => single(
                words(&["HSET", &cart_key(cart_id), &sku.product_id(), &quantity.to_string()]),
                None,
            ),
            // Quantity 0 removes the line, as in cartdb.
            Op::SetQuantity { cart_id, sku, .. } | Op::RemoveItem { cart_id, sku } => {
                let product_id = sku.product_id();
                single(
                    words(&["HDEL", &cart_key(cart_id), &product_id, &snapshot_field(&product_id)]),
                    Some(0),
                )
            }
            Op::ApplyCoupon { cart_id, code } => single(words(&["SADD", &coupons_key(cart_id), code]), None),
            Op::RemoveCoupon { cart_id, code } => single(words(&["SREM", &coupons_key(cart_id), code]), Some(0)),
        }
    }

    /// The `redis-rs` pipeline sending these commands.
    pub fn pipeline(&self) -> redis::Pipeline {
        let mut pipe = redis::Pipeline::with_capacity(self.commands.len());
        if self.transaction {
            pipe.atomic();
        }
        for command in &self.commands {
            let mut cmd = redis::Cmd::new();
            for word in command {
                cmd.arg(word);
            }
            pipe.add_command(cmd);
        }
        pipe
    }

    /// Reads the replies of a successful call (one per command, `EXEC`'s for a transaction).
    pub fn outcome(&self, replies: &Value) -> Outcome {
        let Value::Array(replies) = replies else {
            return unexpected(format!("expected one reply per command, got {replies:?}"));
        };
        if replies.len() != self.commands.len() {
            return unexpected(format!(
                "expected {} replies, got {}",
                self.commands.len(),
                replies.len()
            ));
        }
        match self.not_found_if_zero.map(|i| &replies[i]) {
            None => Outcome::Ok,
            Some(Value::Int(0)) => Outcome::NotFound,
            Some(Value::Int(_)) => Outcome::Ok,
            Some(other) => unexpected(format!("expected a count, got {other:?}")),
        }
    }
}

fn unexpected(message: String) -> Outcome {
    Outcome::Error {
        code: "REDIS_UNEXPECTED_REPLY".into(),
        message,
    }
}

/// An error from `redis-rs` as the report groups it: `TIMEOUT`, `REDIS_<server code>`
/// (`REDIS_WRONGTYPE`) or `REDIS_<kind>` (`REDIS_IO`).
pub fn error_outcome(error: &RedisError) -> Outcome {
    let code = if error.is_timeout() {
        "TIMEOUT".to_owned()
    } else if let Some(code) = error.code() {
        format!("REDIS_{}", code.to_ascii_uppercase())
    } else {
        format!("REDIS_{}", upper_snake(&format!("{:?}", error.kind())))
    };
    Outcome::Error {
        code,
        message: error.to_string(),
    }
}

/// `AuthenticationFailed` → `AUTHENTICATION_FAILED`.
fn upper_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// Splits `redis://HOST:PORT` (or bare `HOST:PORT`) into host and port.
pub fn parse_endpoint(raw: &str) -> Option<(&str, u16)> {
    let rest = raw.strip_prefix("redis://").unwrap_or(raw);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let plain = !host.is_empty() && !host.contains(['/', '@', ' ']);
    plain.then_some((host, port))
}

/// One Redis server through a round-robin pool of multiplexed connections.
pub struct RedisTarget {
    connections: Vec<MultiplexedConnection>,
    next: AtomicUsize,
}

impl RedisTarget {
    /// Opens `connections` (at least 1) multiplexed connections to `url` (`redis://HOST:PORT`).
    pub async fn connect(url: &str, connections: usize) -> Result<Self, BenchError> {
        let unreachable = |e: RedisError| BenchError::Unreachable {
            target: url.to_owned(),
            reason: e.to_string(),
        };
        let client = Client::open(url).map_err(unreachable)?;
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let mut pool = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(unreachable)?;
            pool.push(connection);
        }
        Ok(RedisTarget {
            connections: pool,
            next: AtomicUsize::new(0),
        })
    }

    fn connection(&self) -> MultiplexedConnection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        // A clone is a handle on the same socket (cheap), which `query_async` needs as `&mut`.
        self.connections[i].clone()
    }
}

impl Target for RedisTarget {
    async fn execute(&self, op: Op) -> Outcome {
        let call = RedisCall::of(&op);
        let mut connection = self.connection();
        match call.pipeline().query_async::<Value>(&mut connection).await {
            Ok(replies) => call.outcome(&replies),
            Err(e) => error_outcome(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(call: &RedisCall) -> Vec<Vec<&str>> {
        call.commands
            .iter()
            .map(|c| c.iter().map(String::as_str).collect())
            .collect()
    }

    fn cart() -> String {
        "user:bench-3".to_owned()
    }

    #[test]
    fn add_item_increments_and_stores_the_snapshot_in_one_transaction() {
        let call = RedisCall::of(&Op::AddItem {
            cart_id: cart(),
            sku: Sku(7),
            quantity: 2,
        });
        assert!(call.transaction);
        let json = snapshot_json(Sku(7));
        assert_eq!(
            words(&call),
            [
                vec!["HINCRBY", "cart:user:bench-3", "sku-007", "2"],
                vec!["HSET", "cart:user:bench-3", "item:sku-007", json.as_str()],
            ]
        );
        assert_eq!(call.not_found_if_zero, None);
        let snapshot: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(snapshot["name"], "Bench item 7");
        assert_eq!(snapshot["unit_price_minor"], 1199);
        assert_eq!(snapshot["currency"], "EUR");
    }

    #[test]
    fn get_cart_reads_lines_and_coupons_in_one_pipeline() {
        let call = RedisCall::of(&Op::GetCart { cart_id: cart() });
        assert!(!call.transaction);
        assert_eq!(
            words(&call),
            [
                vec!["HGETALL", "cart:user:bench-3"],
                vec!["SMEMBERS", "cart:user:bench-3:coupons"]
            ]
        );
    }

    #[test]
    fn set_quantity_overwrites_and_zero_removes_the_line() {
        let set = RedisCall::of(&Op::SetQuantity {
            cart_id: cart(),
            sku: Sku(1),
            quantity: 3,
        });
        assert_eq!(words(&set), [vec!["HSET", "cart:user:bench-3", "sku-001", "3"]]);
        assert_eq!(set.not_found_if_zero, None);
        let zero = RedisCall::of(&Op::SetQuantity {
            cart_id: cart(),
            sku: Sku(1),
            quantity: 0,
        });
        let remove = RedisCall::of(&Op::RemoveItem {
            cart_id: cart(),
            sku: Sku(1),
        });
        assert_eq!(zero, remove);
    }

    #[test]
    fn remove_item_deletes_quantity_and_snapshot_and_reports_absence() {
        let call = RedisCall::of(&Op::RemoveItem {
            cart_id: cart(),
            sku: Sku(12),
        });
        assert_eq!(
            words(&call),
            [vec!["HDEL", "cart:user:bench-3", "sku-012", "item:sku-012"]]
        );
        assert_eq!(call.outcome(&Value::Array(vec![Value::Int(0)])), Outcome::NotFound);
        assert_eq!(call.outcome(&Value::Array(vec![Value::Int(2)])), Outcome::Ok);
    }

    #[test]
    fn coupons_are_a_set_and_removing_an_absent_one_is_not_found() {
        let apply = RedisCall::of(&Op::ApplyCoupon {
            cart_id: cart(),
            code: "BENCH5",
        });
        assert_eq!(words(&apply), [vec!["SADD", "cart:user:bench-3:coupons", "BENCH5"]]);
        // Applying a coupon twice is fine in cartdb too.
        assert_eq!(apply.outcome(&Value::Array(vec![Value::Int(0)])), Outcome::Ok);
        let remove = RedisCall::of(&Op::RemoveCoupon {
            cart_id: cart(),
            code: "BENCH5",
        });
        assert_eq!(words(&remove), [vec!["SREM", "cart:user:bench-3:coupons", "BENCH5"]]);
        assert_eq!(remove.outcome(&Value::Array(vec![Value::Int(0)])), Outcome::NotFound);
        assert_eq!(remove.outcome(&Value::Array(vec![Value::Int(1)])), Outcome::Ok);
    }

    #[test]
    fn malformed_replies_are_errors_not_successes() {
        let remove = RedisCall::of(&Op::RemoveItem {
            cart_id: cart(),
            sku: Sku(1),
        });
        for bad in [
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![Value::Okay]),
            Value::Array(vec![Value::Int(1), Value::Int(1)]),
        ] {
            assert!(
                matches!(remove.outcome(&bad), Outcome::Error { ref code, .. } if code == "REDIS_UNEXPECTED_REPLY"),
                "{bad:?}"
            );
        }
        let get = RedisCall::of(&Op::GetCart { cart_id: cart() });
        let reply = Value::Array(vec![Value::Array(vec![]), Value::Array(vec![])]);
        assert_eq!(get.outcome(&reply), Outcome::Ok);
    }

    #[test]
    fn pipelines_pack_the_same_commands() {
        let call = RedisCall::of(&Op::AddItem {
            cart_id: cart(),
            sku: Sku(0),
            quantity: 1,
        });
        let pipe = call.pipeline();
        assert!(pipe.is_transaction());
        assert_eq!(pipe.len(), 2);
        let packed = String::from_utf8(pipe.get_packed_pipeline()).expect("utf-8");
        assert!(
            packed.starts_with("*1\r\n$5\r\nMULTI\r\n*4\r\n$7\r\nHINCRBY\r\n"),
            "{packed}"
        );
        assert!(packed.ends_with("*1\r\n$4\r\nEXEC\r\n"), "{packed}");
        let get = RedisCall::of(&Op::GetCart { cart_id: cart() }).pipeline();
        assert!(!get.is_transaction());
        let packed = String::from_utf8(get.get_packed_pipeline()).expect("utf-8");
        assert_eq!(
            packed,
            "*2\r\n$7\r\nHGETALL\r\n$17\r\ncart:user:bench-3\r\n*2\r\n$8\r\nSMEMBERS\r\n$25\r\ncart:user:bench-3:coupons\r\n"
        );
    }

    #[test]
    fn endpoints_parse_with_or_without_the_scheme() {
        assert_eq!(parse_endpoint("redis://127.0.0.1:6379"), Some(("127.0.0.1", 6379)));
        assert_eq!(parse_endpoint("redis://127.0.0.1:6379/"), Some(("127.0.0.1", 6379)));
        assert_eq!(parse_endpoint("127.0.0.1:6380"), Some(("127.0.0.1", 6380)));
        for bad in [
            "redis://127.0.0.1",
            "redis://:6379",
            "redis://127.0.0.1:99999",
            "redis://user@127.0.0.1:6379",
            "redis://127.0.0.1:6379/2",
        ] {
            assert_eq!(parse_endpoint(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_codes_are_upper_snake() {
        assert_eq!(upper_snake("Io"), "IO");
        assert_eq!(upper_snake("AuthenticationFailed"), "AUTHENTICATION_FAILED");
    }
}
