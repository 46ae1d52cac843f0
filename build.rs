//! Compiles sluice's own API (proto/) without a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/sluice/admin/v1/admin.proto"];
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
