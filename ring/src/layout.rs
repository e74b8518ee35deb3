//! The cluster layout: a versioned document (members with zone and weight, N/R/W) that every
//! node holds, and the operator's staged changes to it.
//!
//! A change is staged (`join`, `leave`, `replace`), shown as a plan ([`Layout::apply`] gives the
//! next version, [`moves`] what it moves), then committed as version + 1. Everything here is
//! pure: the node decides how a version is agreed on and spread.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{Member, Ring, RingError, MAX_WEIGHT};

/// One version of the cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// 1 for the layout a cluster file describes; each commit adds one.
    pub version: u64,
    /// Sorted by node id.
    pub members: Vec<Member>,
    pub n: u32,
    pub r: u32,
    pub w: u32,
    /// Nodes this version removed with `replace`: presumed dead, so the transfer into this
    /// version does not wait for them to hand over their carts.
    #[serde(default)]
    pub retired: Vec<String>,
}

/// A staged change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new node (or new address, zone or weight of a node that already is a member).
    Join(Member),
    /// A member leaves once its carts have moved to their new owners.
    Leave { node_id: String },
    /// `new` takes the place (zone and weight) of `old`, which is presumed dead.
    Replace { old: String, new: Member },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    #[error("node {node_id:?} is not a member of layout version {version}")]
    UnknownNode { node_id: String, version: u64 },
    #[error("node {node_id:?} is already a member; leave or replace it first")]
    AlreadyMember { node_id: String },
    #[error("address {addr} is already used by node {node_id:?}")]
    DuplicateAddr { addr: String, node_id: String },
    #[error("the change leaves {members} members, fewer than n = {n} replicas per cart")]
    BelowN { members: usize, n: u32 },
    #[error("node {node_id:?} has weight {weight}; it must be between 1 and {MAX_WEIGHT}")]
    BadWeight { node_id: String, weight: u32 },
    #[error("node id {node_id:?} is not valid: 1 to 64 characters of [A-Za-z0-9_.-]")]
    BadNodeId { node_id: String },
    #[error("address {addr:?} of node {node_id:?} is not HOST:PORT")]
    BadAddr { node_id: String, addr: String },
    #[error("zone {zone:?} of node {node_id:?} is not valid: at most 64 characters of [A-Za-z0-9_.-]")]
    BadZone { node_id: String, zone: String },
    #[error("nothing is staged")]
    NothingStaged,
    #[error("the staged changes give the same members as version {version}")]
    NoEffect { version: u64 },
    #[error(transparent)]
    Ring(#[from] RingError),
}

fn name_ok(s: &str, empty_ok: bool) -> bool {
    (empty_ok || !s.is_empty()) && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn check_member(m: &Member) -> Result<(), LayoutError> {
    if !name_ok(&m.node_id, false) {
        return Err(LayoutError::BadNodeId {
            node_id: m.node_id.clone(),
        });
    }
    // A host name or IPv4 address of [A-Za-z0-9.-], or a bracketed IPv6 address, then a port: what
    // every node can dial (a layout no node can dial would stop them all from starting).
    let host_ok = |host: &str| match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.len() <= 253 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)),
    };
    let port_ok = m
        .addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && host_ok(host) && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok {
        return Err(LayoutError::BadAddr {
            node_id: m.node_id.clone(),
            addr: m.addr.clone(),
        });
    }
    if !name_ok(&m.zone, true) {
        return Err(LayoutError::BadZone {
            node_id: m.node_id.clone(),
            zone: m.zone.clone(),
        });
    }
    if m.weight == 0 || m.weight > MAX_WEIGHT {
        return Err(LayoutError::BadWeight {
            node_id: m.node_id.clone(),
            weight: m.weight,
        });
    }
    Ok(())
}

