//! Golden bytes of the storage format (`codec`, format version 3, and version 2 which is still
//! read). If this test fails, the stored encoding changed: existing carts on disk and replicas
//! running the previous version would no longer agree. Bump `codec::FORMAT_V3` to a new version
//! (with a migration, as format 2 has) instead of re-pinning the bytes, unless the format has
//! never shipped.

mod common;

use cart_crdt::validate::{self, SnapshotInput};
use cart_crdt::{codec, Cart, CartError, CartOp, ItemSnapshot, Money, OwnerKind};
use common::*;

/// `codec::encode(&golden_cart())`, pinned: format 2's fields (resets with the counters of the
/// totals they observed), then no request records (`00`) and no merge mark (`00`).
const GOLDEN_HEX: &str = concat!(
    "030201130204000904626f6f6b0102010404626f6f6b0103000d546865205275737420426f6f6bfb1305034555520120",
    "68747470733a2f2f63646e2e6578616d706c652e636f6d2f626f6f6b2e6a70670106666f726d61740970617065726261",
    "636b037465610105010603746561010600064d6174636861fbf401034a505900000370656e010801020370656e010d02",
    "00010102fd0568e5cf8b010000010108036d756701100102036d756701130200010102fd0768e5cf8b01000001011004",
    "626f6f6b02020102010370656e010e0350656e9603455552000001020757454c434f4d45010b08465245455348495002",
    "04fd0768e5cf8b0100000000",
);

/// The same cart as written by format 2 (before request records): still read.
const GOLDEN_V2_HEX: &str = concat!(
    "020201130204000904626f6f6b0102010404626f6f6b0103000d546865205275737420426f6f6bfb1305034555520120",
    "68747470733a2f2f63646e2e6578616d706c652e636f6d2f626f6f6b2e6a70670106666f726d61740970617065726261",
    "636b037465610105010603746561010600064d6174636861fbf401034a505900000370656e010801020370656e010d02",
    "00010102fd0568e5cf8b010000036d756701100102036d756701130200010102fd0768e5cf8b01000004626f6f6b0202",
    "0102010370656e010e0350656e9603455552000001020757454c434f4d45010b0846524545534849500204fd0768e5cf",
    "8b010000",
);

/// A format-2 cart decodes to the same cart as its format-3 bytes, but for what format 2 did not
/// record (the totals its resets observed): the same view, context and counters.
#[test]
fn format_2_bytes_decode_to_the_same_cart() {
    let old = codec::decode(&from_hex(GOLDEN_V2_HEX)).expect("format 2 decodes");
    let now = golden_cart();
    assert_eq!(old.view(&cart_id()), now.view(&cart_id()));
    assert_eq!(old.context(), now.context());
    assert_eq!(old.raw_quantities(), now.raw_quantities());
}

fn book() -> ItemSnapshot {
    validate::snapshot(
        SnapshotInput {
            name: "The Rust Book".into(),
            unit_price_minor: 1299,
            currency: "EUR".into(),
            image_url: "https://cdn.example.com/book.jpg".into(),
            attributes: [("format".to_string(), "paperback".to_string())].into(),
        },
        &LIMITS,
    )
    .expect("valid snapshot")
}

/// A fixed cart built by two actors with fixed clocks: lines in two currencies, a concurrent
/// increment, a saved-for-later item, a removed line, and coupons.
fn golden_cart() -> Cart {
    let mut r1 = Replica::new(1);
    let mut r2 = Replica::new(2);
    r1.ok(CartOp::AddItem {
        product_id: pid("book"),
        quantity: 2,
        snapshot: book(),
    });
    r1.ok(CartOp::AddItem {
        product_id: pid("tea"),
        quantity: 3,
        snapshot: snap("Matcha", 500, "JPY"),
    });
    r1.ok(CartOp::AddItem {
        product_id: pid("pen"),
        quantity: 1,
        snapshot: snap("Pen", 150, "EUR"),
    });
    r1.ok(CartOp::ApplyCoupon { code: code("WELCOME") });
    r2.merge_from(&r1);
    r2.ok(adjust("book", 1));
    r2.ok(CartOp::ApplyCoupon { code: code("FREESHIP") });
    r1.ok(CartOp::SaveForLater { product_id: pid("pen") });
    r1.ok(CartOp::AddItem {
        product_id: pid("mug"),
        quantity: 1,
        snapshot: snap("Mug", 900, "EUR"),
    });
    r1.ok(remove("mug"));
    r1.merge_from(&r2);
    r1.cart
}

fn golden_bytes() -> Vec<u8> {
    from_hex(GOLDEN_HEX)
}

/// The encoding of the fixed cart is pinned byte for byte.
#[test]
fn encoding_matches_golden_bytes() {
    let bytes = enc(&golden_cart());
    assert_eq!(
        to_hex(&bytes),
        GOLDEN_HEX,
        "the stored format changed; see the module docs"
    );
    assert_eq!(bytes[0], codec::FORMAT_V3);
}

