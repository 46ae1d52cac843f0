//! The sluice binary under test: `sluice serve` as a child process, and its one-shot commands.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::client::{self, Response};
use super::{free_ports, local, poll_until, tail, temp_dir};

/// How long [`Sluice::wait_ready`] waits for `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The sluice binary: `$SLUICE_TEST_BIN` if set (e.g. a release build), else the one cargo
/// built for this test run.
pub fn sluice_binary() -> PathBuf {
    std::env::var_os("SLUICE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")))
}

/// The ports one `sluice serve` uses, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct SluicePorts {
    pub xds: u16,
    pub admin: u16,
    pub http: u16,
    pub https: u16,
    pub internal_http: u16,
    pub internal_https: u16,
}

impl SluicePorts {
    /// Six distinct ports that were free a moment ago.
    pub fn free() -> SluicePorts {
        let p = free_ports(6);
        SluicePorts {
            xds: p[0],
            admin: p[1],
            http: p[2],
            https: p[3],
            internal_http: p[4],
            internal_https: p[5],
        }
    }
}

/// A running `sluice serve`. Dropping it kills (SIGKILL) and reaps exactly this process; if the
/// test is panicking, the tails of its stdout and stderr are printed first (so panics in here
/// do not repeat them).
pub struct Sluice {
    child: Mutex<Child>,
    dir: tempfile::TempDir,
    manifests: PathBuf,
    ports: SluicePorts,
    /// Where the admin server listens: 127.0.0.1 unless a test asks for another address.
    admin_ip: IpAddr,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Sluice {
    /// `sluice serve --dir <manifests>` on free ports.
    pub fn start(manifests: &Path) -> Sluice {
        Sluice::start_with(manifests, &[])
    }

    /// Like [`Sluice::start`], with `extra_args` appended (e.g. `["--ingress-class", "x"]`).
    pub fn start_with(manifests: &Path, extra_args: &[&str]) -> Sluice {
        Sluice::start_on(manifests, SluicePorts::free(), extra_args)
    }

    /// `sluice serve` on the given ports.
    pub fn start_on(manifests: &Path, ports: SluicePorts, extra_args: &[&str]) -> Sluice {
        let mut args = vec!["--dir".to_owned(), manifests.display().to_string()];
        args.extend(extra_args.iter().map(|arg| arg.to_string()));
        Sluice::spawn(&args, manifests, ports, Ipv4Addr::LOCALHOST.into())
    }

    /// `sluice serve` in Kubernetes mode on free ports, watching the API server of
    /// `kubeconfig`, with `extra_args` appended (e.g. `["--namespace", ns]`).
    pub fn start_in_cluster(kubeconfig: &Path, extra_args: &[&str]) -> Sluice {
        Sluice::start_in_cluster_on(kubeconfig, SluicePorts::free(), extra_args)
    }

    /// Like [`Sluice::start_in_cluster`], on the given ports.
    pub fn start_in_cluster_on(
        kubeconfig: &Path,
        ports: SluicePorts,
        extra_args: &[&str],
    ) -> Sluice {
        let mut args = vec!["--kubeconfig".to_owned(), kubeconfig.display().to_string()];
        args.extend(extra_args.iter().map(|arg| arg.to_string()));
        Sluice::spawn(&args, kubeconfig, ports, Ipv4Addr::LOCALHOST.into())
    }

    /// Like [`Sluice::start_in_cluster`], with the admin server on `admin_ip` (an address an
    /// EndpointSlice may name, unlike loopback) instead of 127.0.0.1.
    pub fn start_in_cluster_with_admin_on(
        kubeconfig: &Path,
        admin_ip: IpAddr,
        extra_args: &[&str],
    ) -> Sluice {
        let mut args = vec!["--kubeconfig".to_owned(), kubeconfig.display().to_string()];
        args.extend(extra_args.iter().map(|arg| arg.to_string()));
        Sluice::spawn(&args, kubeconfig, SluicePorts::free(), admin_ip)
    }

    /// `sluice serve <source_args>` on `ports`, its admin server on `admin_ip`; `source` is
    /// what it serves from (a manifest directory or a kubeconfig).
    fn spawn(
        source_args: &[String],
        source: &Path,
        ports: SluicePorts,
        admin_ip: IpAddr,
    ) -> Sluice {
        let dir = temp_dir("sluice-serve-");
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let addr = |port: u16| local(port).to_string();
        let child = Command::new(sluice_binary())
            .arg("serve")
            .args(["--xds-addr", &addr(ports.xds)])
            .args([
                "--admin-addr",
                &SocketAddr::new(admin_ip, ports.admin).to_string(),
            ])
            .args(["--listen-address", "127.0.0.1"])
            .args(["--http-port", &ports.http.to_string()])
            .args(["--https-port", &ports.https.to_string()])
            .args(["--internal-http-port", &ports.internal_http.to_string()])
            .args(["--internal-https-port", &ports.internal_https.to_string()])
            .args(source_args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create sluice stdout.log"))
            .stderr(File::create(&stderr_path).expect("create sluice stderr.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", sluice_binary().display()));
        Sluice {
            child: Mutex::new(child),
            dir,
            manifests: source.to_path_buf(),
            ports,
            admin_ip,
            stdout_path,
            stderr_path,
        }
    }

    pub fn ports(&self) -> SluicePorts {
        self.ports
    }

    pub fn xds_addr(&self) -> SocketAddr {
        local(self.ports.xds)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::new(self.admin_ip, self.ports.admin)
    }

    /// Where Envoy's external plain-HTTP listener (`--http-port`) is.
    pub fn http_addr(&self) -> SocketAddr {
        local(self.ports.http)
    }

    pub fn https_addr(&self) -> SocketAddr {
        local(self.ports.https)
    }

    /// Where Envoy's cluster-local plain-HTTP listener (`--internal-http-port`) is.
    pub fn internal_http_addr(&self) -> SocketAddr {
        local(self.ports.internal_http)
    }

    pub fn internal_https_addr(&self) -> SocketAddr {
        local(self.ports.internal_https)
    }

    pub fn manifests_dir(&self) -> &Path {
        &self.manifests
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().expect("sluice child lock").id()
    }

    /// stdout and stderr so far, labelled.
    pub fn logs(&self) -> String {
        let stdout = fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        format!("--- sluice stdout ---\n{stdout}\n--- sluice stderr ---\n{stderr}")
    }

    /// The last `lines` lines of stdout and of stderr, labelled.
    pub fn log_tail(&self, lines: usize) -> String {
        let stdout = fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        format!(
            "--- sluice stdout (tail) ---\n{}\n--- sluice stderr (tail) ---\n{}",
            tail(&stdout, lines),
            tail(&stderr, lines)
        )
    }

    /// The exit status, if the process has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .expect("sluice child lock")
            .try_wait()
            .ok()
            .flatten()
    }

    /// Waits (at most [`READY_TIMEOUT`]) for `GET /readyz` to answer 200; panics with the logs
    /// if the process exits or the time runs out.
    pub async fn wait_ready(&self) {
        let ready = poll_until(READY_TIMEOUT, async || {
            if let Some(status) = self.exited() {
                panic!("sluice serve exited before becoming ready ({status}); see its logs below");
            }
            let resp = client::get(self.admin_addr(), "localhost", "/readyz", &[])
                .await
                .ok()?;
            (resp.status == 200).then_some(())
        })
        .await;
        if ready.is_none() {
            panic!("sluice not ready within {READY_TIMEOUT:?}; see its logs below");
        }
    }

    /// `GET` on sluice's admin server; panics with the logs if unreachable.
    pub async fn admin_get(&self, path: &str) -> Response {
        client::get(self.admin_addr(), "localhost", path, &[])
            .await
            .unwrap_or_else(|e| panic!("sluice admin GET {path}: {e}; see its logs below"))
    }

    /// `sluice bootstrap` for this instance: `--xds-addr` its xDS address, `--node-id node_id`,
    /// `--role role` if given, `--admin-addr 127.0.0.1:0` (Envoy picks the port and
    /// [`super::Envoy`] reads it from `--admin-address-path`, so no other process can take it
    /// first), and `--delta` if `delta`.
    /// Returns the YAML; panics with stderr if the command fails.
    pub fn bootstrap(&self, node_id: &str, role: Option<&str>, delta: bool) -> String {
        self.bootstrap_with(node_id, role, delta, &[])
    }

    /// [`Sluice::bootstrap`] with `extra_args` appended (e.g. `--eager-stats`).
    pub fn bootstrap_with(
        &self,
        node_id: &str,
        role: Option<&str>,
        delta: bool,
        extra_args: &[&str],
    ) -> String {
        let mut args = vec![
            "bootstrap".to_string(),
            "--xds-addr".to_string(),
            self.xds_addr().to_string(),
            "--node-id".to_string(),
            node_id.to_string(),
            "--admin-addr".to_string(),
            local(0).to_string(),
        ];
        if let Some(role) = role {
            args.extend(["--role".to_string(), role.to_string()]);
        }
        if delta {
            args.push("--delta".to_string());
        }
        args.extend(extra_args.iter().map(|arg| (*arg).to_string()));
        run_sluice(&args)
    }

    /// `sluice get ingress -A --admin-addr <admin> -o json`, parsed: an array of
    /// `{namespace, name, kind, status: {conditions: [...]}}`.
    pub async fn ingresses(&self) -> serde_json::Value {
        let admin = self.admin_addr().to_string();
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(sluice_binary())
                .args(["get", "ingress", "-A", "--admin-addr", &admin, "-o", "json"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("`sluice get ingress` timed out")
        .expect("run `sluice get ingress`");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "`sluice get ingress` failed ({}): {}\n{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("`sluice get ingress -o json` is not JSON ({e}): {stdout}"))
    }

    /// The status condition `type_` (e.g. `Ready`) of ingress `namespace/name`, if listed.
    pub async fn ingress_condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
    ) -> Option<serde_json::Value> {
        let all = self.ingresses().await;
        let ingress = all
            .as_array()?
            .iter()
            .find(|i| i["namespace"] == namespace && i["name"] == name)?;
        ingress["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// Waits until ingress `namespace/name` has condition `Ready` with status `status`
    /// (`"True"`, `"False"`, `"Unknown"`) and returns that condition; panics with the listing
    /// and logs after `timeout`.
    pub async fn wait_ingress_ready(
        &self,
        namespace: &str,
        name: &str,
        status: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let found = poll_until(timeout, async || {
            let cond = self.ingress_condition(namespace, name, "Ready").await?;
            (cond["status"] == status).then_some(cond)
        })
        .await;
        match found {
            Some(cond) => cond,
            None => panic!(
                "ingress {namespace}/{name} did not get Ready={status} within {timeout:?}; \
                 ingresses: {}",
                self.ingresses().await
            ),
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- sluice logs ({}) ----\n{}\n---- end of sluice logs ----",
                self.dir.path().display(),
                self.log_tail(60)
            );
        }
    }
}

/// What a one-shot `sluice` command did.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// stdout as JSON; panics with both streams if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Runs `sluice <args>` to completion (at most 30 s, else it is killed and this panics) and
/// returns what it did, success or not.
pub async fn run_cli(args: &[&str]) -> CliOutput {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(sluice_binary())
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`sluice {}` did not finish within 30s", args.join(" ")))
    .unwrap_or_else(|e| panic!("run `sluice {}`: {e}", args.join(" ")));
    CliOutput {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `sluice <args>` to completion (at most 30 s) and returns its stdout; panics with
/// stderr on failure.
pub fn run_sluice(args: &[String]) -> String {
    use std::io::{Read, Seek};
    // Files rather than pipes, so a chatty child can never block on a full pipe.
    let mut stdout = tempfile::tempfile().expect("temp file for sluice stdout");
    let mut stderr = tempfile::tempfile().expect("temp file for sluice stderr");
    let mut child = Command::new(sluice_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone stdout file"))
        .stderr(stderr.try_clone().expect("clone stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `sluice {}`: {e}", args.join(" ")));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`sluice {}` did not finish within 30s", args.join(" "));
            }
        }
    };
    let read = |file: &mut File| {
        let mut text = String::new();
        file.rewind().expect("rewind output file");
        file.read_to_string(&mut text).expect("read sluice output");
        text
    };
    let (out, err) = (read(&mut stdout), read(&mut stderr));
    assert!(
        status.success(),
        "`sluice {}` failed ({status}): {err}",
        args.join(" ")
    );
    out
}
