//! sluice: an Envoy control plane for Knative networking ingresses.
//!
//! Data flows one way: a [`source`] fills the [`world`] (Knative Routes become Ingresses on the
//! way, in [`routes`]), [`translate`] turns the world into Envoy resources, and [`xds`] serves
//! them to Envoy over ADS; the [`engine`] wires those, and [`status`] reports back on each
//! ingress. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bootstrap;
pub mod cluster;
pub mod engine;
pub mod install;
pub mod knative;
pub mod metrics;
pub mod options;
pub mod routes;
pub mod runtime;
pub mod source;
pub mod status;
pub mod translate;
pub mod world;
pub mod xds;
