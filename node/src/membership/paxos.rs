//! Agreeing on the next version of a cluster-wide document (the layout, the pricing rules):
//! single-decree Paxos, one instance per version, among the members of the current layout.
//!
//! Why: two operators committing at once (or one retrying against another node) must never give
//! two different layouts the same version, or the cluster splits. Each member is an acceptor that
//! keeps, durably, the highest ballot it promised and the proposal it accepted for the version
//! being decided. A proposer that gathers promises from a majority must propose the accepted
//! layout with the highest ballot among them (if any) instead of its own; a layout accepted by a
//! majority is chosen, and any later proposal for that version carries the same layout.
//!
//! Pure state and rules here; the messages travel in `membership::Membership::commit`.

use cart_ring::layout::Layout;
use serde::{Deserialize, Serialize};

/// A proposal number: ordered by round, then proposer id (unique per proposer).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ballot {
    pub round: u64,
    pub proposer: String,
}

/// An acceptor's durable state for the version of document `D` being decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "D: Serialize + serde::de::DeserializeOwned")]
pub struct Acceptor<D = Layout> {
    /// The version this state is about (the slot).
    pub version: u64,
    pub promised: Ballot,
    pub accepted: Option<(Ballot, D)>,
}

impl<D> Default for Acceptor<D> {
    fn default() -> Self {
        Acceptor {
            version: 0,
            promised: Ballot::default(),
            accepted: None,
        }
    }
}

/// An acceptor's answer to a prepare.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared<D = Layout> {
    /// Promised not to accept lower ballots; carries what it accepted for this version so far.
    Promise(Option<(Ballot, D)>),
    /// It promised a higher ballot already.
    Refused { promised: Ballot },
    /// This version is already installed here (decided): the proposer is behind.
    Decided,
}

impl<D: Clone> Acceptor<D> {
    /// Moves to a newer slot (forgetting the old one's promises).
    fn slot(&mut self, version: u64) {
        if version > self.version {
            *self = Acceptor {
                version,
                ..Acceptor::default()
            };
        }
    }

    /// Phase 1. `installed` is the newest version this node has installed.
    pub fn prepare(&mut self, version: u64, ballot: &Ballot, installed: u64) -> Prepared<D> {
        if version <= installed || version < self.version {
            return Prepared::Decided;
        }
        self.slot(version);
        if *ballot > self.promised {
            self.promised = ballot.clone();
            Prepared::Promise(self.accepted.clone())
        } else {
            Prepared::Refused {
                promised: self.promised.clone(),
            }
        }
    }

    /// Phase 2: accepts unless it promised a higher ballot.
    pub fn accept(&mut self, version: u64, ballot: &Ballot, doc: &D, installed: u64) -> bool {
        if version <= installed || version < self.version {
            return false;
        }
        self.slot(version);
        if *ballot >= self.promised {
            self.promised = ballot.clone();
            self.accepted = Some((ballot.clone(), doc.clone()));
            true
        } else {
            false
        }
    }
}

