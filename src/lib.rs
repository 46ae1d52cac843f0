//! sluice: an Envoy control plane for Knative networking ingresses.
//!
//! Data flows one way: a [`source`] fills the [`world`], [`translate`] turns the world into
//! Envoy resources, and [`xds`] serves them to Envoy over ADS. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod knative;
pub mod source;
pub mod translate;
pub mod world;
pub mod xds;
