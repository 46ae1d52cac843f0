//! Stopping and restarting the processes of a test on purpose, and reading what Envoy counted
//! meanwhile.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::envoy::{Envoy, envoy_binary};
use super::sluice::{Sluice, SluicePorts, sluice_binary};

/// How long a signalled process may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// How to stop a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the process may finish what it is doing.
    Term,
    /// SIGKILL: gone at once, mid-write if it was writing.
    Kill,
}

impl Stop {
    fn signal(self) -> &'static str {
        match self {
            Stop::Term => "TERM",
            Stop::Kill => "KILL",
        }
    }
}

/// Sends `how` to process `pid` (a child this test started) with `kill(1)`.
fn send_signal(pid: u32, how: Stop) {
    let status = Command::new("kill")
        .args([format!("-{}", how.signal()), pid.to_string()])
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run kill -{} {pid}: {e}", how.signal()));
    assert!(status.success(), "kill -{} {pid} failed", how.signal());
}

/// Stops this sluice with `how` and waits (at most [`EXIT_TIMEOUT`]) for it to exit; returns
/// its exit status.
pub async fn stop_sluice(sluice: &Sluice, how: Stop) -> ExitStatus {
    send_signal(sluice.pid(), how);
    let mut status = None;
    super::wait_for(EXIT_TIMEOUT, || {
        status = sluice.exited();
        status.is_some()
    })
    .await;
    status.unwrap_or_else(|| {
        panic!(
            "sluice did not exit within {EXIT_TIMEOUT:?} of SIG{}",
            how.signal()
        )
    })
}

/// Stops this Envoy with `how` and waits (at most [`EXIT_TIMEOUT`]) for it to exit.
pub async fn stop_envoy(envoy: &Envoy, how: Stop) -> ExitStatus {
    send_signal(envoy.pid(), how);
    let mut status = None;
    super::wait_for(EXIT_TIMEOUT, || {
        status = envoy.exited();
        status.is_some()
    })
    .await;
    status.unwrap_or_else(|| {
        panic!(
            "envoy did not exit within {EXIT_TIMEOUT:?} of SIG{}",
            how.signal()
        )
    })
}

/// Every counter and gauge on Envoy's `/stats`, by name.
pub async fn envoy_stats(envoy: &Envoy) -> BTreeMap<String, u64> {
    let body = envoy.admin_get("/stats?format=json").await.body;
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("Envoy's /stats?format=json is not JSON ({e}): {body}"));
    json["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|stat| Some((stat["name"].as_str()?.to_owned(), stat["value"].as_u64()?)))
        .collect()
}

/// The sum of every stat whose name ends with `suffix` (e.g. `.no_cluster`).
pub fn sum_of(stats: &BTreeMap<String, u64>, suffix: &str) -> u64 {
    stats
        .iter()
        .filter(|(name, _)| name.ends_with(suffix))
        .map(|(_, value)| value)
        .sum()
}

/// Waits (at most `timeout`) until Envoy says it is connected to its control plane
/// (`control_plane.connected_state` 1); returns whether it did.
pub async fn wait_envoy_connected(envoy: &Envoy, timeout: Duration) -> bool {
    super::wait_for_async(timeout, async || {
        let Ok(response) = envoy
            .try_admin_get("/stats?filter=^control_plane.connected_state$")
            .await
        else {
            return false;
        };
        response.body.trim() == "control_plane.connected_state: 1"
    })
    .await
}

/// Waits (at most `timeout`) until sluice's `/debug/proxies` lists Envoy `node_id` answered
/// (not `settling` after a reconnect), with every type in `types` (`CDS`, `LDS`, ...) ACKed and
/// nothing in flight; returns whether it did. Envoy counts a response (`update_success`) before
/// it ACKs it, so by then it has counted every response sent so far.
pub async fn wait_proxy_synced(
    sluice: &Sluice,
    node_id: &str,
    types: &[&str],
    timeout: Duration,
) -> bool {
    super::wait_for_async(timeout, async || {
        let Ok(response) =
            super::client::get(sluice.admin_addr(), "localhost", "/debug/proxies", &[]).await
        else {
            return false;
        };
        let Ok(proxies) = serde_json::from_str::<serde_json::Value>(&response.body) else {
            return false;
        };
        proxies.as_array().into_iter().flatten().any(|proxy| {
            proxy["node_id"] == node_id
                && proxy["settling"] == false
                && types.iter().all(|t| {
                    let status = &proxy["types"][*t];
                    status["pending"] == false
                        && status["acked_version"]
                            .as_str()
                            .is_some_and(|v| !v.is_empty())
                })
        })
    })
    .await
}

/// `sluice up`: sluice and the Envoy it starts, as one child process of the test. Dropping it
/// sends SIGTERM (so that it stops its Envoy too), then SIGKILL if it is still there after
/// [`EXIT_TIMEOUT`].
pub struct SluiceUp {
    child: std::process::Child,
    dir: tempfile::TempDir,
    ports: SluicePorts,
    envoy_admin: u16,
}

impl SluiceUp {
    /// `sluice up --dir <manifests>` on free ports, with the test's Envoy binary, delta xDS if
    /// `delta`. Stdout and stderr go to files in a temp dir.
    pub fn start(manifests: &Path, delta: bool) -> SluiceUp {
        let dir = super::temp_dir("sluice-up-");
        let ports = SluicePorts::free();
        let envoy_admin = super::free_port();
        let addr = |port: u16| super::local(port).to_string();
        let log = |name: &str| {
            std::fs::File::create(dir.path().join(name))
                .unwrap_or_else(|e| panic!("create {name}: {e}"))
        };
        let mut command = Command::new(sluice_binary());
        command
            .arg("up")
            .arg("--dir")
            .arg(manifests)
            .arg("--envoy")
            .arg(envoy_binary())
            .args(["--envoy-admin-addr", &addr(envoy_admin)])
            .args(["--xds-addr", &addr(ports.xds)])
            .args(["--admin-addr", &addr(ports.admin)])
            .args(["--listen-address", "127.0.0.1"])
            .args(["--http-port", &ports.http.to_string()])
            .args(["--https-port", &ports.https.to_string()])
            .args(["--internal-http-port", &ports.internal_http.to_string()])
            .args(["--internal-https-port", &ports.internal_https.to_string()]);
        if delta {
            command.arg("--delta");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `sluice up`: {e}"));
        SluiceUp {
            child,
            dir,
            ports,
            envoy_admin,
        }
    }

    pub fn ports(&self) -> SluicePorts {
        self.ports
    }

    /// The admin address of the Envoy it started.
    pub fn envoy_admin_addr(&self) -> std::net::SocketAddr {
        super::local(self.envoy_admin)
    }

    /// Its stdout and stderr so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "--- sluice up stdout ---\n{}\n--- sluice up stderr ---\n{}",
            read("stdout.log").unwrap_or_default(),
            super::tail(&read("stderr.log").unwrap_or_default(), 60)
        )
    }

    /// Stops it with `how` and waits (at most [`EXIT_TIMEOUT`]) for it to exit.
    pub async fn stop(&mut self, how: Stop) -> ExitStatus {
        send_signal(self.child.id(), how);
        let mut status = None;
        super::wait_for(EXIT_TIMEOUT, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        })
        .await;
        status.unwrap_or_else(|| {
            panic!(
                "`sluice up` did not exit within {EXIT_TIMEOUT:?} of SIG{}:\n{}",
                how.signal(),
                self.logs()
            )
        })
    }
}

impl Drop for SluiceUp {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            send_signal(self.child.id(), Stop::Term);
            let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
            while self.child.try_wait().ok().flatten().is_none()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
