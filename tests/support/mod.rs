//! Test support for sluice's integration tests: real HTTP/gRPC backends, a real Envoy, the
//! sluice binary, manifest builders and a small HTTP client. Use it with `mod support;`.
//!
//! Everything here is bounded in time (no unbounded waits or loops), listens on loopback only,
//! and only ever kills processes it started itself.
//!
//! Environment knobs:
//! - `SLUICE_ENVOY`: path of the envoy binary (else `<crate>/.venv/bin/envoy`, else `PATH`).
//! - `SLUICE_TEST_BIN`: the sluice binary to test (default: the one cargo built).
//! - `SLUICE_TEST_ENVOY_LOG_LEVEL`: Envoy's `--log-level` (default `info`).
//! - `SLUICE_TEST_KEEP=1`: keep the temp dirs (logs, bootstrap) of Envoy and sluice.
#![allow(dead_code, unused_imports, unused_macros)]

/// Instantiates each `async fn name(delta: bool)` twice: `sotw::name` on state-of-the-world
/// ADS and `delta::name` on incremental ADS. Use it with `#[macro_use] mod support;`.
macro_rules! in_both_modes {
    ($($test:ident),+ $(,)?) => {
        /// State-of-the-world ADS.
        mod sotw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(false).await;
                }
            )+
        }
        /// Incremental (delta) ADS.
        mod delta {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(true).await;
                }
            )+
        }
    };
}

pub mod backend;
pub mod client;
pub mod cluster;
#[macro_use]
pub mod conformance;
pub mod envoy;
pub mod images;
pub mod manifests;
pub mod restart;
pub mod sluice;
pub mod stack;
pub mod tls;
pub mod traffic;
pub mod worlds;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub use backend::{Backend, GrpcBackend, ServingStatus, grpc_health_check};
pub use client::Response;
pub use envoy::Envoy;
pub use manifests::ManifestDir;
pub use sluice::Sluice;
pub use stack::{Stack, StackOptions};

/// How often the polling helpers look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A port that was free a moment ago on 127.0.0.1. Racy by nature: prefer handing pre-bound
/// listeners to in-process servers, and use this only for ports another process must bind.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports that were free a moment ago on 127.0.0.1, for other processes to bind.
///
/// They are chosen below the kernel's ephemeral range (`ip_local_port_range`), which is where
/// every `bind(127.0.0.1:0)` and every outgoing connection's local port comes from: tests run
/// in parallel start backends on port 0 and make thousands of connections, and a port taken
/// from that range could be handed to one of them before the process meant to bind it does.
/// Ports are never handed out twice by one test process, and each is checked to be bindable
/// (all held while choosing, so they differ from each other).
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::Mutex;

    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start <= LOWEST + 1_000 {
        // No room below the ephemeral range: let the kernel choose.
        return ephemeral_free_ports(n);
    }
    let span = u64::from(ephemeral_start - LOWEST);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    // A random start per call (std's hasher is randomly keyed), then a walk through the range.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let start = hasher.finish() % span;
    let mut held = Vec::with_capacity(n);
    for step in 0..span {
        if held.len() == n {
            break;
        }
        let port = LOWEST + ((start + step * 7_919) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, listener));
        }
    }
    assert_eq!(
        held.len(),
        n,
        "found only {} free ports below {ephemeral_start}",
        held.len()
    );
    held.iter()
        .map(|(port, _)| {
            handed_out.insert(*port);
            *port
        })
        .collect()
}

/// `n` distinct ports the kernel picked for `bind(127.0.0.1:0)`.
fn ephemeral_free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("local_addr of a bound listener")
                .port()
        })
        .collect()
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `cond` every [`POLL_INTERVAL`] until it holds or `timeout` passes; returns whether it
/// held. Sleeps asynchronously, so in-process servers keep running meanwhile.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for_async(timeout, async || cond()).await
}

/// Like [`wait_for`], for a condition that must await (an HTTP request, say):
/// `wait_for_async(secs(10), async || stack.get("h", "/").await.status == 200).await`.
pub async fn wait_for_async(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let max_attempts = timeout.as_millis() / POLL_INTERVAL.as_millis() + 2;
    for _ in 0..max_attempts {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    false
}

/// Polls `attempt` until it returns `Some`, or `timeout` passes (then `None`).
pub async fn poll_until<T>(
    timeout: Duration,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let max_attempts = timeout.as_millis() / POLL_INTERVAL.as_millis() + 2;
    for _ in 0..max_attempts {
        if let Some(found) = attempt().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    None
}

/// Awaits `fut` for at most `timeout`, panicking with `what` if it takes longer.
pub async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

/// Seconds, for brevity in tests.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Whether temp dirs should be kept for inspection (`SLUICE_TEST_KEEP=1`).
pub(crate) fn keep_temp() -> bool {
    std::env::var_os("SLUICE_TEST_KEEP").is_some_and(|v| v != "0" && !v.is_empty())
}

/// A fresh temp dir named after `prefix`; kept on disk when `SLUICE_TEST_KEEP` is set.
pub(crate) fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep_temp())
        .tempdir()
        .expect("create a temp dir")
}

/// An error with all its sources, `outer: inner: innermost`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    for _ in 0..16 {
        let Some(inner) = source else { break };
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
