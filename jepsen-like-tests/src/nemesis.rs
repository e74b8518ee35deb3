//! Faults and their schedule. A schedule is drawn from a seed: quiet gap, fault, hold, heal,
//! again, until the active phase ends; the last fault heals before the final phase. Both tiers
//! carry out the same [`Fault`] values (real: nft, signals, libfaketime; simulation: turmoil).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

/// The kinds of fault, as `--nemesis` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Nemesis {
    /// Two halves that cannot reach each other.
    PartitionHalves,
    /// One node cut off from all others.
    Isolate,
    /// Two halves joined only through one bridge node.
    Bridge,
    /// Each node reaches only its two ring neighbours (every node sees a different majority).
    MajoritiesRing,
    /// kill -9, restarted at heal.
    Kill,
    /// SIGSTOP, SIGCONT at heal.
    Pause,
    /// Wall-clock skew of some processes (libfaketime), reset at heal.
    Clock,
    /// Random packet loss on every node (nft numgen).
    Loss,
    /// A membership change: one node leaves the layout (its carts move to the others), and joins
    /// again at heal (carts move back).
    Membership,
    /// One node's disk fails (full, I/O errors on write or flush, slow flushes, or flushes that
    /// lie and lose their writes in a crash); at heal it recovers and the node restarts.
    Disk,
}

pub const ALL: [Nemesis; 10] = [
    Nemesis::PartitionHalves,
    Nemesis::Isolate,
    Nemesis::Bridge,
    Nemesis::MajoritiesRing,
    Nemesis::Kill,
    Nemesis::Pause,
    Nemesis::Clock,
    Nemesis::Loss,
    Nemesis::Membership,
    Nemesis::Disk,
];

impl Nemesis {
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::PartitionHalves => "partition-halves",
            Nemesis::Isolate => "isolate",
            Nemesis::Bridge => "bridge",
            Nemesis::MajoritiesRing => "majorities-ring",
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Clock => "clock",
            Nemesis::Loss => "loss",
            Nemesis::Membership => "membership",
            Nemesis::Disk => "disk",
        }
    }

    /// Parses a comma-separated list; `all` means every kind, `none` no fault at all.
    pub fn parse_list(spec: &str) -> Result<Vec<Nemesis>, String> {
        let mut out = BTreeSet::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => out.extend(ALL),
                "none" => {}
                other => {
                    out.insert(other.parse()?);
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

impl FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.into_iter().find(|n| n.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|n| n.name()).collect();
            format!("unknown nemesis {s:?}; one of {}, all, none", names.join(", "))
        })
    }
}

/// One fault over node indexes `0..nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Symmetric: no traffic between the two nodes of each pair.
    Partition {
        kind: Nemesis,
        blocked: Vec<(usize, usize)>,
    },
    Kill(Vec<usize>),
    Pause(Vec<usize>),
    /// (node, seconds added to its wall clock)
    Skew(Vec<(usize, i64)>),
    /// Percent of packets each node drops on receipt.
    Loss {
        percent: u32,
    },
    /// The node leaves the layout; it joins again at heal.
    Leave(usize),
    /// The node's disk fails this way; at heal it works again and the node restarts.
    Disk {
        node: usize,
        fault: DiskFault,
    },
}

/// How a disk fails (see `cart_node::faults::Fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    NoSpace,
    WriteError,
    FlushError,
    SlowFlush,
    /// Flushes "succeed" but keep nothing; the node crashes at heal and loses those writes.
    LyingFlush,
}

impl Fault {
    pub fn nemesis(&self) -> Nemesis {
        match self {
            Fault::Partition { kind, .. } => *kind,
            Fault::Kill(_) => Nemesis::Kill,
            Fault::Pause(_) => Nemesis::Pause,
            Fault::Skew(_) => Nemesis::Clock,
            Fault::Loss { .. } => Nemesis::Loss,
            Fault::Leave(_) => Nemesis::Membership,
            Fault::Disk { .. } => Nemesis::Disk,
        }
    }

