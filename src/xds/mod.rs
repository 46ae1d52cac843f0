//! The xDS side: encoded resources, the snapshot per group of Envoys, and the ADS server.
//! It knows Envoy, not Knative.

mod resource;

pub use resource::{Group, Resource, ResourceMap, ResourceUpdate, Snapshot, TypeUrl, set_version};
