//! AFL++ target: `cart_fuzz::layout` (see fuzz/run.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        cart_fuzz::layout(data);
    });
}