/// Decoding the golden bytes gives the expected cart, and re-encodes to the same bytes.
#[test]
fn golden_bytes_decode_to_the_expected_cart() {
    let cart = codec::decode(&golden_bytes()).expect("golden bytes decode");
    assert_eq!(enc(&cart), golden_bytes());
    let view = cart.view(&cart_id());
    assert_eq!(view.owner, OwnerKind::User);
    let lines: Vec<(&str, u64)> = view.lines.iter().map(|l| (l.product_id.as_str(), l.quantity)).collect();
    assert_eq!(lines, vec![("book", 3), ("tea", 3)]);
    assert_eq!(view.lines[0].snapshot, book());
    assert_eq!(view.saved.len(), 1);
    assert_eq!((view.saved[0].product_id.as_str(), view.saved[0].quantity), ("pen", 1));
    assert_eq!(view.saved[0].snapshot, snap("Pen", 150, "EUR"));
    assert_eq!(view.coupons, vec!["FREESHIP".to_string(), "WELCOME".to_string()]);
    assert_eq!(
        view.subtotals,
        vec![
            Money {
                currency: "EUR".into(),
                amount_minor: 3 * 1299
            },
            Money {
                currency: "JPY".into(),
                amount_minor: 1500
            },
        ]
    );
    assert_eq!(view.subtotals[0].display(), "38.97 EUR");
    assert_eq!(view.touched_at_ms, 1_700_000_000_007);
}

/// An unknown version byte is refused as such, whatever follows it.
#[test]
fn unknown_version_is_unsupported_format() {
    let mut bytes = golden_bytes();
    for version in [1u8, 0, 255] {
        bytes[0] = version;
        assert_eq!(codec::decode(&bytes), Err(CartError::UnsupportedFormat { version }));
    }
    assert_eq!(codec::decode(&[1]), Err(CartError::UnsupportedFormat { version: 1 }));
}

fn assert_decode_error(bytes: &[u8], what: &str) {
    match codec::decode(bytes) {
        Err(CartError::Decode { .. }) => {}
        other => panic!("{what}: expected CartError::Decode, got {other:?}"),
    }
}

/// Empty input, every truncation of the golden bytes, and trailing bytes are decode errors.
#[test]
fn truncated_or_extended_bytes_are_decode_errors() {
    let golden = golden_bytes();
    assert_decode_error(&[], "empty input");
    for len in 1..golden.len() {
        assert_decode_error(&golden[..len], &format!("first {len} of {} bytes", golden.len()));
    }
    let mut extended = golden.clone();
    extended.push(0);
    assert_decode_error(&extended, "one trailing byte");
}

/// Garbage after a valid version byte is a decode error, including length prefixes that claim
/// huge collections (refused by the decode limit, not allocated).
#[test]
fn garbage_bytes_are_decode_errors() {
    let mut huge_u64_len = vec![codec::FORMAT_V3, 253];
    huge_u64_len.extend_from_slice(&[0xff; 8]);
    let mut huge_u32_len = vec![codec::FORMAT_V3, 0, 252];
    huge_u32_len.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("0xff run", [vec![codec::FORMAT_V3], vec![0xff; 32]].concat()),
        ("version byte only", vec![codec::FORMAT_V3]),
        ("text", [&[codec::FORMAT_V3][..], b"hello, cart"].concat()),
        ("huge u64 length", huge_u64_len),
        ("huge u32 length", huge_u32_len),
    ];
    for (what, bytes) in cases {
        assert_decode_error(&bytes, what);
    }
}

/// Decode never panics: every single-byte corruption of the golden bytes and thousands of
/// random inputs give either a cart (which can be viewed and re-encoded) or CartError::Decode
/// (or UnsupportedFormat when the version byte itself changed).
#[test]
fn corrupt_bytes_never_panic() {
    let golden = golden_bytes();
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for i in 0..golden.len() {
        for value in [0u8, 1, 0x7f, 0x80, 0xfb, 0xfc, 0xfd, 0xff, golden[i] ^ 1] {
            let mut bytes = golden.clone();
            bytes[i] = value;
            inputs.push(bytes);
        }
    }
    let mut rng = SplitMix(0x5eed);
    for _ in 0..5_000 {
        let len = rng.below(200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Some(first) = bytes.first_mut() {
            *first = codec::FORMAT_V3;
        }
        inputs.push(bytes);
    }
    for bytes in inputs {
        match codec::decode(&bytes) {
            Ok(cart) => {
                let _ = cart.view(&cart_id());
                let _ = codec::encode(&cart);
            }
            Err(CartError::Decode { .. }) => {}
            Err(CartError::UnsupportedFormat { version }) => {
                assert!(![codec::FORMAT_V2, codec::FORMAT_V3].contains(&version))
            }
            Err(other) => panic!("unexpected error {other:?} for {}", to_hex(&bytes)),
        }
    }
}
