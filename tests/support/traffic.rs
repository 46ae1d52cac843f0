//! A client that keeps sending requests through Envoy while a test breaks things, and records
//! every request that did not come back `200` from a backend the test accepts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::client;

/// One thing the client asks for, in turn with the others.
#[derive(Debug, Clone)]
pub struct Target {
    /// An Envoy listener.
    pub addr: SocketAddr,
    pub host: String,
    /// The backends (`x-backend`) allowed to answer.
    pub backends: Vec<String>,
}

impl Target {
    pub fn new(addr: SocketAddr, host: &str, backends: &[&str]) -> Target {
        Target {
            addr,
            host: host.to_owned(),
            backends: backends.iter().map(|b| b.to_string()).collect(),
        }
    }
}

/// What one request saw, for the failure list.
#[derive(Debug, Clone)]
pub struct Failure {
    pub target: String,
    pub outcome: String,
}

#[derive(Default)]
struct Shared {
    targets: Mutex<Vec<Target>>,
    stop: AtomicBool,
    requests: AtomicUsize,
    failures: Mutex<Vec<Failure>>,
    /// Per target index, the backend of the last `200`.
    last_backend: Mutex<Vec<Option<String>>>,
}

/// Requests looping through the targets, one at a time on fresh connections, until
/// [`Traffic::stop`]. Every loop is bounded: a request is at most
/// [`client::REQUEST_TIMEOUT`], and the loop ends when stopped or dropped.
pub struct Traffic {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

/// Longest a request loop may run: a test that forgets to stop it does not run forever.
const MAX_RUN: Duration = Duration::from_secs(300);

impl Traffic {
    pub fn start(targets: Vec<Target>) -> Traffic {
        assert!(!targets.is_empty(), "traffic needs at least one target");
        let shared = Arc::new(Shared {
            last_backend: Mutex::new(vec![None; targets.len()]),
            targets: Mutex::new(targets),
            ..Shared::default()
        });
        let task = tokio::spawn(run(shared.clone()));
        Traffic {
            shared,
            task: Some(task),
        }
    }

    /// Changes which backends may answer `host` (on every listener).
    pub fn accept(&self, host: &str, backends: &[&str]) {
        let mut targets = self.shared.targets.lock().expect("traffic targets lock");
        for target in targets.iter_mut().filter(|t| t.host == host) {
            target.backends = backends.iter().map(|b| b.to_string()).collect();
        }
    }

    /// How many requests have completed (successfully or not).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every failed request so far.
    pub fn failures(&self) -> Vec<Failure> {
        self.shared
            .failures
            .lock()
            .expect("traffic failures lock")
            .clone()
    }

    /// Waits until `n` more requests have completed (at most `timeout`); panics if they do
    /// not, since then the client is stuck.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) {
        let target = self.requests() + n;
        let done = super::wait_for(timeout, || self.requests() >= target).await;
        assert!(
            done,
            "the traffic loop made only {} of {target} requests within {timeout:?}",
            self.requests()
        );
    }

    /// Waits until every target of `host` has last been answered by `backend` (at most
    /// `timeout`); returns whether that happened.
    pub async fn wait_served_by(&self, host: &str, backend: &str, timeout: Duration) -> bool {
        super::wait_for(timeout, || {
            let targets = self.shared.targets.lock().expect("traffic targets lock");
            let last = self.shared.last_backend.lock().expect("last backend lock");
            targets
                .iter()
                .zip(last.iter())
                .filter(|(target, _)| target.host == host)
                .all(|(_, last)| last.as_deref() == Some(backend))
        })
        .await
    }

    /// Stops the loop and returns how many requests were made and which failed.
    pub async fn stop(mut self) -> (usize, Vec<Failure>) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(client::REQUEST_TIMEOUT * 2, task).await;
        }
        (self.requests(), self.failures())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(shared: Arc<Shared>) {
    let deadline = tokio::time::Instant::now() + MAX_RUN;
    let mut index = 0;
    while !shared.stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
        let target = {
            let targets = shared.targets.lock().expect("traffic targets lock");
            index = (index + 1) % targets.len();
            targets[index].clone()
        };
        let result = client::get(target.addr, &target.host, "/", &[]).await;
        let outcome = match &result {
            Ok(resp) if resp.status == 200 => match resp.backend() {
                Some(backend) if target.backends.iter().any(|b| b == backend) => {
                    shared.last_backend.lock().expect("last backend lock")[index] =
                        Some(backend.to_owned());
                    None
                }
                other => Some(format!("200 from backend {other:?}")),
            },
            Ok(resp) => Some(format!("{} {:?}", resp.status, resp.body.trim())),
            Err(error) => Some(error.clone()),
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        if let Some(outcome) = outcome {
            shared
                .failures
                .lock()
                .expect("traffic failures lock")
                .push(Failure {
                    target: format!("http://{} via {}", target.host, target.addr),
                    outcome,
                });
        }
    }
}