/// The document a proposer must propose after phase 1: the accepted one with the highest ballot
/// among the promises, or its own when none accepted anything.
pub fn choose<D: Clone>(own: &D, promises: &[Option<(Ballot, D)>]) -> D {
    promises
        .iter()
        .flatten()
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, doc)| doc.clone())
        .unwrap_or_else(|| own.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cart_ring::layout::Change;
    use cart_ring::Member;
    use proptest::prelude::*;

    fn member(id: &str, port: u16) -> Member {
        Member {
            node_id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            weight: 1,
            zone: String::new(),
        }
    }

    fn base() -> Layout {
        Layout::initial(vec![member("n1", 1), member("n2", 2), member("n3", 3)], 3, 2, 2)
    }

    /// One step of a proposer, driven by the test's schedule.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Prepare { proposer: usize, acceptor: usize },
        Accept { proposer: usize, acceptor: usize },
        NewRound { proposer: usize },
    }

    struct Proposer {
        id: String,
        round: u64,
        own: Layout,
        promises: Vec<(usize, Option<(Ballot, Layout)>)>,
        proposal: Option<Layout>,
    }

    impl Proposer {
        fn ballot(&self) -> Ballot {
            Ballot {
                round: self.round,
                proposer: self.id.clone(),
            }
        }
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = (0..3usize, 0..3usize, 0..3u8).prop_map(|(p, a, kind)| match kind {
            0 => Step::Prepare {
                proposer: p,
                acceptor: a,
            },
            1 => Step::Accept {
                proposer: p,
                acceptor: a,
            },
            _ => Step::NewRound { proposer: p },
        });
        proptest::collection::vec(step, 1..80)
    }

    proptest! {
        /// Three proposers with three different layouts, messages delivered in any order (or
        /// never): whenever a majority accepted a layout in one ballot, every later majority is
        /// for the same layout, so a version never has two layouts.
        #[test]
        fn concurrent_commits_never_choose_two_layouts(schedule in steps()) {
            let l = base();
            let mut acceptors = vec![Acceptor::default(); 3];
            let mut proposers: Vec<Proposer> = (0..3)
                .map(|i| Proposer {
                    id: format!("n{}", i + 1),
                    round: 1,
                    own: l.apply(&[Change::Join(member(&format!("x{i}"), 10 + i as u16))]).unwrap(),
                    promises: Vec::new(),
                    proposal: None,
                })
                .collect();
            // (ballot, layout) -> acceptors that accepted it
            let mut accepted: Vec<(Ballot, Layout, Vec<usize>)> = Vec::new();
            let mut chosen: Option<Layout> = None;
            for step in schedule {
                match step {
                    Step::Prepare { proposer, acceptor } => {
                        let ballot = proposers[proposer].ballot();
                        if let Prepared::Promise(prior) = acceptors[acceptor].prepare(2, &ballot, 1) {
                            let p = &mut proposers[proposer];
                            if !p.promises.iter().any(|(a, _)| *a == acceptor) {
                                p.promises.push((acceptor, prior));
                            }
                            if p.promises.len() >= 2 && p.proposal.is_none() {
                                let priors: Vec<_> = p.promises.iter().map(|(_, x)| x.clone()).collect();
                                p.proposal = Some(choose(&p.own, &priors));
                            }
                        }
                    }
                    Step::Accept { proposer, acceptor } => {
                        let p = &proposers[proposer];
                        let Some(layout) = p.proposal.clone() else { continue };
                        let ballot = p.ballot();
                        if acceptors[acceptor].accept(2, &ballot, &layout, 1) {
                            let entry = match accepted.iter_mut().find(|(b, _, _)| *b == ballot) {
                                Some(e) => e,
                                None => {
                                    accepted.push((ballot.clone(), layout.clone(), Vec::new()));
                                    accepted.last_mut().unwrap()
                                }
                            };
                            prop_assert_eq!(&entry.1, &layout, "one ballot, one layout");
                            if !entry.2.contains(&acceptor) {
                                entry.2.push(acceptor);
                            }
                            if entry.2.len() >= 2 {
                                if let Some(c) = &chosen {
                                    prop_assert_eq!(c, &layout, "two layouts chosen for one version");
                                }
                                chosen = Some(layout);
                            }
                        }
                    }
                    Step::NewRound { proposer } => {
                        let p = &mut proposers[proposer];
                        let top = acceptors.iter().map(|a| a.promised.round).max().unwrap_or(0);
                        p.round = top + 1;
                        p.promises.clear();
                        p.proposal = None;
                    }
                }
            }
        }
    }

    #[test]
    fn a_decided_version_is_refused() {
        let mut a = Acceptor::default();
        let b = Ballot {
            round: 1,
            proposer: "n1".into(),
        };
        assert_eq!(a.prepare(2, &b, 2), Prepared::Decided);
        assert!(!a.accept(2, &b, &base(), 2));
        assert!(matches!(a.prepare(3, &b, 2), Prepared::Promise(None)));
        let lower = Ballot {
            round: 0,
            proposer: "n9".into(),
        };
        assert!(matches!(a.prepare(3, &lower, 2), Prepared::Refused { .. }));
        assert!(!a.accept(3, &lower, &base(), 2));
    }
}
