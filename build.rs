//! Compiles sluice's own API (proto/) without a system protoc, and puts the Envoy descriptor
//! set that envoy-types ships (but does not export) where `/debug/config` can decode resources
//! with it.

use std::path::{Path, PathBuf};
use std::process::Command;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let protos = ["proto/sluice/admin/v1/admin.proto"];
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::copy(
        envoy_descriptor_set()?,
        out_dir.join("envoy_descriptors.bin"),
    )?;
    Ok(())
}

/// Where the envoy-types package that this build uses keeps its descriptor set. Not
/// `--offline`: `cargo metadata` resolves the dev-dependencies too, which a first release build
/// on a fresh machine has not downloaded.
fn envoy_descriptor_set() -> Result<PathBuf, Error> {
    let cargo = std::env::var("CARGO")?;
    let target = std::env::var("TARGET")?;
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .args(["--filter-platform", &target])
        .current_dir(std::env::var("CARGO_MANIFEST_DIR")?)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|package| package["name"] == "envoy-types")
        .and_then(|package| package["manifest_path"].as_str())
        .ok_or("envoy-types is not in the dependency graph")?;
    let descriptors = Path::new(manifest)
        .parent()
        .ok_or("envoy-types' manifest has no directory")?
        .join("src/generated/types.bin");
    if !descriptors.is_file() {
        return Err(format!("{} is missing", descriptors.display()).into());
    }
    println!("cargo:rerun-if-changed={}", descriptors.display());
    Ok(descriptors)
}