impl Layout {
    /// Version 1 of a cluster file's members.
    pub fn initial(mut members: Vec<Member>, n: u32, r: u32, w: u32) -> Layout {
        members.sort();
        Layout {
            version: 1,
            members,
            n,
            r,
            w,
            retired: Vec::new(),
        }
    }

    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }

    pub fn is_member(&self, node_id: &str) -> bool {
        self.member(node_id).is_some()
    }

    /// Every member valid, no id or address twice, at least N members.
    pub fn validate(&self) -> Result<(), LayoutError> {
        let mut addrs: BTreeMap<&str, &str> = BTreeMap::new();
        for m in &self.members {
            check_member(m)?;
            if let Some(other) = addrs.insert(&m.addr, &m.node_id) {
                return Err(LayoutError::DuplicateAddr {
                    addr: m.addr.clone(),
                    node_id: other.to_owned(),
                });
            }
        }
        if self.members.len() < self.n as usize {
            return Err(LayoutError::BelowN {
                members: self.members.len(),
                n: self.n,
            });
        }
        Ring::new(self.members.clone())?;
        Ok(())
    }

    /// The next version: `changes` applied in order, validated as a whole.
    pub fn apply(&self, changes: &[Change]) -> Result<Layout, LayoutError> {
        if changes.is_empty() {
            return Err(LayoutError::NothingStaged);
        }
        let mut members: BTreeMap<String, Member> =
            self.members.iter().map(|m| (m.node_id.clone(), m.clone())).collect();
        let mut retired = BTreeSet::new();
        let unknown = |node_id: &str| LayoutError::UnknownNode {
            node_id: node_id.to_owned(),
            version: self.version,
        };
        for change in changes {
            match change {
                Change::Join(m) => {
                    check_member(m)?;
                    members.insert(m.node_id.clone(), m.clone());
                }
                Change::Leave { node_id } => {
                    members.remove(node_id).ok_or_else(|| unknown(node_id))?;
                }
                Change::Replace { old, new } => {
                    if *old == new.node_id {
                        // Placement hashes ids: the same id would move nothing to the empty node.
                        return Err(LayoutError::AlreadyMember {
                            node_id: new.node_id.clone(),
                        });
                    }
                    let gone = members.remove(old).ok_or_else(|| unknown(old))?;
                    if members.contains_key(&new.node_id) {
                        return Err(LayoutError::AlreadyMember {
                            node_id: new.node_id.clone(),
                        });
                    }
                    let new = Member {
                        zone: if new.zone.is_empty() {
                            gone.zone
                        } else {
                            new.zone.clone()
                        },
                        weight: gone.weight,
                        ..new.clone()
                    };
                    check_member(&new)?;
                    members.insert(new.node_id.clone(), new);
                    retired.insert(old.clone());
                }
            }
        }
        let next = Layout {
            version: self.version + 1,
            members: members.into_values().collect(),
            n: self.n,
            r: self.r,
            w: self.w,
            retired: retired.into_iter().collect(),
        };
        if next.members == self.members {
            return Err(LayoutError::NoEffect { version: self.version });
        }
        next.validate()?;
        Ok(next)
    }

    /// Checks that `change` can join the staged ones (the whole list must apply). A join of a
    /// member updates its address, zone or weight.
    pub fn stage(&self, staged: &[Change], change: Change) -> Result<Vec<Change>, LayoutError> {
        let mut all = staged.to_vec();
        all.push(change);
        self.apply(&all)?;
        Ok(all)
    }

    /// A fingerprint of the version and its members (the membership header clients follow).
    pub fn fingerprint(&self) -> u64 {
        crate::membership_version(&self.members) ^ self.version.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// What a new layout moves, estimated on `samples` synthetic keys: the fraction of keys whose
/// owner set changes, and per `(from, to)` the fraction of keys whose copy `to` gains (`from` is
/// the old owner that gives it up, or the first old owner when none does).
#[derive(Debug, Clone, PartialEq)]
pub struct Moves {
    pub keys_changed: f64,
    pub pairs: BTreeMap<(String, String), f64>,
}

pub fn moves(old: &Ring, new: &Ring, n: usize, samples: usize) -> Moves {
    let mut changed = 0usize;
    let mut pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
    for i in 0..samples {
        let key = format!("sample:{i}");
        let before: Vec<&str> = old
            .preference_list(key.as_bytes(), n)
            .iter()
            .map(|m| m.node_id.as_str())
            .collect();
        let after: Vec<&str> = new
            .preference_list(key.as_bytes(), n)
            .iter()
            .map(|m| m.node_id.as_str())
            .collect();
        let gained: Vec<&str> = after.iter().filter(|a| !before.contains(a)).copied().collect();
        if gained.is_empty() {
            continue;
        }
        changed += 1;
        let mut losers = before.iter().filter(|b| !after.contains(b));
        for to in gained {
            let from = losers.next().or(before.first()).copied().unwrap_or("");
            *pairs.entry((from.to_owned(), to.to_owned())).or_default() += 1;
        }
    }
    let samples = samples.max(1) as f64;
    Moves {
        keys_changed: changed as f64 / samples,
        pairs: pairs.into_iter().map(|(k, v)| (k, v as f64 / samples)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, port: u16, zone: &str) -> Member {
        Member {
            node_id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            weight: 1,
            zone: zone.into(),
        }
    }

    fn three() -> Layout {
        Layout::initial(vec![m("n1", 1, ""), m("n2", 2, ""), m("n3", 3, "")], 3, 2, 2)
    }

    #[test]
    fn join_leave_replace_give_the_next_version() {
        let l = three();
        let joined = l.apply(&[Change::Join(m("n4", 4, ""))]).unwrap();
        assert_eq!(joined.version, 2);
        assert_eq!(joined.members.len(), 4);
        let left = joined.apply(&[Change::Leave { node_id: "n1".into() }]).unwrap();
        assert!(!left.is_member("n1"));
        let replaced = l
            .apply(&[Change::Replace {
                old: "n2".into(),
                new: m("n9", 9, ""),
            }])
            .unwrap();
        assert!(replaced.is_member("n9") && !replaced.is_member("n2"));
        assert_eq!(replaced.retired, vec!["n2".to_string()]);
    }

    #[test]
    fn bad_changes_are_refused_with_the_reason() {
        let l = three();
        let below = l.apply(&[Change::Leave { node_id: "n1".into() }]).unwrap_err();
        assert!(below.to_string().contains("fewer than n = 3"), "{below}");
        let unknown = l.apply(&[Change::Leave { node_id: "n7".into() }]).unwrap_err();
        assert!(unknown.to_string().contains("\"n7\""), "{unknown}");
        let dup = l.apply(&[Change::Join(m("n4", 1, ""))]).unwrap_err();
        assert!(dup.to_string().contains("already used by node \"n1\""), "{dup}");
        let same = l.stage(&[], Change::Join(m("n1", 1, ""))).unwrap_err();
        assert!(same.to_string().contains("the same members"), "{same}");
        let heavier = l
            .stage(
                &[],
                Change::Join(Member {
                    weight: 2,
                    ..m("n1", 1, "")
                }),
            )
            .unwrap();
        assert_eq!(l.apply(&heavier).unwrap().member("n1").unwrap().weight, 2);
        let taken = l
            .apply(&[Change::Replace {
                old: "n1".into(),
                new: m("n2", 9, ""),
            }])
            .unwrap_err();
        assert!(taken.to_string().contains("already a member"), "{taken}");
        assert_eq!(l.apply(&[]).unwrap_err(), LayoutError::NothingStaged);
        for addr in ["nowhere", "db 4:7001", "h\u{e9}:1", ":7001", "[::zz]:1"] {
            let bad = l.apply(&[Change::Join(Member {
                addr: addr.into(),
                ..m("n4", 4, "")
            })]);
            assert!(matches!(bad, Err(LayoutError::BadAddr { .. })), "{addr}: {bad:?}");
        }
        let v6 = l.apply(&[Change::Join(Member {
            addr: "[::1]:7004".into(),
            ..m("n4", 4, "")
        })]);
        assert!(v6.is_ok(), "{v6:?}");
        let same_id = l.apply(&[Change::Replace {
            old: "n2".into(),
            new: m("n2", 9, ""),
        }]);
        assert!(matches!(same_id, Err(LayoutError::AlreadyMember { .. })), "{same_id:?}");
    }

    #[test]
    fn a_join_moves_about_a_quarter_and_only_to_the_new_node() {
        let l = three();
        let next = l.apply(&[Change::Join(m("n4", 4, ""))]).unwrap();
        let (a, b) = (
            Ring::new(l.members.clone()).unwrap(),
            Ring::new(next.members.clone()).unwrap(),
        );
        let moves = moves(&a, &b, 3, 20_000);
        // N = 3 of 4 nodes: n4 gains a copy of three quarters of the keys.
        assert!((0.65..0.85).contains(&moves.keys_changed), "{moves:?}");
        assert!(moves.pairs.keys().all(|(_, to)| to == "n4"), "{moves:?}");
    }
}
