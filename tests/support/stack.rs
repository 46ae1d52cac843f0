//! Sluice plus one Envoy it configures, and an HTTP client aimed at that Envoy's listeners.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::client::{self, Response};
use super::envoy::Envoy;
use super::poll_until;
use super::sluice::Sluice;

/// How a [`Stack`] is started.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Incremental (delta) xDS instead of state-of-the-world.
    pub delta: bool,
    /// Passed to `sluice bootstrap --role`.
    pub role: Option<String>,
    /// Extra `sluice bootstrap` arguments (e.g. `--eager-stats`).
    pub bootstrap_args: Vec<String>,
    /// Extra `sluice serve` arguments (e.g. `--ingress-class`).
    pub sluice_args: Vec<String>,
    /// Extra Envoy arguments.
    pub envoy_args: Vec<String>,
    /// The Envoy node id; a unique one is made up if `None`.
    pub node_id: Option<String>,
}

/// A started sluice and an Envoy bootstrapped from it, both ready. Fields drop in order:
/// Envoy first, then sluice.
pub struct Stack {
    pub envoy: Envoy,
    pub sluice: Sluice,
}

static NODE_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Stack {
    /// Starts sluice on `manifests` and an Envoy using `sluice bootstrap` (delta xDS if
    /// `delta`), and waits for both to be ready.
    pub async fn start(manifests: &Path, delta: bool) -> Stack {
        Stack::start_with(
            manifests,
            StackOptions {
                delta,
                ..StackOptions::default()
            },
        )
        .await
    }

    pub async fn start_with(manifests: &Path, options: StackOptions) -> Stack {
        let sluice_args: Vec<&str> = options.sluice_args.iter().map(String::as_str).collect();
        Stack::start_on(Sluice::start_with(manifests, &sluice_args), options).await
    }

    /// Waits for a started `sluice` to be ready, then starts an Envoy bootstrapped from it
    /// (`options.sluice_args` are not used: sluice already runs).
    pub async fn start_on(sluice: Sluice, options: StackOptions) -> Stack {
        sluice.wait_ready().await;
        let node_id = options.node_id.clone().unwrap_or_else(|| {
            format!(
                "sluice-test-{}-{}",
                std::process::id(),
                NODE_COUNTER.fetch_add(1, Ordering::SeqCst)
            )
        });
        let bootstrap_args: Vec<&str> = options.bootstrap_args.iter().map(String::as_str).collect();
        let bootstrap = sluice.bootstrap_with(
            &node_id,
            options.role.as_deref(),
            options.delta,
            &bootstrap_args,
        );
        let envoy_args: Vec<&str> = options.envoy_args.iter().map(String::as_str).collect();
        let envoy = Envoy::start_with(&bootstrap, &envoy_args);
        envoy.wait_ready().await;
        Stack { envoy, sluice }
    }

    /// Envoy's external plain-HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.sluice.http_addr()
    }

    /// Envoy's cluster-local plain-HTTP listener.
    pub fn internal_http_addr(&self) -> SocketAddr {
        self.sluice.internal_http_addr()
    }

    /// The tails of both processes' logs, for assertion messages. (A panicking test prints
    /// them anyway when the stack is dropped.)
    pub fn logs(&self) -> String {
        format!(
            "{}\n--- envoy log (tail) ---\n{}",
            self.sluice.log_tail(60),
            self.envoy.log_tail(60)
        )
    }

    /// `GET` over HTTP/1.1 to the external listener with `Host: host`; panics (with logs) if no
    /// response at all comes back. Any status is returned.
    pub async fn get(&self, host: &str, path: &str) -> Response {
        self.get_with(host, path, &[]).await
    }

    /// Like [`Stack::get`] with extra request headers (appended in order).
    pub async fn get_with(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.expect(client::get(self.http_addr(), host, path, headers).await)
    }

    /// `GET` over HTTP/1.1 to the cluster-local listener.
    pub async fn get_internal(&self, host: &str, path: &str) -> Response {
        self.get_internal_with(host, path, &[]).await
    }

    pub async fn get_internal_with(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        self.expect(client::get(self.internal_http_addr(), host, path, headers).await)
    }

    /// `GET` over h2c (prior knowledge) to the external listener, `:authority` = `host`.
    pub async fn get_h2(&self, host: &str, path: &str) -> Response {
        self.expect(client::get_h2(self.http_addr(), host, path, &[]).await)
    }

    /// Repeats `GET host path` (HTTP/1.1, to `addr`) until `accept` likes the response —
    /// configuration reaches Envoy asynchronously — and returns it. Connection errors count
    /// as "not yet". Panics with the last outcome and both logs after `timeout`.
    pub async fn get_until(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        timeout: Duration,
        accept: impl Fn(&Response) -> bool,
    ) -> Response {
        let mut last = String::from("no attempt made");
        let found = poll_until(timeout, async || {
            match client::get(addr, host, path, &[]).await {
                Ok(resp) if accept(&resp) => Some(resp),
                Ok(resp) => {
                    last = format!("{} {:?} {}", resp.status, resp.headers, resp.body);
                    None
                }
                Err(e) => {
                    last = e;
                    None
                }
            }
        })
        .await;
        match found {
            Some(resp) => resp,
            None => panic!(
                "GET http://{host}{path} via {addr}: no acceptable response within {timeout:?}; \
                 last: {last}"
            ),
        }
    }

    /// Waits until `GET host path` on the external listener answers `status`.
    pub async fn wait_status(&self, host: &str, path: &str, status: u16) -> Response {
        self.get_until(self.http_addr(), host, path, super::secs(20), |r| {
            r.status == status
        })
        .await
    }

    fn expect(&self, result: Result<Response, String>) -> Response {
        result.unwrap_or_else(|e| panic!("{e}"))
    }
}
