//! Catch-ups: what a replica ships to a reader whose copy of the cart differs from its own, in
//! place of its whole state.
//!
//! A reader that holds a state `X` (context `K`) asks a replica holding `S` (context `C`).
//! [`Cart::catch_up`] splits `S` by `K`: the entries whose dots `K` lacks travel whole (the
//! reader has never seen them), of the others only their dots travel (the reader holds those
//! entries, or removed them), with `C`, the touch time and the merge mark. The request records
//! a busy cart keeps (a thousand, each naming a product) are nearly all of the second kind, so a
//! catch-up of a hot cart is a few kilobytes where its state is tens.
//!
//! [`Cart::rebuild`] on the reader (whose context must cover `K`) turns a catch-up back into a
//! state `S'`: `S`'s context, `S`'s entries the reader has not seen, and the reader's own
//! entries whose dots `S` still holds. `S'` differs from `S` only by entries the reader removed
//! and `S` still holds, whose dots the reader has seen; so `X ⊔ S' = X ⊔ S` (the join keeps an
//! entry of `X` when `S'` holds its dot or `C` lacks it, and takes an entry of `S'` when `X`'s
//! context lacks its dot: the same answers as for `S`), and `S'`'s context is `S`'s, which is
//! what read repair compares. The laws are property-tested in `tests/laws.rs`.

use serde::{Deserialize, Serialize};

use crate::cart::{Cart, Dotted};
use crate::context::{Context, Dot};
use crate::error::CartError;
use crate::ids::Actor;

/// A replica's state as a reader with a known context needs it (see the module doc). Encode it
/// with [`crate::codec::encode_catch_up`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CatchUpWire")]
pub struct CatchUp {
    /// The entries whose dots the reader lacks, with the sender's whole context, touch time and
    /// merge mark.
    news: Cart,
    /// Per set (lines, saved, coupons, request records), the dots of the sender's entries that
    /// the reader has seen.
    kept: [KeptDots; 4],
    /// Which context the split was made for ([`known_hash`]): a reader rebuilds only its own.
    known: u64,
}

/// [`CatchUp`] as decoded, before its form is checked: every way of deserializing a catch-up
/// checks it, so [`Cart::rebuild`] can rely on sorted sets and dots within the context.
#[derive(Deserialize)]
struct CatchUpWire {
    news: Cart,
    kept: [KeptDots; 4],
    known: u64,
}

impl TryFrom<CatchUpWire> for CatchUp {
    type Error = &'static str;

    fn try_from(wire: CatchUpWire) -> Result<CatchUp, Self::Error> {
        let catch_up = CatchUp {
            news: wire.news,
            kept: wire.kept,
            known: wire.known,
        };
        if catch_up.is_well_formed() {
            Ok(catch_up)
        } else {
            Err("a catch-up not in canonical order, or with dots beyond its context")
        }
    }
}

/// A sorted set of dots, compact on the wire: per actor (ascending), its first counter and then
/// the gaps to the next (a record's dot is usually a counter or two after the previous one of its
/// writer, so a gap is one byte where a dot with its 64-bit actor is about ten).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KeptDots(Vec<(Actor, Vec<u64>)>);

impl KeptDots {
    fn from_sorted(dots: &[Dot]) -> KeptDots {
        let mut out: Vec<(Actor, Vec<u64>)> = Vec::new();
        let mut last = 0;
        for dot in dots {
            match out.last_mut() {
                Some((actor, gaps)) if *actor == dot.actor => gaps.push(dot.counter - last),
                _ => out.push((dot.actor, vec![dot.counter])),
            }
            last = dot.counter;
        }
        KeptDots(out)
    }

    /// The dots, sorted; `None` unless actors ascend and each actor's counters strictly increase.
    fn dots(&self) -> Option<Vec<Dot>> {
        let mut out = Vec::with_capacity(self.len());
        for (i, (actor, gaps)) in self.0.iter().enumerate() {
            let (&first, rest) = gaps.split_first()?;
            if i > 0 && self.0[i - 1].0 >= *actor {
                return None;
            }
            let mut counter = first;
            out.push(Dot { actor: *actor, counter });
            for &gap in rest {
                if gap == 0 {
                    return None;
                }
                counter = counter.checked_add(gap)?;
                out.push(Dot { actor: *actor, counter });
            }
        }
        Some(out)
    }

    fn len(&self) -> usize {
        self.0.iter().map(|(_, gaps)| gaps.len()).sum()
    }
}

/// xxh3 of a context's canonical encoding.
fn known_hash(known: &Context) -> Result<u64, CartError> {
    Ok(xxhash_rust::xxh3::xxh3_64(&crate::codec::encode_context(known)?))
}

impl CatchUp {
    /// The sender's context.
    pub fn context(&self) -> &Context {
        &self.news.context
    }

    /// Entries that travel whole.
    pub fn news(&self) -> usize {
        let n = &self.news;
        n.lines.len() + n.saved.len() + n.coupons.len() + n.requests.len()
    }

    /// Entries that travel as their dots only.
    pub fn kept(&self) -> usize {
        self.kept.iter().map(KeptDots::len).sum()
    }

    /// Whether this is something a sender could have made: sorted sets, every dot within the
    /// sender's context.
    fn is_well_formed(&self) -> bool {
        self.news.is_well_formed()
            && self.kept.iter().all(|kept| {
                kept.dots()
                    .is_some_and(|dots| dots.iter().all(|d| self.news.context.contains(*d)))
            })
    }
}

