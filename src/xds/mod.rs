//! The xDS side: encoded resources, the snapshot per group of Envoys, and the ADS server.
//! It knows Envoy, not Knative.

mod decode;
mod resource;
mod server;
mod stream;

pub use decode::to_json;
pub use resource::{Group, Resource, ResourceMap, ResourceUpdate, SetDigest, Snapshot, TypeUrl};
pub use server::{
    AdsService, ClusterLookup, Proxy, ProxyRegistry, ProxyView, SnapshotFeed, Stopping,
};
pub use stream::{ClusterResources, Mode, Nack, RequestOutcome, Response, StreamState, TypeStatus};
