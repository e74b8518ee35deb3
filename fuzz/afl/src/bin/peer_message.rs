//! AFL++ target: `cart_fuzz::peer_message` (see fuzz/run.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        cart_fuzz::peer_message(data);
    });
}