    /// A short description with node names.
    pub fn describe(&self, names: &[String]) -> String {
        let name = |i: &usize| names.get(*i).cloned().unwrap_or_else(|| format!("#{i}"));
        let list = |nodes: &[usize]| nodes.iter().map(name).collect::<Vec<_>>().join(" ");
        match self {
            Fault::Partition { blocked, .. } => blocked
                .iter()
                .map(|(a, b)| format!("{}-x-{}", name(a), name(b)))
                .collect::<Vec<_>>()
                .join(" "),
            Fault::Kill(nodes) | Fault::Pause(nodes) => list(nodes),
            Fault::Skew(skews) => skews
                .iter()
                .map(|(n, s)| format!("{}{:+}s", name(n), s))
                .collect::<Vec<_>>()
                .join(" "),
            Fault::Loss { percent } => format!("{percent}% of packets"),
            Fault::Leave(node) => format!("{} leaves, joins at heal", name(node)),
            Fault::Disk { node, fault } => format!("{} disk: {fault:?}", name(node)),
        }
    }

    /// Draws a fault of `kind` over `nodes` nodes.
    pub fn draw(kind: Nemesis, nodes: usize, rng: &mut SmallRng) -> Fault {
        let mut order: Vec<usize> = (0..nodes).collect();
        order.shuffle(rng);
        let cut = |a: &[usize], b: &[usize]| -> Vec<(usize, usize)> {
            let mut pairs: Vec<(usize, usize)> = a
                .iter()
                .flat_map(|x| b.iter().map(move |y| (*x.min(y), *x.max(y))))
                .collect();
            pairs.sort_unstable();
            pairs
        };
        // Up to a minority of the nodes (at least one).
        let minority = (nodes.saturating_sub(1) / 2).max(1);
        let some = |rng: &mut SmallRng| order[..rng.random_range(1..=minority)].to_vec();
        match kind {
            Nemesis::PartitionHalves => {
                let half = nodes / 2;
                Fault::Partition {
                    kind,
                    blocked: cut(&order[..half], &order[half..]),
                }
            }
            Nemesis::Isolate => Fault::Partition {
                kind,
                blocked: cut(&order[..1], &order[1..]),
            },
            Nemesis::Bridge => {
                // order[0] is the bridge; the others split in two halves that only it joins.
                let rest = &order[1..];
                let half = rest.len() / 2;
                Fault::Partition {
                    kind,
                    blocked: cut(&rest[..half], &rest[half..]),
                }
            }
            Nemesis::MajoritiesRing => {
                // Ring in shuffled order: each node keeps its two neighbours.
                let mut blocked = Vec::new();
                for i in 0..nodes {
                    for j in (i + 1)..nodes {
                        let gap = (j - i).min(nodes - (j - i));
                        if gap > 1 {
                            blocked.push((order[i].min(order[j]), order[i].max(order[j])));
                        }
                    }
                }
                blocked.sort_unstable();
                Fault::Partition { kind, blocked }
            }
            Nemesis::Kill => Fault::Kill(sorted(some(rng))),
            Nemesis::Pause => Fault::Pause(sorted(some(rng))),
            Nemesis::Clock => {
                let skews = some(rng)
                    .into_iter()
                    .map(|n| {
                        let secs = rng.random_range(5..=300i64);
                        (n, if rng.random_bool(0.5) { -secs } else { secs })
                    })
                    .collect();
                Fault::Skew(skews)
            }
            Nemesis::Loss => Fault::Loss {
                percent: rng.random_range(10..=40),
            },
            Nemesis::Membership => Fault::Leave(order[0]),
            Nemesis::Disk => Fault::Disk {
                node: order[0],
                fault: [
                    DiskFault::NoSpace,
                    DiskFault::WriteError,
                    DiskFault::FlushError,
                    DiskFault::SlowFlush,
                    DiskFault::LyingFlush,
                ][rng.random_range(0..5)],
            },
        }
    }
}

