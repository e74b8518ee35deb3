//! Fuzz targets for every decoder of untrusted bytes, as plain functions of a byte slice: the
//! AFL++ binaries in `fuzz/afl` (coverage-guided, `fuzz/run.sh`) and the property-based stand-in
//! in `tests/stand_in.rs` (random bytes and the checked-in corpus, run by `cargo test`) call the
//! same code. A target returns normally for any input; a panic, a hang or an allocation beyond
//! the decoders' limits is a bug. Where a decoder accepts its input, the target also checks that
//! re-encoding and decoding again gives the same value.
//!
//! - [`public_request`]: the public API's requests (protobuf) and their conversion to domain
//!   requests, version tokens included.
//! - [`peer_message`]: what a peer sends: replicate and read batches, forwarded writes, and the
//!   cart states, contexts and operations inside them.
//! - [`stored_cart`]: cart bytes as the storage engine returns them.
//! - [`layout`]: the cluster layout and pricing documents as peers and operators send them.

use cart_crdt::{codec, CartId, Limits};
use cart_proto::convert::{CheckoutRequest, GetRequest, IntoDomain, MergeRequest};
use cart_proto::{pb, replica_pb};
use prost::Message;

/// The first byte picks the request type; the rest is its protobuf encoding.
pub fn public_request(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let limits = &Limits::DEFAULT;
    match kind % 14 {
        0 => domain::<pb::AddItemRequest>(bytes, limits),
        1 => domain::<pb::SetQuantityRequest>(bytes, limits),
        2 => domain::<pb::AdjustQuantityRequest>(bytes, limits),
        3 => domain::<pb::RemoveItemRequest>(bytes, limits),
        4 => domain::<pb::ClearCartRequest>(bytes, limits),
        5 => domain::<pb::SaveForLaterRequest>(bytes, limits),
        6 => domain::<pb::MoveToCartRequest>(bytes, limits),
        7 => domain::<pb::ApplyCouponRequest>(bytes, limits),
        8 => domain::<pb::RemoveCouponRequest>(bytes, limits),
        9 => domain::<pb::RefreshItemsRequest>(bytes, limits),
        10 => {
            if let Ok(req) = pb::GetCartRequest::decode(bytes) {
                let _ = GetRequest::from_wire(req, limits);
            }
        }
        11 => {
            if let Ok(req) = pb::MergeCartsRequest::decode(bytes) {
                let _ = MergeRequest::from_wire(req, limits);
            }
        }
        12 => {
            if let Ok(req) = pb::CheckoutRequest::decode(bytes) {
                let _ = CheckoutRequest::from_wire(req, limits);
            }
        }
        _ => {
            // A version token as a client hands it back (checkout, merge at login).
            if let (Ok(token), Ok(id)) = (std::str::from_utf8(bytes), CartId::parse("user:fuzz", limits)) {
                let _ = codec::decode_version(token, &id, "version");
            }
        }
    }
}

fn domain<M: Message + Default + IntoDomain>(bytes: &[u8], limits: &Limits) {
    if let Ok(req) = M::decode(bytes) {
        let _ = req.into_domain(limits);
    }
}

/// The first byte picks the message type; the rest is its protobuf encoding.
pub fn peer_message(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let limits = &Limits::DEFAULT;
    match kind % 5 {
        0 => {
            if let Ok(batch) = replica_pb::ReplicateBatchRequest::decode(bytes) {
                for item in batch.items {
                    let _ = CartId::parse(&item.cart_id, limits);
                    stored_cart(&item.state);
                    context(&item.deps);
                }
            }
        }
        1 => {
            if let Ok(batch) = replica_pb::ReadBatchRequest::decode(bytes) {
                for item in batch.items {
                    let _ = CartId::parse(&item.cart_id, limits);
                    context(&item.known_context);
                }
            }
        }
        2 => {
            if let Ok(req) = replica_pb::CoordinateRequest::decode(bytes) {
                let _ = CartId::parse(&req.cart_id, limits);
                if let Ok(op) = codec::decode_op(&req.op) {
                    let again = codec::encode_op(&op).expect("a decoded op encodes");
                    assert_eq!(codec::decode_op(&again).ok(), Some(op), "op round trip");
                }
            }
        }
        3 => {
            if let Ok(reply) = replica_pb::ReadBatchReply::decode(bytes) {
                for result in reply.results {
                    if let Some(reply) = result.reply {
                        stored_cart(&reply.state);
                        catch_up(&reply.catch_up);
                    }
                }
            }
        }
        _ => {
            if let Ok(doc) = replica_pb::LayoutDoc::decode(bytes) {
                layout(&doc.current);
                layout(&doc.previous);
            }
        }
    }
}

