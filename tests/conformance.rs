//! Knative's ingress conformance suite in file mode: every case of
//! `support::conformance::cases` against sluice on a manifest directory and a real Envoy, as
//! `sotw::<case>` and `delta::<case>`. `tests/kube/conformance.rs` runs the same cases in
//! Kubernetes mode; `docs/conformance.md` is the table of cases.
//!
//! Run: `cargo test --test conformance`.

#[macro_use]
mod support;

use support::conformance::{Target, cases};

/// Each case as a test over state-of-the-world ADS (`sotw::<case>`) and over incremental ADS
/// (`delta::<case>`).
macro_rules! in_file_mode {
    ($($case:ident),+ $(,)?) => {
        /// State-of-the-world ADS.
        mod sotw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Target::Files { delta: false }).await;
                }
            )+
        }
        /// Incremental (delta) ADS.
        mod delta {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Target::Files { delta: true }).await;
                }
            )+
        }
    };
}

for_each_conformance_case!(in_file_mode);
