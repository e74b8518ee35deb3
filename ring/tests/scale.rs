//! Scale on paper: rings of 10, 100 and 1,000 nodes in 3–5 zones. Prints the max/mean ring share
//! (first-owner share and replica load) and the fraction of placements one join or one leave
//! moves, against the ideal, and the copies the zone walk shifts between old nodes; compared (1/N of the keys gain the new node as first owner). Run with
//! `cargo test -p cart-ring --release --test scale -- --nocapture` to see the table.

use cart_ring::layout::{moves, Change, Layout};
use cart_ring::{Member, Ring};

fn layout(nodes: usize, zones: usize) -> Layout {
    let members = (1..=nodes)
        .map(|i| Member {
            node_id: format!("n{i}"),
            addr: format!("10.0.{}.{}:7001", i / 250, i % 250 + 1),
            weight: 1,
            zone: format!("z{}", i % zones + 1),
        })
        .collect();
    Layout::initial(members, 3, 2, 2)
}

/// Replica load per node (keys it holds one of the 3 copies of), max over mean.
fn replica_imbalance(ring: &Ring, samples: usize) -> f64 {
    let mut load = std::collections::BTreeMap::new();
    for i in 0..samples {
        for m in ring.preference_list(format!("user:{i}").as_bytes(), 3) {
            *load.entry(m.node_id.clone()).or_insert(0usize) += 1;
        }
    }
    let max = *load.values().max().unwrap_or(&0) as f64;
    let mean = (samples * 3) as f64 / ring.members().len() as f64;
    max / mean
}

#[test]
fn rings_of_10_100_1000_nodes_stay_balanced_and_move_little() {
    println!("nodes zones  share max/mean  replicas max/mean  join moves (ideal)  leave moves (ideal)");
    for (nodes, zones, samples) in [(10, 3, 30_000), (100, 4, 30_000), (1000, 5, 20_000)] {
        let l = layout(nodes, zones);
        let ring = Ring::new(l.members.clone()).unwrap();
        let shares = ring.shares();
        let mean = 1.0 / nodes as f64;
        let max_share = shares.values().cloned().fold(0.0, f64::max);
        let imbalance = replica_imbalance(&ring, samples);

        let joined = l
            .apply(&[Change::Join(Member {
                node_id: "new".into(),
                addr: "10.9.9.9:7001".into(),
                weight: 1,
                zone: "z1".into(),
            })])
            .unwrap();
        let join = moves(&ring, &Ring::new(joined.members.clone()).unwrap(), 3, samples);
        let left = l.apply(&[Change::Leave { node_id: "n2".into() }]).unwrap();
        let leave = moves(&ring, &Ring::new(left.members.clone()).unwrap(), 3, samples);
        // A join gives the new node a copy of 3/(nodes+1) of the keys; a leave re-homes the
        // 3/nodes the leaver held.
        let (ideal_join, ideal_leave) = (3.0 / (nodes + 1) as f64, 3.0 / nodes as f64);
        println!(
            "{nodes:>5} {zones:>5}  {:>14.2}  {:>17.2}  {:>8.4} ({:.4})  {:>9.4} ({:.4})",
            max_share / mean,
            imbalance,
            join.keys_changed,
            ideal_join.min(1.0),
            leave.keys_changed,
            ideal_leave.min(1.0)
        );
        // The zone walk may shift a few copies between old nodes of the new node's zone.
        let stray_join: f64 = join
            .pairs
            .iter()
            .filter(|((_, to), _)| to != "new")
            .map(|(_, f)| f)
            .sum();
        let stray_leave: f64 = leave
            .pairs
            .iter()
            .filter(|((from, _), _)| from != "n2")
            .map(|(_, f)| f)
            .sum();
        println!("      copies moved between old nodes: join {stray_join:.4}, leave {stray_leave:.4}");
        assert!(stray_join < ideal_join.min(1.0) && stray_leave < ideal_leave.min(1.0));
        // Within 2x of ideal, and the replica load within 1.6x of the mean (vnodes + zones).
        assert!(
            join.keys_changed < 2.0 * ideal_join.min(1.0),
            "{nodes}: join moved {}",
            join.keys_changed
        );
        assert!(
            leave.keys_changed < 2.0 * ideal_leave.min(1.0),
            "{nodes}: leave moved {}",
            leave.keys_changed
        );
        assert!(imbalance < 1.6, "{nodes} nodes: replica load max/mean {imbalance}");
    }
}
