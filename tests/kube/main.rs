//! Kubernetes mode against a real kube-apiserver and etcd, with a real Envoy.
//!
//! The API server refuses loopback addresses in EndpointSlices, so this test binary runs itself
//! again inside new network and PID namespaces (`unshare`, as root): `lo` gets
//! [`support::cluster::TEST_ADDRESS`] besides 127.0.0.1, and the API server, sluice, Envoy and
//! the backends all live there, so no traffic leaves it, and everything the run started dies
//! with it. One API server serves every test; each test works in namespaces of its own, and
//! each sluice it starts watches only those (`--namespace`). Tests that restart the API server
//! start one of their own.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod cli;
mod conformance;
mod install;
mod kit;
mod options;
mod parity;
mod replicas;
mod restart;
mod routes;
mod status;
mod sync;

use std::future::Future;
use std::process::{Command, ExitCode};
use std::sync::OnceLock;

use libtest_mimic::{Arguments, Failed, Trial};

use support::cluster::{Cluster, TEST_ADDRESS};

/// Set in the environment of the run inside the namespaces.
const INSIDE: &str = "SLUICE_KUBE_TEST_NAMESPACE";

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The API server every test shares, started by the first test that asks.
fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| runtime().block_on(Cluster::start()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// A trial running `test` on its own runtime with the shared cluster.
fn trial<F, Fut>(name: &str, test: F) -> Trial
where
    F: FnOnce(&'static Cluster) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    Trial::test(name, move || {
        let cluster = cluster();
        runtime().block_on(test(cluster));
        Ok::<(), Failed>(())
    })
}

/// The trial `name::sotw` and `name::delta`: `test` over each ADS variant.
fn in_both<F, Fut>(name: &str, test: F) -> [Trial; 2]
where
    F: Fn(&'static Cluster, bool) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()>,
{
    let delta = test.clone();
    [
        trial(&format!("{name}::sotw"), move |cluster| {
            test(cluster, false)
        }),
        trial(&format!("{name}::delta"), move |cluster| {
            delta(cluster, true)
        }),
    ]
}

fn trials() -> Vec<Trial> {
    let mut trials = Vec::new();
    trials.extend(in_both(
        "sync::initial_list_then_every_kind",
        sync::every_kind,
    ));
    trials.extend(in_both(
        "sync::ingress_class_filtering",
        sync::class_filtering,
    ));
    trials.extend(in_both("sync::tls_secret_lifecycle", sync::tls_secrets));
    trials.extend(in_both(
        "status::content_and_no_redundant_writes",
        status::content,
    ));
    trials.extend(in_both(
        "status::invalid_ingress_keeps_last_good",
        status::invalid,
    ));
    trials.extend(in_both(
        "restart::api_server_restart_under_traffic",
        restart::api_server,
    ));
    trials.extend(in_both("replicas::leader_hand_over", replicas::hand_over));
    trials.push(trial(
        "parity::same_resources_from_files_and_api",
        parity::same_resources_from_files_and_api,
    ));
    trials.extend(in_both(
        "parity::restarted_replica_resends_nothing",
        parity::restarted_replica_resends_nothing,
    ));
    trials.extend(in_both(
        "install::least_privilege_rbac",
        install::least_privilege,
    ));
    trials.extend(in_both(
        "install::least_privilege_rbac_serving_routes",
        install::least_privilege_serving_routes,
    ));
    trials.push(trial("install::install_knative", install::install_knative));
    trials.push(trial(
        "install::install_crds_leaves_foreign_ones",
        install::install_crds_leaves_foreign_ones,
    ));
    trials.extend(in_both(
        "routes::served_with_status_and_rollout",
        routes::served_with_status,
    ));
    trials.extend(in_both(
        "routes::foreign_ingress_wins",
        routes::foreign_ingress_wins,
    ));
    trials.extend(in_both(
        "routes::rollout_through_owning_service",
        routes::rollout_through_owning_service,
    ));
    trials.extend(in_both("options::config_map", options::config_map));
    trials.extend(conformance::trials());
    trials.extend(cli::trials());
    trials
}

fn main() -> ExitCode {
    if std::env::var_os(INSIDE).is_none() {
        return run_in_namespaces();
    }
    let arguments = Arguments::from_args();
    let conclusion = libtest_mimic::run(&arguments, trials());
    if let Some(cluster) = CLUSTER.get() {
        cluster.stop();
    }
    if conclusion.has_failed() {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs this binary again, with the same arguments, in new network and PID namespaces.
fn run_in_namespaces() -> ExitCode {
    let exe = std::env::current_exe().expect("the test binary's path");
    let setup =
        format!("ip link set lo up && ip addr add {TEST_ADDRESS}/32 dev lo && exec \"$0\" \"$@\"");
    let status = Command::new("unshare")
        .args([
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            &setup,
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1")
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            // 101 is a failed test and 2 a bad argument; `unshare` itself fails with 1.
            if status.code() == Some(1) {
                eprintln!(
                    "the Kubernetes-mode tests run in network and PID namespaces of their own: \
                     they need root (or CAP_SYS_ADMIN), `unshare` and `ip` (iproute2); the run \
                     ended with {status}"
                );
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("cannot run `unshare` to make the tests' namespaces: {error}");
            ExitCode::FAILURE
        }
    }
}
