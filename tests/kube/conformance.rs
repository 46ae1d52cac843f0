//! Knative's ingress conformance suite in Kubernetes mode: every case of
//! `support::conformance::cases` with its Services, EndpointSlices, Secrets and Ingresses
//! applied to the shared API server, in a namespace of its own that its sluice alone watches,
//! and readiness read from the ingress's status there. Trials `conformance::<case>::sotw` and
//! `conformance::<case>::delta`; `tests/conformance.rs` runs the same cases in file mode.

use libtest_mimic::Trial;

use crate::in_both;
use crate::support::conformance::{Target, cases};

/// The trials of `$case`s over both ADS variants.
macro_rules! in_kubernetes_mode {
    ($($case:ident),+ $(,)?) => {{
        let mut trials = Vec::new();
        $(
            trials.extend(in_both(
                concat!("conformance::", stringify!($case)),
                |cluster, delta| cases::$case(Target::Cluster { cluster, delta }),
            ));
        )+
        trials
    }};
}

pub fn trials() -> Vec<Trial> {
    for_each_conformance_case!(in_kubernetes_mode)
}