fn context(bytes: &[u8]) {
    if let Ok(ctx) = codec::decode_context(bytes) {
        let again = codec::encode_context(&ctx).expect("a decoded context encodes");
        assert_eq!(codec::decode_context(&again).ok(), Some(ctx), "context round trip");
    }
}

/// A read's catch-up: round-trips, and rebuilds from the reader the seed's was made for (the
/// seed cart after its first op) into a cart that encodes and decodes, or is refused.
fn catch_up(bytes: &[u8]) {
    if let Ok(catch_up) = codec::decode_catch_up(bytes) {
        let again = codec::encode_catch_up(&catch_up).expect("a decoded catch-up encodes");
        assert_eq!(
            codec::decode_catch_up(&again).ok().as_ref(),
            Some(&catch_up),
            "catch-up round trip"
        );
        let (add, coupon) = seed_requests();
        let (reader, _, _) = seed_carts(&add, &coupon);
        if let Ok(rebuilt) = reader.rebuild(catch_up, reader.context()) {
            stored_cart(&codec::encode(&rebuilt).expect("a rebuilt cart encodes"));
        }
    }
}

/// Cart bytes (the codec's framing, then the state).
pub fn stored_cart(bytes: &[u8]) {
    if let Ok(cart) = codec::decode(bytes) {
        let again = codec::encode(&cart).expect("a decoded cart encodes");
        let back = codec::decode(&again).expect("an encoded cart decodes");
        assert_eq!(codec::encode(&back).ok(), Some(again), "cart round trip");
        if let Ok(id) = CartId::parse("user:fuzz", &Limits::DEFAULT) {
            let _ = cart.view(&id);
        }
    }
}

/// A layout or pricing document (JSON), as the membership protocol carries it.
pub fn layout(bytes: &[u8]) {
    if let Ok(layout) = serde_json::from_slice::<cart_ring::layout::Layout>(bytes) {
        let again = serde_json::to_vec(&layout).expect("a decoded layout encodes");
        assert!(
            serde_json::from_slice::<cart_ring::layout::Layout>(&again).is_ok(),
            "layout round trip"
        );
        if layout.validate().is_ok() {
            let _ = cart_ring::Ring::new(layout.members.clone());
        }
    }
    if let Ok(rules) = serde_json::from_slice::<cart_crdt::pricing::PricingRules>(bytes) {
        let _ = rules.check();
    }
}

/// A fuzz target: a function of any bytes that must return.
pub type Target = fn(&[u8]);

/// The targets by name (for the stand-in test and the seed writer).
pub const TARGETS: [(&str, Target); 4] = [
    ("public_request", public_request),
    ("peer_message", peer_message),
    ("stored_cart", stored_cart),
    ("layout", layout),
];