fn sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v
}

/// A fault applied at `start` (since the run began) and healed `hold` later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub start: Duration,
    pub hold: Duration,
    pub fault: Fault,
}

/// Gaps and durations of a schedule.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time before each fault: drawn from this range.
    pub quiet: (Duration, Duration),
    /// How long each fault lasts: drawn from this range.
    pub hold: (Duration, Duration),
}

impl Timing {
    /// Seconds-scale faults for real processes.
    pub const REAL: Timing = Timing {
        quiet: (Duration::from_secs(2), Duration::from_secs(5)),
        hold: (Duration::from_secs(5), Duration::from_secs(12)),
    };
}

/// Draws the faults of a run from `seed`: every fault heals by `active_for`.
pub fn schedule(seed: u64, kinds: &[Nemesis], nodes: usize, active_for: Duration, timing: Timing) -> Vec<Step> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let mut steps = Vec::new();
    if kinds.is_empty() || nodes < 2 {
        return steps;
    }
    let draw = |rng: &mut SmallRng, (lo, hi): (Duration, Duration)| {
        Duration::from_millis(rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64))
    };
    let mut t = Duration::ZERO;
    // Bounded: every step advances `t` by at least quiet.0 + hold.0 (> 0 for any sane timing).
    let max_steps = 10_000;
    while steps.len() < max_steps {
        let start = t + draw(&mut rng, timing.quiet);
        let hold = draw(&mut rng, timing.hold);
        if start + hold > active_for || hold.is_zero() {
            break;
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        steps.push(Step {
            start,
            hold,
            fault: Fault::draw(kind, nodes, &mut rng),
        });
        t = start + hold;
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_deterministic_and_heal_in_time() {
        let active = Duration::from_secs(120);
        let a = schedule(7, &ALL, 5, active, Timing::REAL);
        assert_eq!(a, schedule(7, &ALL, 5, active, Timing::REAL));
        assert_ne!(a, schedule(8, &ALL, 5, active, Timing::REAL));
        assert!(a.len() >= 5, "{}", a.len());
        for w in a.windows(2) {
            assert!(w[0].start + w[0].hold <= w[1].start, "faults overlap");
        }
        assert!(a.iter().all(|s| s.start + s.hold <= active));
    }

    #[test]
    fn partitions_have_the_right_shape() {
        let mut rng = SmallRng::seed_from_u64(1);
        let Fault::Partition { blocked, .. } = Fault::draw(Nemesis::PartitionHalves, 5, &mut rng) else {
            panic!("not a partition");
        };
        assert_eq!(blocked.len(), 6); // 2 × 3
        let Fault::Partition { blocked, .. } = Fault::draw(Nemesis::Isolate, 5, &mut rng) else {
            panic!("not a partition");
        };
        assert_eq!(blocked.len(), 4);
        let Fault::Partition { blocked, .. } = Fault::draw(Nemesis::Bridge, 5, &mut rng) else {
            panic!("not a partition");
        };
        assert_eq!(blocked.len(), 4); // 2 × 2, the bridge reaches everyone
        let Fault::Partition { blocked, .. } = Fault::draw(Nemesis::MajoritiesRing, 5, &mut rng) else {
            panic!("not a partition");
        };
        assert_eq!(blocked.len(), 5); // each node loses its 2 non-neighbours
        for n in 0..5 {
            assert_eq!(blocked.iter().filter(|(a, b)| *a == n || *b == n).count(), 2);
        }
    }

    #[test]
    fn lists_parse() {
        assert_eq!(Nemesis::parse_list("all").expect("all").len(), 10);
        assert_eq!(
            Nemesis::parse_list("kill,isolate").expect("list"),
            vec![Nemesis::Isolate, Nemesis::Kill]
        );
        assert!(Nemesis::parse_list("none").expect("none").is_empty());
        assert!(Nemesis::parse_list("meteor").is_err());
    }
}
