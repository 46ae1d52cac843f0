//! The xDS side: encoded resources, the snapshot per group of Envoys, and the ADS server.
//! It knows Envoy, not Knative.

mod csds;
mod decode;
mod grpc;
mod held;
mod request;
mod resource;
mod server;
mod stream;

pub use csds::{CsdsService, Served, served_to, served_to_group};
pub use decode::to_json;
pub use grpc::AdsServer;
pub use request::{SotwRequest, SotwRequestError};
pub use resource::{Group, Resource, ResourceMap, ResourceUpdate, SetDigest, Snapshot, TypeUrl};
pub use server::{
    AdsService, ClusterLookup, Proxy, ProxyRegistry, ProxyView, SnapshotFeed, Stopping, XdsTls,
    XdsTlsError,
};
pub use stream::{
    ClusterResources, DeltaResponse, Mode, Nack, RequestOutcome, Response, SentResource,
    SotwResponse, StreamState, SyncStatus, TypeStatus, WireResponse,
};
