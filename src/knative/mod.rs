//! The Knative API types sluice reads and writes: networking `Ingress`/`ClusterIngress` with
//! Knative's defaults and validation, their status as Knative's reconcilers write it, and
//! Serving's `Route` and `Configuration`.

mod ingress;
mod route;
mod status;

pub use ingress::*;
pub use route::*;
pub use status::{IngressStatus, LoadBalancerIngressStatus, LoadBalancerStatus, StatusCondition};
