//! Redis as a storefront team would use it for carts: the peer cartdb is compared with.
//!
//! Data model (one Redis server; its replicas, if any, only matter to `?wait`, below):
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
//! Replicated writes (`redis=redis://HOST:PORT?wait=N[&wait_timeout_ms=T]`, [`RedisWait`]): every
//! write (every op but GetCart) is followed by `WAIT N T` in the same pipeline, so in the same
//! round trip and on the same connection: the write is acknowledged once N replicas have it (Redis
//! counts the replicas that acknowledged this connection's latest write). A transaction is then
//! sent as plain `MULTI`, its commands, `EXEC`, `WAIT` (redis-rs's atomic pipeline cannot carry a
//! command after `EXEC`). A WAIT answering fewer than N replicas within T ms (default
//! [`DEFAULT_WAIT_TIMEOUT_MS`]) is the error `WAIT_TIMEOUT`, although the primary applied the
//! write. Redis blocks a connection while its WAIT waits: requests pipelined behind it on that
//! connection wait too (their latency includes it). The primary asks its replicas for an ack at
//! once, so on loopback this costs little; the default pool of 4 connections did better than one
//! connection per worker in a short trial (more sockets, no fewer waits).
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

/// How long a `WAIT` may block by default, in ms (well inside [`RESPONSE_TIMEOUT`]).
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 1_000;

/// `?wait=N[&wait_timeout_ms=T]` on a Redis target: every write is followed by `WAIT N T` in its
/// round trip and counts as done only once N replicas acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisWait {
    /// Replicas that must hold the write (at least 1).
    pub replicas: u32,
    /// How long the server may wait for them, in ms (at least 1, below [`RESPONSE_TIMEOUT`]: `WAIT`
    /// with 0 would block for ever).
    pub timeout_ms: u64,
}

impl RedisWait {
    /// Parses the query part of a target, `wait=N[&wait_timeout_ms=T]` (in any order).
    pub fn parse_query(query: &str) -> Result<Self, String> {
        let (mut replicas, mut timeout_ms) = (None, DEFAULT_WAIT_TIMEOUT_MS);
        for pair in query.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("expected KEY=VALUE in the query, got {pair:?}"))?;
            match key {
                "wait" => {
                    let n = value.parse::<u32>().ok().filter(|n| *n >= 1);
                    replicas = Some(n.ok_or_else(|| format!("wait must be a number of replicas >= 1, got {value:?}"))?);
                }
                "wait_timeout_ms" => {
                    let limit = u64::try_from(RESPONSE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
                    timeout_ms = value
                        .parse::<u64>()
                        .ok()
                        .filter(|t| (1..limit).contains(t))
                        .ok_or_else(|| {
                            format!("wait_timeout_ms must be 1..{limit} (the reply timeout), got {value:?}")
                        })?;
                }
                other => return Err(format!("unknown option {other:?} (supported: wait, wait_timeout_ms)")),
            }
        }
        let replicas = replicas.ok_or_else(|| "the query needs wait=N".to_owned())?;
        Ok(RedisWait { replicas, timeout_ms })
    }

    /// The `WAIT` command's words.
    pub fn command(&self) -> Vec<String> {
        vec![
            "WAIT".to_owned(),
            self.replicas.to_string(),
            self.timeout_ms.to_string(),
        ]
    }
}

impl std::fmt::Display for RedisWait {
    /// The canonical query, `wait=N&wait_timeout_ms=T`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wait={}&wait_timeout_ms={}", self.replicas, self.timeout_ms)
    }
}

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
    /// A write to a `?wait` target: `WAIT` follows the commands in the same round trip. Never set
    /// on a read.
    pub wait: Option<RedisWait>,
}

impl RedisCall {
    /// The call of `op` without `WAIT`.
    pub fn of(op: &Op) -> Self {
        Self::waiting(op, None)
    }

    /// The call of `op`; a write (every op but GetCart) also waits for `wait`'s replicas.
    pub fn waiting(op: &Op, wait: Option<RedisWait>) -> Self {
        let mut call = Self::commands_of(op);
        if !matches!(op, Op::GetCart { .. }) {
            call.wait = wait;
        }
        call
    }

