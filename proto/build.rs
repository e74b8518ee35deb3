//! Generates the gRPC code with `protox` (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in ["proto/cart.proto", "proto/replica.proto", "proto/admin.proto"] {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(["proto/cart.proto", "proto/replica.proto"], ["proto"])?;
    // The public API's descriptors, for gRPC server reflection (`grpcurl NODE list`).
    let public = protox::compile(["proto/cart.proto"], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cart_descriptor.bin"),
        prost::Message::encode_to_vec(&public),
    )?;
    tonic_prost_build::configure().btree_map(".").compile_fds(fds)?;
    // admin.proto imports cart.proto: reuse the types generated above instead of nesting modules.
    let admin = protox::compile(["proto/admin.proto"], ["proto"])?;
    let admin_out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("admin");
    std::fs::create_dir_all(&admin_out)?;
    tonic_prost_build::configure()
        .out_dir(admin_out)
        .btree_map(".")
        .extern_path(".cartdb.v1", "crate::pb")
        .compile_fds(admin)?;
    Ok(())
}
