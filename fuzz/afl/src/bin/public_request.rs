//! AFL++ target: `cart_fuzz::public_request` (see fuzz/run.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        cart_fuzz::public_request(data);
    });
}
