//! Writes each fuzz target's seeds to `DIR/<target>/seed-N` (the AFL++ input directories).

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds".into());
    for (name, _) in cart_fuzz::TARGETS {
        let target_dir = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&target_dir)?;
        for (i, seed) in cart_fuzz::seeds(name).iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i}")), seed)?;
        }
    }
    Ok(())
}