    fn commands_of(op: &Op) -> Self {
        let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        let single = |command: Vec<String>, not_found_if_zero: Option<usize>| RedisCall {
            transaction: false,
            commands: vec![command],
            not_found_if_zero,
            wait: None,
        };
        match op {
            Op::GetCart { cart_id } => RedisCall {
                transaction: false,
                commands: vec![
                    words(&["HGETALL", &cart_key(cart_id)]),
                    words(&["SMEMBERS", &coupons_key(cart_id)]),
                ],
                not_found_if_zero: None,
                wait: None,
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
                    wait: None,
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

    /// Every command this call puts on the wire, in order: `MULTI` … `EXEC` around a transaction,
    /// then `WAIT` when the call waits.
    pub fn wire(&self) -> Vec<Vec<String>> {
        let mut wire = Vec::with_capacity(self.commands.len() + 3);
        if self.transaction {
            wire.push(vec!["MULTI".to_owned()]);
        }
        wire.extend(self.commands.iter().cloned());
        if self.transaction {
            wire.push(vec!["EXEC".to_owned()]);
        }
        if let Some(wait) = self.wait {
            wire.push(wait.command());
        }
        wire
    }

    /// `self.wire().len()`.
    fn wire_len(&self) -> usize {
        self.commands.len() + if self.transaction { 2 } else { 0 } + usize::from(self.wait.is_some())
    }

    /// The `redis-rs` pipeline sending these commands (exactly [`Self::wire`]).
    pub fn pipeline(&self) -> redis::Pipeline {
        let to_cmd = |command: &Vec<String>| {
            let mut cmd = redis::Cmd::new();
            for word in command {
                cmd.arg(word);
            }
            cmd
        };
        if let Some(wait) = self.wait {
            // A plain pipeline whose replies are every command's (MULTI's OK and QUEUEDs, then
            // EXEC's array, in a transaction) and WAIT's count.
            let mut pipe = redis::Pipeline::with_capacity(self.wire_len());
            if self.transaction {
                pipe.add_command(redis::cmd("MULTI"));
            }
            for command in &self.commands {
                pipe.add_command(to_cmd(command));
            }
            if self.transaction {
                pipe.add_command(redis::cmd("EXEC"));
            }
            pipe.add_command(to_cmd(&wait.command()));
            return pipe;
        }
        let mut pipe = redis::Pipeline::with_capacity(self.commands.len());
        if self.transaction {
            pipe.atomic();
        }
        for command in &self.commands {
            pipe.add_command(to_cmd(command));
        }
        pipe
    }

    /// Reads the replies of a successful call: one per command (`EXEC`'s for an atomic pipeline);
    /// for a waiting call, one per command of [`Self::wire`].
    pub fn outcome(&self, replies: &Value) -> Outcome {
        let Value::Array(replies) = replies else {
            return unexpected(format!("expected one reply per command, got {replies:?}"));
        };
        let replies = match self.wait {
            None => replies.as_slice(),
            Some(wait) => match self.waited(replies, wait) {
                Ok(replies) => replies,
                Err(outcome) => return outcome,
            },
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

    /// The commands' own replies out of a waiting call's, once `WAIT` counted enough replicas.
    /// A server error inside `EXEC`'s array is that command's error; too few replicas is
    /// `WAIT_TIMEOUT`.
    fn waited<'a>(&self, replies: &'a [Value], wait: RedisWait) -> Result<&'a [Value], Outcome> {
        let expected = self.wire_len();
        if replies.len() != expected {
            return Err(unexpected(format!(
                "expected {expected} replies, got {}",
                replies.len()
            )));
        }
        let Some((acked, rest)) = replies.split_last() else {
            return Err(unexpected("no reply at all".to_owned()));
        };
        let own = if self.transaction {
            match rest.last() {
                Some(Value::Array(items)) => items.as_slice(),
                other => return Err(unexpected(format!("expected EXEC's array, got {other:?}"))),
            }
        } else {
            rest
        };
        if let Some(Value::ServerError(e)) = own.iter().find(|v| matches!(v, Value::ServerError(_))) {
            return Err(Outcome::Error {
                code: format!("REDIS_{}", e.code().to_ascii_uppercase()),
                message: e.to_string(),
            });
        }
        match acked {
            Value::Int(n) if *n >= i64::from(wait.replicas) => Ok(own),
            Value::Int(n) => Err(Outcome::Error {
                code: "WAIT_TIMEOUT".into(),
                message: format!(
                    "WAIT {} {} answered {n}: the write reached {n} of the {} replicas asked in time",
                    wait.replicas, wait.timeout_ms, wait.replicas
                ),
            }),
            other => Err(unexpected(format!("expected WAIT's count, got {other:?}"))),
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
    /// Writes wait for this many replicas (`?wait=N`).
    wait: Option<RedisWait>,
}

impl RedisTarget {
    /// Opens `connections` (at least 1) multiplexed connections to `url` (`redis://HOST:PORT`);
    /// with `wait`, every write waits for that many replicas.
    pub async fn connect(url: &str, connections: usize, wait: Option<RedisWait>) -> Result<Self, BenchError> {
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
            wait,
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
        let call = RedisCall::waiting(&op, self.wait);
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

    const WAIT1: RedisWait = RedisWait {
        replicas: 1,
        timeout_ms: 1_000,
    };

    /// One of every op, on the same cart.
    fn every_op() -> Vec<Op> {
        vec![
            Op::GetCart { cart_id: cart() },
            Op::AddItem {
                cart_id: cart(),
                sku: Sku(3),
                quantity: 1,
            },
            Op::SetQuantity {
                cart_id: cart(),
                sku: Sku(3),
                quantity: 2,
            },
            Op::SetQuantity {
                cart_id: cart(),
                sku: Sku(3),
                quantity: 0,
            },
            Op::RemoveItem {
                cart_id: cart(),
                sku: Sku(3),
            },
            Op::ApplyCoupon {
                cart_id: cart(),
                code: "BENCH5",
            },
            Op::RemoveCoupon {
                cart_id: cart(),
                code: "BENCH5",
            },
        ]
    }

    /// The bytes `redis-rs` would send for these commands, one after another.
    fn packed(commands: &[Vec<String>]) -> String {
        let mut out = Vec::new();
        for command in commands {
            let mut cmd = redis::Cmd::new();
            for word in command {
                cmd.arg(word);
            }
            out.extend(cmd.get_packed_command());
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn every_write_ends_with_wait_and_no_read_waits() {
        for op in every_op() {
            let plain = RedisCall::of(&op);
            let call = RedisCall::waiting(&op, Some(WAIT1));
            assert_eq!(call.commands, plain.commands, "{op:?}: WAIT changes no command");
            let wire = call.wire();
            let waits = wire.iter().filter(|c| c[0] == "WAIT").count();
            if matches!(op, Op::GetCart { .. }) {
                assert_eq!(call.wait, None, "a read never waits");
                assert_eq!(waits, 0, "{op:?}");
                assert_eq!(wire, plain.wire());
            } else {
                assert_eq!(waits, 1, "{op:?}: one WAIT per write");
                assert_eq!(
                    wire.last().map(|c| words_of(c)),
                    Some(vec!["WAIT", "1", "1000"]),
                    "{op:?}"
                );
                assert_eq!(wire[..wire.len() - 1], plain.wire()[..], "{op:?}: WAIT comes last");
            }
            assert!(
                plain.wire().iter().all(|c| c[0] != "WAIT"),
                "{op:?}: no WAIT unless asked"
            );
        }
    }

    fn words_of(command: &[String]) -> Vec<&str> {
        command.iter().map(String::as_str).collect()
    }

    #[test]
    fn add_item_waits_after_exec_in_the_same_pipeline() {
        let op = Op::AddItem {
            cart_id: cart(),
            sku: Sku(7),
            quantity: 2,
        };
        let call = RedisCall::waiting(&op, Some(WAIT1));
        let wire = call.wire();
        let names: Vec<&str> = wire.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(names, ["MULTI", "HINCRBY", "HSET", "EXEC", "WAIT"]);
        let pipe = call.pipeline();
        assert!(
            !pipe.is_transaction(),
            "MULTI/EXEC are sent as plain commands so WAIT can follow"
        );
        assert_eq!(pipe.len(), 5);
        let bytes = String::from_utf8(pipe.get_packed_pipeline()).expect("utf-8");
        assert_eq!(bytes, packed(&wire));
        assert!(
            bytes.ends_with("*1\r\n$4\r\nEXEC\r\n*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$4\r\n1000\r\n"),
            "{bytes}"
        );
    }

    #[test]
    fn every_pipeline_sends_exactly_its_wire_commands() {
        for op in every_op() {
            for wait in [None, Some(WAIT1)] {
                let call = RedisCall::waiting(&op, wait);
                let bytes = String::from_utf8(call.pipeline().get_packed_pipeline()).expect("utf-8");
                assert_eq!(bytes, packed(&call.wire()), "{op:?} {wait:?}");
                assert_eq!(call.wire_len(), call.wire().len());
                assert_eq!(bytes.contains("WAIT"), call.wait.is_some(), "{op:?} {wait:?}");
            }
        }
        let get = RedisCall::waiting(&Op::GetCart { cart_id: cart() }, Some(WAIT1));
        let bytes = String::from_utf8(get.pipeline().get_packed_pipeline()).expect("utf-8");
        assert!(!bytes.contains("WAIT"), "{bytes}");
    }

    #[test]
    fn too_few_replicas_is_wait_timeout() {
        let add = RedisCall::waiting(
            &Op::AddItem {
                cart_id: cart(),
                sku: Sku(1),
                quantity: 1,
            },
            Some(RedisWait {
                replicas: 2,
                timeout_ms: 500,
            }),
        );
        let replies = |acked: i64| {
            Value::Array(vec![
                Value::Okay,
                Value::SimpleString("QUEUED".into()),
                Value::SimpleString("QUEUED".into()),
                Value::Array(vec![Value::Int(1), Value::Int(1)]),
                Value::Int(acked),
            ])
        };
        assert_eq!(add.outcome(&replies(2)), Outcome::Ok);
        assert_eq!(add.outcome(&replies(3)), Outcome::Ok);
        for acked in [0, 1] {
            assert!(
                matches!(add.outcome(&replies(acked)), Outcome::Error { ref code, .. } if code == "WAIT_TIMEOUT"),
                "{acked} of 2 replicas"
            );
        }
        // EXEC's array missing, or WAIT's count not a count: not a success either.
        let bad = Value::Array(vec![
            Value::Okay,
            Value::SimpleString("QUEUED".into()),
            Value::SimpleString("QUEUED".into()),
            Value::Nil,
            Value::Int(2),
        ]);
        assert!(matches!(add.outcome(&bad), Outcome::Error { ref code, .. } if code == "REDIS_UNEXPECTED_REPLY"));
        let short = Value::Array(vec![Value::Array(vec![Value::Int(1), Value::Int(1)]), Value::Int(2)]);
        assert!(matches!(add.outcome(&short), Outcome::Error { ref code, .. } if code == "REDIS_UNEXPECTED_REPLY"));
    }

    #[test]
    fn an_error_inside_exec_is_that_error_even_when_wait_succeeds() {
        let add = RedisCall::waiting(
            &Op::AddItem {
                cart_id: cart(),
                sku: Sku(1),
                quantity: 1,
            },
            Some(WAIT1),
        );
        // As the server sends it: OK, QUEUED, QUEUED, EXEC's array with an error, WAIT's count.
        let replies: Vec<Value> = [
            "+OK\r\n",
            "+QUEUED\r\n",
            "+QUEUED\r\n",
            "*2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:1\r\n",
            ":1\r\n",
        ]
        .iter()
        .map(|reply| redis::parse_redis_value(reply.as_bytes()).expect("valid RESP"))
        .collect();
        assert_eq!(replies.len(), 5);
        assert!(matches!(
            add.outcome(&Value::Array(replies)),
            Outcome::Error { ref code, .. } if code == "REDIS_WRONGTYPE"
        ));
    }

    #[test]
    fn a_waiting_remove_still_reports_absence() {
        let remove = RedisCall::waiting(
            &Op::RemoveItem {
                cart_id: cart(),
                sku: Sku(12),
            },
            Some(WAIT1),
        );
        let names: Vec<String> = remove.wire().into_iter().map(|c| c[0].clone()).collect();
        assert_eq!(names, ["HDEL", "WAIT"]);
        assert_eq!(
            remove.outcome(&Value::Array(vec![Value::Int(0), Value::Int(1)])),
            Outcome::NotFound
        );
        assert_eq!(
            remove.outcome(&Value::Array(vec![Value::Int(2), Value::Int(1)])),
            Outcome::Ok
        );
        assert!(matches!(
            remove.outcome(&Value::Array(vec![Value::Int(2), Value::Int(0)])),
            Outcome::Error { ref code, .. } if code == "WAIT_TIMEOUT"
        ));
        // The plain call has one reply; the waiting one's WAIT reply is required.
        assert!(matches!(
            remove.outcome(&Value::Array(vec![Value::Int(2)])),
            Outcome::Error { ref code, .. } if code == "REDIS_UNEXPECTED_REPLY"
        ));
    }

    #[test]
    fn wait_options_parse_from_the_query() {
        assert_eq!(RedisWait::parse_query("wait=1"), Ok(WAIT1));
        assert_eq!(WAIT1.to_string(), "wait=1&wait_timeout_ms=1000");
        assert_eq!(WAIT1.command(), ["WAIT", "1", "1000"]);
        for bad in [
            "",
            "wait",
            "wait=",
            "wait=0",
            "wait=-1",
            "wait=1&wait_timeout_ms=0",
            "wait=1&x=2",
        ] {
            assert!(RedisWait::parse_query(bad).is_err(), "{bad}");
        }
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