/// The seeds' cart after its first op (a reader that saw only that) and after both, and the ops.
fn seed_carts(
    add: &pb::AddItemRequest,
    coupon: &pb::ApplyCouponRequest,
) -> (cart_crdt::Cart, cart_crdt::Cart, Vec<cart_crdt::CartOp>) {
    let limits = &Limits::DEFAULT;
    let mut cart = cart_crdt::Cart::default();
    let mut first = None;
    let mut ops = Vec::new();
    for (i, req) in [add.clone().into_domain(limits), coupon.clone().into_domain(limits)]
        .into_iter()
        .flatten()
        .enumerate()
    {
        let ctx = cart_crdt::WriteCtx {
            actor: cart_crdt::Actor(7),
            now_ms: 1_700_000_000_000 + i as u64,
            limits,
            request: req.request,
        };
        if cart.apply(&ctx, &req.op).is_ok() {
            ops.push(req.op);
        }
        first.get_or_insert_with(|| cart.clone());
    }
    (first.unwrap_or_default(), cart, ops)
}

/// The requests the seeds are made of.
fn seed_requests() -> (pb::AddItemRequest, pb::ApplyCouponRequest) {
    let snapshot = pb::ItemSnapshot {
        name: "Mug".into(),
        unit_price_minor: 1299,
        currency: "EUR".into(),
        image_url: "https://example.com/mug.png".into(),
        attributes: [("color".to_owned(), "blue".to_owned())].into_iter().collect(),
    };
    let add = pb::AddItemRequest {
        cart_id: "user:alice".into(),
        product_id: "sku-1".into(),
        quantity: 2,
        snapshot: Some(snapshot),
        request_id: "req-1".into(),
        ..Default::default()
    };
    let coupon = pb::ApplyCouponRequest {
        cart_id: "user:alice".into(),
        code: "TENOFF".into(),
        ..Default::default()
    };
    (add, coupon)
}

/// Valid inputs of `target` to start from (the fuzzers mutate them).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let (add, coupon) = seed_requests();
    let (first, cart, ops) = seed_carts(&add, &coupon);
    let catch_up = cart
        .catch_up(first.context())
        .and_then(|c| codec::encode_catch_up(&c))
        .unwrap_or_default();
    let state = codec::encode(&cart).unwrap_or_default();
    let context = codec::encode_context(cart.context()).unwrap_or_default();
    let members = (1..=3).map(|i| cart_ring::Member {
        node_id: format!("n{i}"),
        addr: format!("10.0.0.{i}:7001"),
        weight: 1,
        zone: format!("z{i}"),
    });
    let layout_json =
        serde_json::to_vec(&cart_ring::layout::Layout::initial(members.collect(), 3, 2, 2)).unwrap_or_default();
    let tagged = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    match target {
        "public_request" => vec![
            tagged(0, add.encode_to_vec()),
            tagged(7, coupon.encode_to_vec()),
            tagged(
                10,
                pb::GetCartRequest {
                    cart_id: "guest:sess-1".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        ],
        "peer_message" => vec![
            tagged(
                0,
                replica_pb::ReplicateBatchRequest {
                    items: vec![replica_pb::ReplicateRequest {
                        cart_id: "user:alice".into(),
                        state: state.clone(),
                        deps: context.clone(),
                        ..Default::default()
                    }],
                }
                .encode_to_vec(),
            ),
            tagged(
                1,
                replica_pb::ReadBatchRequest {
                    items: vec![replica_pb::ReadRequest {
                        cart_id: "user:alice".into(),
                        known_context: context,
                        catch_up: true,
                    }],
                }
                .encode_to_vec(),
            ),
            tagged(
                2,
                replica_pb::CoordinateRequest {
                    cart_id: "user:alice".into(),
                    op: ops.first().and_then(|op| codec::encode_op(op).ok()).unwrap_or_default(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            tagged(
                3,
                replica_pb::ReadBatchReply {
                    results: vec![replica_pb::ReadResult {
                        reply: Some(replica_pb::ReadReply {
                            catch_up,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                }
                .encode_to_vec(),
            ),
            tagged(
                4,
                replica_pb::LayoutDoc {
                    current: layout_json.clone(),
                    previous: Vec::new(),
                }
                .encode_to_vec(),
            ),
        ],
        "stored_cart" => vec![state],
        "layout" => vec![layout_json],
        _ => Vec::new(),
    }
}
