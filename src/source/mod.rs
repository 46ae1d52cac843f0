//! Sources fill the world: today a directory of manifests.

pub mod file;