/// `entries` split by `known`: those it lacks (cloned, in order) and the dots of the rest.
fn split<E: Dotted + Clone>(entries: &[E], known: &Context) -> (Vec<E>, KeptDots) {
    let mut news = Vec::new();
    let mut kept = Vec::with_capacity(entries.len());
    for e in entries {
        if known.contains(e.dot()) {
            kept.push(e.dot());
        } else {
            news.push(e.clone());
        }
    }
    // Lines, saved items and coupons are kept by dot already; request records by id.
    if !kept.is_sorted() {
        kept.sort_unstable();
    }
    kept.dedup();
    (news, KeptDots::from_sorted(&kept))
}

/// The reader's entries whose dots `kept` holds and the sender's `news`, in key order.
fn rebuild_set<E: Dotted + Clone>(mine: &[E], kept: &[Dot], news: Vec<E>) -> Vec<E> {
    let mut out = Vec::with_capacity(kept.len() + news.len());
    let mut theirs = news.into_iter().peekable();
    for e in mine.iter().filter(|e| kept.binary_search(&e.dot()).is_ok()) {
        while let Some(t) = theirs.next_if(|t| t.key() < e.key()) {
            out.push(t);
        }
        // Equal keys are one write-once entry: the sender's copy is dropped.
        theirs.next_if(|t| t.key() == e.key());
        out.push(e.clone());
    }
    out.extend(theirs);
    out
}

impl Cart {
    /// This state as a reader whose context is `known` needs it (see [`crate::catchup`]).
    pub fn catch_up(&self, known: &Context) -> Result<CatchUp, CartError> {
        let (lines, kept_lines) = split(&self.lines, known);
        let (saved, kept_saved) = split(&self.saved, known);
        let (coupons, kept_coupons) = split(&self.coupons, known);
        let (requests, kept_requests) = split(&self.requests, known);
        Ok(CatchUp {
            news: Cart {
                context: self.context.clone(),
                lines,
                saved,
                coupons,
                touched_at_ms: self.touched_at_ms,
                requests,
                merged_into: self.merged_into.clone(),
            },
            kept: [kept_lines, kept_saved, kept_coupons, kept_requests],
            known: known_hash(known)?,
        })
    }

    /// The sender's state, as far as it matters to this one, from a catch-up made for a
    /// context `known` that this state covers (see [`crate::catchup`]); refused if it was
    /// made for another context or this state does not cover `known`.
    pub fn rebuild(&self, catch_up: CatchUp, known: &Context) -> Result<Cart, CartError> {
        if catch_up.known != known_hash(known)? || !self.context.covers(known) {
            return Err(CartError::Decode {
                reason: "a catch-up made for another context than the one this state covers".into(),
            });
        }
        let CatchUp { news, kept, .. } = catch_up;
        let malformed = || CartError::Decode {
            reason: "a catch-up's kept dots are not sorted".into(),
        };
        let [kept_lines, kept_saved, kept_coupons, kept_requests] = kept.map(|k| k.dots());
        let (kept_lines, kept_saved, kept_coupons, kept_requests) = (
            kept_lines.ok_or_else(malformed)?,
            kept_saved.ok_or_else(malformed)?,
            kept_coupons.ok_or_else(malformed)?,
            kept_requests.ok_or_else(malformed)?,
        );
        let rebuilt = Cart {
            lines: rebuild_set(&self.lines, &kept_lines, news.lines),
            saved: rebuild_set(&self.saved, &kept_saved, news.saved),
            coupons: rebuild_set(&self.coupons, &kept_coupons, news.coupons),
            requests: rebuild_set(&self.requests, &kept_requests, news.requests),
            context: news.context,
            touched_at_ms: news.touched_at_ms,
            merged_into: news.merged_into,
        };
        // Well-formed by construction: this state's entries and the news (checked by every
        // decode, see `CatchUpWire`) are sorted and merged in order, and every kept dot is within
        // the news' context.
        debug_assert!(rebuilt.is_well_formed());
        Ok(rebuilt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::dot;

    #[test]
    fn kept_dots_are_gaps_per_actor_and_come_back_sorted() {
        let dots = vec![
            dot(3, 1),
            dot(3, 2),
            dot(3, 9),
            dot(0xffff_ffff_ffff, 40),
            dot(0xffff_ffff_ffff, 41),
        ];
        let kept = KeptDots::from_sorted(&dots);
        assert_eq!(
            kept.0,
            vec![(Actor(3), vec![1, 1, 7]), (Actor(0xffff_ffff_ffff), vec![40, 1])]
        );
        assert_eq!(kept.dots(), Some(dots));
        assert_eq!(kept.len(), 5);
        assert_eq!(KeptDots::default().dots(), Some(Vec::new()));
    }

    #[test]
    fn a_catch_up_with_dots_beyond_its_context_does_not_decode() {
        let cart = Cart::default();
        let mut catch_up = cart.catch_up(cart.context()).unwrap();
        let bytes = crate::codec::encode_catch_up(&catch_up).unwrap();
        assert_eq!(crate::codec::decode_catch_up(&bytes).unwrap(), catch_up);
        catch_up.kept[3] = KeptDots::from_sorted(&[dot(99, 5)]);
        let bytes = crate::codec::encode_catch_up(&catch_up).unwrap();
        let refused = crate::codec::decode_catch_up(&bytes).unwrap_err();
        assert!(refused.to_string().contains("beyond its context"), "{refused}");
    }

    #[test]
    fn kept_dots_out_of_order_are_refused() {
        for bad in [
            vec![(Actor(1), vec![4, 0])],                   // a counter twice
            vec![(Actor(2), vec![1]), (Actor(1), vec![1])], // actors descending
            vec![(Actor(1), vec![1]), (Actor(1), vec![2])], // an actor twice
            vec![(Actor(1), vec![])],                       // an actor without dots
            vec![(Actor(1), vec![u64::MAX, 1])],            // past the counter's range
        ] {
            assert_eq!(KeptDots(bad.clone()).dots(), None, "{bad:?}");
        }
    }
}
