//! AFL++ target: `cart_fuzz::stored_cart` (see fuzz/run.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        cart_fuzz::stored_cart(data);
    });
}
