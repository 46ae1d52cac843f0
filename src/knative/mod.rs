//! The Knative API types sluice reads and writes: networking `Ingress`/`ClusterIngress` with
//! Knative's defaults and validation, and their status as Knative's reconcilers write it.

mod ingress;
mod status;

pub use ingress::*;
pub use status::{IngressStatus, LoadBalancerIngressStatus, LoadBalancerStatus, StatusCondition};
