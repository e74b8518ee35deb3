//! Golden vectors: the same membership must give the same preference lists on every node, client
//! and version. If this test fails, the ring moved: that is a data-placement migration, not a
//! refactor.

use cart_ring::{membership_version, Member, Ring};

fn members(n: usize) -> Vec<Member> {
    (1..=n)
        .map(|i| Member {
            node_id: format!("n{i}"),
            addr: format!("127.0.0.1:{}", 7000 + i),
            weight: 1,
            zone: String::new(),
        })
        .collect()
}

fn ids(ring: &Ring, key: &str, n: usize) -> Vec<String> {
    ring.preference_list(key.as_bytes(), n)
        .into_iter()
        .map(|m| m.node_id.clone())
        .collect()
}

const KEYS: [&str; 6] = [
    "user:alice",
    "user:bob",
    "guest:s-1",
    "guest:s-2",
    "user:42",
    "user:carol",
];

#[test]
fn preference_lists_are_pinned() {
    let ring = Ring::new(members(5)).unwrap();
    let got: Vec<String> = KEYS
        .iter()
        .map(|k| format!("{k}={}", ids(&ring, k, 3).join(",")))
        .collect();
    let expected: Vec<&str> = GOLDEN_5.to_vec();
    assert_eq!(got, expected);
}

const GOLDEN_5: [&str; 6] = [
    "user:alice=n3,n5,n1",
    "user:bob=n2,n3,n5",
    "guest:s-1=n4,n2,n3",
    "guest:s-2=n3,n5,n1",
    "user:42=n5,n1,n3",
    "user:carol=n4,n2,n5",
];

#[test]
fn lists_are_distinct_and_fallbacks_follow() {
    let ring = Ring::new(members(5)).unwrap();
    for k in KEYS {
        let walk: Vec<&str> = ring.walk(k.as_bytes(), 3).map(|m| m.node_id.as_str()).collect();
        assert_eq!(walk.len(), 5);
        let mut sorted = walk.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "walk repeats a node: {walk:?}");
        assert_eq!(ids(&ring, k, 3), walk[..3]);
    }
    assert_eq!(
        ring.preference_list(b"user:alice", 9).len(),
        5,
        "n larger than the cluster gives every node"
    );
}

#[test]
fn member_order_does_not_matter() {
    let mut reversed = members(5);
    reversed.reverse();
    let a = Ring::new(members(5)).unwrap();
    let b = Ring::new(reversed.clone()).unwrap();
    for k in KEYS {
        assert_eq!(ids(&a, k, 3), ids(&b, k, 3));
    }
    assert_eq!(membership_version(&members(5)), membership_version(&reversed));
    assert_ne!(membership_version(&members(5)), membership_version(&members(4)));
}

#[test]
fn shares_are_balanced_and_a_fourth_node_takes_about_a_quarter() {
    let three = Ring::new(members(3)).unwrap();
    let shares = three.shares();
    assert!((shares.values().sum::<f64>() - 1.0).abs() < 1e-9);
    for (node, s) in &shares {
        assert!((0.2..0.47).contains(s), "{node} owns {s}");
    }
    let four = Ring::new(members(4)).unwrap();
    let keys: Vec<String> = (0..20_000).map(|i| format!("user:{i}")).collect();
    let moved: Vec<&String> = keys.iter().filter(|k| ids(&three, k, 1) != ids(&four, k, 1)).collect();
    let fraction = moved.len() as f64 / keys.len() as f64;
    assert!((0.18..0.32).contains(&fraction), "{fraction} of first owners moved");
    assert!(
        moved.iter().all(|k| ids(&four, k, 1) == ["n4"]),
        "keys moved between old nodes"
    );
}

#[test]
fn bad_memberships_are_refused() {
    assert!(Ring::new(Vec::new()).is_err());
    let mut dup = members(2);
    dup[1].node_id = "n1".into();
    assert!(Ring::new(dup).unwrap_err().to_string().contains("n1"));
    let mut heavy = members(2);
    heavy[0].weight = 0;
    assert!(Ring::new(heavy).is_err());
}

#[test]
fn sequential_short_ids_spread_evenly() {
    let ring = Ring::new(members(5)).unwrap();
    for prefix in ["guest:", "user:"] {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..10_000 {
            let key = format!("{prefix}{i}");
            *counts.entry(ids(&ring, &key, 1).remove(0)).or_insert(0usize) += 1;
        }
        for (node, count) in &counts {
            let share = *count as f64 / 10_000.0;
            assert!(
                (0.12..0.28).contains(&share),
                "{prefix}N: {node} is first owner of {share:.3}: {counts:?}"
            );
        }
    }
}

fn zoned(n: usize, zones: usize) -> Vec<Member> {
    members(n)
        .into_iter()
        .enumerate()
        .map(|(i, m)| Member {
            zone: format!("z{}", i % zones + 1),
            ..m
        })
        .collect()
}

fn zone_of<'a>(members: &'a [Member], id: &str) -> &'a str {
    &members.iter().find(|m| m.node_id == id).unwrap().zone
}

#[test]
fn zoned_preference_lists_are_pinned() {
    // 6 nodes in 3 zones: n1,n4 in z1; n2,n5 in z2; n3,n6 in z3.
    let ring = Ring::new(zoned(6, 3)).unwrap();
    let got: Vec<String> = KEYS
        .iter()
        .map(|k| format!("{k}={}", ids(&ring, k, 3).join(",")))
        .collect();
    assert_eq!(got, GOLDEN_ZONED_6.to_vec());
}

const GOLDEN_ZONED_6: [&str; 6] = [
    "user:alice=n3,n5,n1",
    "user:bob=n6,n2,n1",
    "guest:s-1=n4,n2,n6",
    "guest:s-2=n3,n5,n1",
    "user:42=n5,n6,n1",
    "user:carol=n4,n2,n3",
];

#[test]
fn owners_span_every_zone_when_there_are_n() {
    for (nodes, zones) in [(6, 3), (9, 3), (7, 4), (12, 5)] {
        let members = zoned(nodes, zones);
        let ring = Ring::new(members.clone()).unwrap();
        for i in 0..2_000 {
            let key = format!("user:{i}");
            let owners = ids(&ring, &key, 3);
            let zs: std::collections::BTreeSet<&str> = owners.iter().map(|o| zone_of(&members, o)).collect();
            assert_eq!(zs.len(), 3, "{key} on {owners:?} ({nodes} nodes, {zones} zones)");
            let walk: Vec<String> = ring.walk(key.as_bytes(), 3).map(|m| m.node_id.clone()).collect();
            assert_eq!(walk.len(), nodes, "the walk still offers every node as a fallback");
        }
    }
}

#[test]
fn with_fewer_zones_than_n_owners_spread_over_all_of_them() {
    let members = zoned(6, 2);
    let ring = Ring::new(members.clone()).unwrap();
    for i in 0..2_000 {
        let key = format!("guest:{i}");
        let owners = ids(&ring, &key, 3);
        let zs: std::collections::BTreeSet<&str> = owners.iter().map(|o| zone_of(&members, o)).collect();
        assert_eq!((owners.len(), zs.len()), (3, 2), "{key} on {owners:?}");
    }
}
