//! Workload profiles: which cart operations a run issues and in what proportion.

use std::fmt;

use clap::ValueEnum;
use serde::Serialize;

/// One kind of cart operation the bench can issue. The order is the report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    GetCart,
    AddItem,
    SetQuantity,
    RemoveItem,
    ApplyCoupon,
    RemoveCoupon,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::GetCart,
        OpKind::AddItem,
        OpKind::SetQuantity,
        OpKind::RemoveItem,
        OpKind::ApplyCoupon,
        OpKind::RemoveCoupon,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The name used in reports and JSON keys.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::GetCart => "get_cart",
            OpKind::AddItem => "add_item",
            OpKind::SetQuantity => "set_quantity",
            OpKind::RemoveItem => "remove_item",
            OpKind::ApplyCoupon => "apply_coupon",
            OpKind::RemoveCoupon => "remove_coupon",
        }
    }

    /// Position in [`OpKind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A named operation mix (`--profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// 100% AddItem of quantity 1.
    Add,
    /// 60% GetCart, 25% AddItem, 8% SetQuantity, 5% RemoveItem, 1% ApplyCoupon, 1% RemoveCoupon.
    Storefront,
    /// 70% AddItem, 25% GetCart, 5% SetQuantity.
    BlackFriday,
    /// 90% GetCart, 10% AddItem.
    ReadHeavy,
    /// 100% AddItem of quantity 1 to one line (drawn at random) of the one cart
    /// `user:size-<N>`, pre-filled with N lines first (`--cart-lines N`): the cost of an add as a
    /// cart grows.
    AddToSize,
}

impl Profile {
    /// The mix as (operation, weight in percent); weights sum to 100.
    pub fn mix(self) -> &'static [(OpKind, u32)] {
        use OpKind::*;
        match self {
            Profile::Add | Profile::AddToSize => &[(AddItem, 100)],
            Profile::Storefront => &[
                (GetCart, 60),
                (AddItem, 25),
                (SetQuantity, 8),
                (RemoveItem, 5),
                (ApplyCoupon, 1),
                (RemoveCoupon, 1),
            ],
            Profile::BlackFriday => &[(AddItem, 70), (GetCart, 25), (SetQuantity, 5)],
            Profile::ReadHeavy => &[(GetCart, 90), (AddItem, 10)],
        }
    }

    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Add => "add",
            Profile::Storefront => "storefront",
            Profile::BlackFriday => "black-friday",
            Profile::ReadHeavy => "read-heavy",
            Profile::AddToSize => "add-to-size",
        }
    }

    /// The operation kinds this profile can issue, in report order.
    pub fn kinds(self) -> Vec<OpKind> {
        let mut kinds: Vec<OpKind> = self.mix().iter().map(|(k, _)| *k).collect();
        kinds.sort();
        kinds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mix_sums_to_100_percent() {
        for p in Profile::value_variants() {
            let total: u32 = p.mix().iter().map(|(_, w)| w).sum();
            assert_eq!(total, 100, "{}", p.name());
        }
    }

    #[test]
    fn kind_index_matches_all() {
        for (i, k) in OpKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn profile_names_match_the_cli() {
        for p in Profile::value_variants() {
            let parsed = Profile::from_str(p.name(), false).expect("parses");
            assert_eq!(parsed, *p);
        }
    }
}
