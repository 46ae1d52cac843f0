//! The operator commands against a real `sluice serve` (and `sluice up`) with a real Envoy:
//! tables, `-o json`, and failure exits. A NACK comes from a real Envoy that cannot bind its
//! listener's port (another process holds it); it shows as NACKED in `proxy status` and in
//! CSDS, and makes `check` fail; an invalid ingress makes `check` fail naming it.

#[macro_use]
mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::service::status::v3::{
    ClientStatusRequest, ConfigStatus,
    client_status_discovery_service_client::ClientStatusDiscoveryServiceClient,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    NodeMatcher, StringMatcher, string_matcher::MatchPattern,
};
use serde_json::Value;

use support::manifests::{self, HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use support::sluice::{CliOutput, SluicePorts, run_cli};
use support::{
    Backend, Envoy, ManifestDir, Sluice, Stack, StackOptions, client, free_port, free_ports,
    poll_until,
};

const NS: &str = "default";
const CONVERGE: Duration = Duration::from_secs(20);
const REPLICA: &str = "replica-a";
const NODE: &str = "cli-envoy";

async fn sluice(args: &[&str]) -> CliOutput {
    run_cli(args).await
}

/// Runs a command that must succeed; panics with its output otherwise.
async fn ok(args: &[&str]) -> CliOutput {
    let output = run_cli(args).await;
    assert!(
        output.success,
        "`sluice {}` failed: {output:?}",
        args.join(" ")
    );
    output
}

/// Runs a command that must fail; panics with its output otherwise.
async fn fails(args: &[&str]) -> CliOutput {
    let output = run_cli(args).await;
    assert!(
        !output.success && output.code == Some(1),
        "`sluice {}` should exit 1: {output:?}",
        args.join(" ")
    );
    output
}

/// Created three hours ago, so that AGE reads `3h`.
fn hello_ingress(namespace: &str) -> Ingress {
    let split = || Split::new(namespace, "hello", SERVICE_PORT);
    let created = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(3);
    Ingress::new(namespace, "hello")
        .label("serving.knative.dev/service", "hello-svc")
        .created(&created.to_string())
        .rule(
            Rule::external(&[&format!("hello.{namespace}.example.com")])
                .path(HttpPath::new().split(split())),
        )
        .rule(
            Rule::cluster_local(&[&format!("hello.{namespace}.svc.cluster.local")])
                .path(HttpPath::new().split(split())),
        )
}

/// Splits that add up to 90: Knative's validation refuses it.
fn invalid_ingress() -> Ingress {
    Ingress::new(NS, "broken").rule(
        Rule::external(&["broken.example.com"]).path(
            HttpPath::new()
                .split(Split::new(NS, "hello", SERVICE_PORT).percent(30))
                .split(Split::new(NS, "hello", SERVICE_PORT).percent(60)),
        ),
    )
}

/// Waits until every type of every connected Envoy is SYNCED or NOT_SENT, and some is.
async fn wait_synced(admin: &str) -> Value {
    let found = poll_until(CONVERGE, async || {
        let envoys = sluice(&["proxy", "status", "--admin-addr", admin, "-o", "json"])
            .await
            .json();
        let synced = envoys.as_array().is_some_and(|all| {
            !all.is_empty()
                && all.iter().all(|envoy| {
                    envoy["types"].as_object().is_some_and(|types| {
                        types
                            .values()
                            .all(|t| t["status"] == "SYNCED" || t["status"] == "NOT_SENT")
                    })
                })
        });
        synced.then_some(envoys)
    })
    .await;
    found.unwrap_or_else(|| panic!("the Envoys at {admin} never got in sync"))
}

async fn commands_against_a_serving_control_plane(delta: bool) {
    let backend = Backend::start("hello").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("hello", NS, backend.port(), "http"),
    );
    dir.write(
        "svc-other.yaml",
        &manifests::service_for("hello", "other", backend.port(), "http"),
    );
    dir.write(
        "svc-down.yaml",
        &manifests::service_for("down", NS, free_port(), "http"),
    );
    dir.write("hello.yaml", &hello_ingress(NS).to_yaml());
    dir.write("other.yaml", &hello_ingress("other").to_yaml());
    dir.write(
        "down.yaml",
        &Ingress::new(NS, "down")
            .rule(
                Rule::external(&["down.example.com"]).path(HttpPath::new().split(Split::new(
                    NS,
                    "down",
                    SERVICE_PORT,
                ))),
            )
            .to_yaml(),
    );
    dir.write("broken.yaml", &invalid_ingress().to_yaml());
    let stack = Stack::start_with(
        dir.path(),
        StackOptions {
            delta,
            node_id: Some(NODE.to_owned()),
            sluice_args: vec!["--replica-id".to_owned(), REPLICA.to_owned()],
            ..StackOptions::default()
        },
    )
    .await;
    for name in ["hello", "down"] {
        stack
            .sluice
            .wait_ingress_ready(NS, name, "True", CONVERGE)
            .await;
    }
    let admin = stack.sluice.admin_addr().to_string();
    let admin = admin.as_str();
    let envoy_admin = stack
        .envoy
        .admin_addr()
        .expect("Envoy's admin address")
        .to_string();
    let envoy_admin = envoy_admin.as_str();
    let ports = stack.sluice.ports();

    // get ingress: the namespace's ingresses, then every namespace's.
    let table = ok(&["get", "ingress", "--admin-addr", admin]).await.stdout;
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REASON", "HOSTS", "VISIBILITY", "AGE"],
        "{table}"
    );
    let hello = lines
        .iter()
        .find(|l| l.starts_with("hello "))
        .expect(&table);
    let cells: Vec<&str> = hello.split_whitespace().collect();
    assert_eq!(cells[1..3], ["True", "-"], "{table}");
    assert_eq!(
        cells[3], "hello.default.example.com,hello.default.svc.cluster.local",
        "{table}"
    );
    assert_eq!(cells[4], "ExternalIP,ClusterLocal", "{table}");
    assert!(cells[5].starts_with("3h"), "AGE: {table}");
    let broken = lines
        .iter()
        .find(|l| l.starts_with("broken "))
        .expect(&table);
    assert!(
        broken.contains("False") && broken.contains("InvalidIngress"),
        "{table}"
    );
    assert!(
        broken.trim_end().ends_with('-'),
        "no creationTimestamp: {table}"
    );
    assert_eq!(lines.len(), 4, "default's three ingresses only: {table}");

    let all = ok(&["get", "ingress", "-A", "--admin-addr", admin])
        .await
        .stdout;
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(all.lines().any(|l| l.starts_with("other ")), "{all}");
    let other = ok(&["get", "ingress", "-n", "other", "--admin-addr", admin]).await;
    assert_eq!(other.stdout.lines().count(), 2, "{other:?}");

    let json = ok(&["get", "ingress", "--admin-addr", admin, "-o", "json"])
        .await
        .json();
    let hello = json
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "hello")
        .expect("hello in -o json");
    assert_eq!(hello["labels"]["serving.knative.dev/service"], "hello-svc");
    assert_eq!(hello["rules"][1]["visibility"], "ClusterLocal");
    assert!(hello["creationTimestamp"].is_string(), "{hello}");
    assert_eq!(hello["status"]["conditions"][2]["type"], "Ready");
    let yaml = ok(&["get", "ingress", "--admin-addr", admin, "-o", "yaml"]).await;
    assert!(yaml.stdout.contains("name: hello"), "{yaml:?}");

    // get proxy
    let proxies = ok(&["get", "proxy", "--admin-addr", admin, "-o", "json"])
        .await
        .json();
    assert_eq!(proxies[0]["name"], "knative-external-proxy", "{proxies}");
    assert_eq!(proxies[0]["addresses"][0], "127.0.0.1");
    assert_eq!(proxies[0]["ports"][0]["name"], "http");
    assert_eq!(proxies[0]["ports"][0]["port"], ports.http);
    assert_eq!(proxies[0]["ports"][1]["served"], false, "no TLS ingress");
    assert_eq!(
        proxies[0]["envoys"], 1,
        "an Envoy without a role serves both"
    );
    assert_eq!(proxies[1]["ports"][0]["port"], ports.internal_http);
    let table = ok(&["get", "proxy", "--admin-addr", admin]).await.stdout;
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "knative-internal-proxy",
                    "gloo-system",
                    "127.0.0.1",
                    &format!("http:{}", ports.internal_http),
                    "1"
                ]),
        "{table}"
    );

    // proxy url / address: a URL that answers.
    let url = ok(&["proxy", "url", "--admin-addr", admin]).await.stdout;
    assert_eq!(url.trim(), format!("http://127.0.0.1:{}", ports.http));
    let response = client::get(stack.http_addr(), "hello.default.example.com", "/", &[])
        .await
        .expect("the proxy URL answers");
    assert_eq!((response.status, response.body.as_str()), (200, "hello"));
    let address = ok(&[
        "proxy",
        "address",
        "--name",
        "knative-internal-proxy",
        "--admin-addr",
        admin,
    ])
    .await;
    assert_eq!(
        address.stdout.trim(),
        format!("127.0.0.1:{}", ports.internal_http)
    );
    let url = ok(&["proxy", "url", "--admin-addr", admin, "-o", "json"])
        .await
        .json();
    assert_eq!(url["url"], format!("http://127.0.0.1:{}", ports.http));
    let https = ok(&["proxy", "url", "--port", "https", "--admin-addr", admin]).await;
    assert_eq!(
        https.stdout.trim(),
        format!("https://127.0.0.1:{}", ports.https)
    );
    assert!(https.stderr.contains("not served yet"), "{https:?}");
    let unknown = fails(&["proxy", "url", "--port", "grpc", "--admin-addr", admin]).await;
    assert!(
        unknown.stderr.contains("named port not found"),
        "{unknown:?}"
    );
    let unknown = fails(&["proxy", "url", "--name", "gateway", "--admin-addr", admin]).await;
    assert!(
        unknown.stderr.contains("proxy gateway not found"),
        "{unknown:?}"
    );

    // proxy status
    let envoys = wait_synced(admin).await;
    let envoy = &envoys[0];
    assert_eq!(envoy["node"], NODE, "{envoys}");
    assert_eq!(envoy["replica"], REPLICA);
    assert_eq!(
        envoy["mode"],
        if delta { "Delta" } else { "StateOfTheWorld" }
    );
    assert_eq!(
        envoy["types"]["SDS"]["status"], "NOT_SENT",
        "no TLS: {envoys}"
    );
    for kind in ["LDS", "CDS", "EDS", "SRDS", "RDS"] {
        assert_eq!(envoy["types"][kind]["status"], "SYNCED", "{kind}: {envoys}");
    }
    let table = ok(&["proxy", "status", "--admin-addr", admin]).await.stdout;
    let cells: Vec<&str> = table
        .lines()
        .nth(1)
        .expect(&table)
        .split_whitespace()
        .collect();
    let mode = if delta { "Delta" } else { "SotW" };
    assert_eq!(
        cells,
        [
            NODE, "-", REPLICA, mode, "SYNCED", "SYNCED", "SYNCED", "SYNCED", "SYNCED", "NOT",
            "SENT"
        ],
        "{table}"
    );

    // proxy served-config
    let served = ok(&[
        "proxy",
        "served-config",
        "--node",
        NODE,
        "--admin-addr",
        admin,
        "-o",
        "json",
    ])
    .await
    .json();
    let route = served["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "RDS" && r["name"] == "hello.default.example.com")
        .unwrap_or_else(|| panic!("the route of hello.default.example.com: {served}"));
    assert_eq!(route["status"], "SYNCED");
    assert_eq!(route["resource"]["name"], "hello.default.example.com");
    let internal = ok(&[
        "proxy",
        "served-config",
        "--role",
        "gloo-system~knative-internal-proxy",
        "--admin-addr",
        admin,
    ])
    .await
    .stdout;
    assert!(internal.contains("internal-http"), "{internal}");
    assert!(!internal.contains("external-http"), "{internal}");
    let nobody = fails(&[
        "proxy",
        "served-config",
        "--node",
        "nobody",
        "--admin-addr",
        admin,
    ])
    .await;
    assert!(nobody.stderr.contains("sluice proxy status"), "{nobody:?}");
    let whom = sluice(&["proxy", "served-config", "--admin-addr", admin]).await;
    assert!(!whom.success && whom.stderr.contains("--node"), "{whom:?}");

    // proxy dump and stats: `serve` did not start the Envoy, so its admin address is given.
    let unknown = fails(&["proxy", "dump", "--admin-addr", admin]).await;
    assert!(unknown.stderr.contains("--envoy-admin-addr"), "{unknown:?}");
    let dump = ok(&[
        "proxy",
        "dump",
        "--admin-addr",
        admin,
        "--envoy-admin-addr",
        envoy_admin,
    ])
    .await;
    assert!(
        dump.stdout
            .lines()
            .any(|l| l.starts_with("Listeners") && l.contains("external-http")),
        "{dump:?}"
    );
    let dump = ok(&[
        "proxy",
        "dump",
        "--admin-addr",
        admin,
        "--envoy-admin-addr",
        envoy_admin,
        "-o",
        "json",
    ])
    .await
    .json();
    assert!(dump["configs"].as_array().is_some_and(|c| !c.is_empty()));
    let stats = ok(&[
        "proxy",
        "stats",
        "--admin-addr",
        admin,
        "--envoy-admin-addr",
        envoy_admin,
        "--filter",
        "update_rejected$",
        "-o",
        "json",
    ])
    .await
    .json();
    let rejected: Vec<&Value> = stats.as_array().unwrap().iter().collect();
    assert!(
        rejected
            .iter()
            .any(|s| s["name"] == "listener_manager.lds.update_rejected")
            && rejected.iter().all(|s| s["value"] == 0),
        "{stats}"
    );

    // check: fails on the invalid ingress, naming it; passes once it is gone.
    let check = fails(&[
        "check",
        "--admin-addr",
        admin,
        "--envoy-admin-addr",
        envoy_admin,
    ])
    .await;
    let lines: Vec<&str> = check.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "one line per check: {check:?}");
    let failing: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failing.len(), 1, "{check:?}");
    assert!(
        failing[0].contains("ingresses Ready")
            && failing[0].contains("default/broken")
            && failing[0].contains("InvalidIngress"),
        "{check:?}"
    );
    assert!(check.stderr.contains("1 of 7 checks failed"), "{check:?}");
    let report = fails(&[
        "check",
        "--admin-addr",
        admin,
        "--envoy-admin-addr",
        envoy_admin,
        "-o",
        "json",
    ])
    .await
    .json();
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["checks"][4]["name"],
        "Envoy update_rejected counters"
    );
    assert_eq!(report["checks"][4]["status"], "ok", "{report}");
    dir.remove("broken.yaml");
    let passed = poll_until(CONVERGE, async || {
        let check = sluice(&[
            "check",
            "--admin-addr",
            admin,
            "--envoy-admin-addr",
            envoy_admin,
        ])
        .await;
        check.success.then_some(check)
    })
    .await;
    let passed = passed.expect("check passes once the invalid ingress is removed");
    assert_eq!(
        passed
            .stdout
            .lines()
            .filter(|l| l.starts_with("OK"))
            .count(),
        7,
        "{passed:?}"
    );

    // curl: by the service label, by name through the internal proxy, a 5xx, no listener.
    let curl = ok(&["curl", "--service", "hello-svc", "--admin-addr", admin]).await;
    assert_eq!(
        curl.stdout,
        format!(
            "Running: curl -sS -H 'Host: hello.default.example.com' http://127.0.0.1:{}/\nhello",
            ports.http
        )
    );
    let curl = ok(&[
        "curl",
        "--service",
        "hello",
        "--internal",
        "--path",
        "/some/path",
        "--admin-addr",
        admin,
    ])
    .await;
    assert_eq!(
        curl.stdout,
        format!(
            "Running: curl -sS -H 'Host: hello.default.svc.cluster.local' \
             http://127.0.0.1:{}/some/path\nhello",
            ports.internal_http
        )
    );
    let down = fails(&["curl", "--service", "down", "--admin-addr", admin]).await;
    assert!(down.stdout.starts_with("Running: curl"), "{down:?}");
    assert!(down.stderr.contains("503"), "{down:?}");
    let refused = fails(&[
        "curl",
        "--service",
        "hello-svc",
        "--https",
        "-k",
        "--admin-addr",
        admin,
    ])
    .await;
    assert!(refused.stderr.contains("got no response"), "{refused:?}");
    let missing = fails(&["curl", "--service", "nope", "--admin-addr", admin]).await;
    assert!(
        missing
            .stderr
            .contains("no ingress for Knative service nope"),
        "{missing:?}"
    );
}

/// A backend answering `hello`, and a manifest directory with its Service and the `hello`
/// ingress.
async fn hello_served() -> (Backend, ManifestDir) {
    let backend = Backend::start("hello").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("hello", NS, backend.port(), "http"),
    );
    dir.write("hello.yaml", &hello_ingress(NS).to_yaml());
    (backend, dir)
}

/// A real NACK: another process holds the external listener's port, so Envoy rejects LDS.
async fn a_nacked_envoy_is_shown_and_fails_check(delta: bool) {
    let (_backend, dir) = hello_served().await;
    let sluice_process = Sluice::start(dir.path());
    sluice_process.wait_ready().await;
    let _taken = TcpListener::bind(sluice_process.http_addr()).expect("hold the HTTP port");
    let envoy = Envoy::start(&sluice_process.bootstrap(NODE, None, delta));
    let admin = sluice_process.admin_addr().to_string();
    let admin = admin.as_str();

    let nacked = poll_until(CONVERGE, async || {
        let envoys = sluice(&["proxy", "status", "--admin-addr", admin, "-o", "json"])
            .await
            .json();
        (envoys[0]["types"]["LDS"]["status"] == "NACKED").then_some(envoys)
    })
    .await
    .expect("Envoy NACKs the listener it cannot bind");
    let message = nacked[0]["types"]["LDS"]["lastNack"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("cannot bind"), "{nacked}");
    let table = ok(&["proxy", "status", "--admin-addr", admin]).await.stdout;
    assert!(
        table.lines().nth(1).expect(&table).contains("NACKED"),
        "{table}"
    );
    assert!(
        table.contains(&format!("{NODE} LDS NACKED")) && table.contains("cannot bind"),
        "the message follows the table: {table}"
    );

    let envoy_admin = poll_until(CONVERGE, async || envoy.admin_addr())
        .await
        .expect("Envoy's admin address")
        .to_string();
    let check = fails(&[
        "check",
        "--admin-addr",
        admin,
        "--envoy-admin-addr",
        &envoy_admin,
    ])
    .await;
    let line = |name: &str| {
        check
            .stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} line: {check:?}"))
            .to_owned()
    };
    let sync = line("Envoys in sync");
    assert!(
        sync.starts_with("FAIL") && sync.contains("LDS NACKED") && sync.contains("cannot bind"),
        "{check:?}"
    );
    let counters = line("update_rejected");
    assert!(
        counters.starts_with("FAIL") && counters.contains("listener_manager.lds.update_rejected=1"),
        "{check:?}"
    );

    // CSDS on the xDS port says the same, per resource.
    let mut csds = ClientStatusDiscoveryServiceClient::connect(format!(
        "http://{}",
        sluice_process.xds_addr()
    ))
    .await
    .expect("connect to CSDS");
    let for_node = |id: &str| ClientStatusRequest {
        node_matchers: vec![NodeMatcher {
            node_id: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(id.to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let status = csds
        .fetch_client_status(for_node(NODE))
        .await
        .expect("CSDS answers")
        .into_inner();
    assert_eq!(status.config.len(), 1);
    let config = &status.config[0];
    assert_eq!(config.node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    let lds = config
        .generic_xds_configs
        .iter()
        .find(|c| c.name.is_empty() && c.type_url.ends_with("Listener"))
        .expect("the status of LDS as a whole");
    assert_eq!(lds.config_status, ConfigStatus::Error as i32);
    assert!(
        lds.error_state
            .as_ref()
            .is_some_and(|e| e.details.contains("cannot bind")),
        "{lds:?}"
    );
    let sds = config
        .generic_xds_configs
        .iter()
        .find(|c| c.name.is_empty() && c.type_url.ends_with("Secret"))
        .expect("the status of SDS as a whole");
    assert_eq!(sds.config_status, ConfigStatus::NotSent as i32);
    let listener = config
        .generic_xds_configs
        .iter()
        .find(|c| c.name == "external-http")
        .expect("the external listener in CSDS");
    assert_eq!(listener.config_status, ConfigStatus::Error as i32);
    let details = listener
        .error_state
        .as_ref()
        .map(|e| e.details.as_str())
        .unwrap_or_default();
    assert!(details.contains("cannot bind"), "{details}");
    assert!(
        listener.xds_config.is_some(),
        "the rejected listener itself"
    );
    assert!(
        config
            .generic_xds_configs
            .iter()
            .filter(|c| c.type_url.ends_with("Cluster"))
            .all(|c| c.config_status == ConfigStatus::Synced as i32),
        "clusters are SYNCED"
    );
    let mut answers = csds
        .stream_client_status(futures::stream::iter([for_node(NODE)]))
        .await
        .expect("CSDS streams")
        .into_inner();
    let streamed = answers
        .message()
        .await
        .expect("a streamed answer")
        .expect("one answer per request");
    assert_eq!(streamed.config.len(), 1, "the stream answers like fetch");
    let nobody = csds
        .fetch_client_status(for_node("nobody"))
        .await
        .expect("CSDS answers")
        .into_inner();
    assert!(nobody.config.is_empty());
    drop(envoy);
}

/// The value of the `hello` cluster's stat `cluster.<name>.<stat>`, if Envoy has it.
async fn hello_cluster_stat(envoy: &Envoy, stat: &str) -> Option<u64> {
    let suffix = format!(".{stat}");
    support::restart::envoy_stats(envoy)
        .await
        .into_iter()
        .find(|(name, _)| {
            name.starts_with("cluster.") && name.contains("/hello") && name.ends_with(&suffix)
        })
        .map(|(_, value)| value)
}

/// `sluice bootstrap` has Envoy create a cluster's traffic stats on its first request (most
/// revisions are idle): before it the cluster is there without `upstream_rq_total`, after it
/// the counter is. With `--eager-stats` they come with the cluster, as Envoy's default has it.
async fn cluster_traffic_stats_appear_on_first_use(delta: bool) {
    let (_backend, dir) = hello_served().await;
    let deferred = Stack::start(dir.path(), delta).await;
    deferred
        .sluice
        .wait_ingress_ready(NS, "hello", "True", CONVERGE)
        .await;
    let cluster_up = poll_until(CONVERGE, async || {
        hello_cluster_stat(&deferred.envoy, "membership_total")
            .await
            .filter(|&endpoints| endpoints == 1)
    })
    .await;
    assert!(cluster_up.is_some(), "{}", deferred.logs());
    assert_eq!(
        hello_cluster_stat(&deferred.envoy, "upstream_rq_total").await,
        None,
        "no request has used the cluster yet"
    );
    let host = format!("hello.{NS}.example.com");
    let response = deferred.wait_status(&host, "/", 200).await;
    assert_eq!(response.backend(), Some("hello"));
    let counted = poll_until(CONVERGE, async || {
        hello_cluster_stat(&deferred.envoy, "upstream_rq_total")
            .await
            .filter(|&requests| requests >= 1)
    })
    .await;
    assert!(
        counted.is_some(),
        "the request through the cluster created upstream_rq_total\n{}",
        deferred.logs()
    );

    let Stack { envoy, sluice } = deferred;
    drop(envoy);
    let eager = Stack::start_on(
        sluice,
        StackOptions {
            delta,
            bootstrap_args: vec!["--eager-stats".to_owned()],
            ..StackOptions::default()
        },
    )
    .await;
    let created = poll_until(CONVERGE, async || {
        hello_cluster_stat(&eager.envoy, "upstream_rq_total").await
    })
    .await;
    assert_eq!(
        created,
        Some(0),
        "with --eager-stats the counter exists before any request\n{}",
        eager.logs()
    );
}

in_both_modes!(
    commands_against_a_serving_control_plane,
    a_nacked_envoy_is_shown_and_fails_check,
    cluster_traffic_stats_appear_on_first_use
);

/// `sluice up`, stopped with SIGINT (so that it stops its Envoy) when dropped.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        for _ in 0..200 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_up_reports_its_envoy_admin_address() {
    let (_backend, dir) = hello_served().await;
    let ports = SluicePorts::free();
    let envoy_admin = format!("127.0.0.1:{}", free_ports(1)[0]);
    let address = |port: u16| format!("127.0.0.1:{port}");
    let output = tempfile::NamedTempFile::new().expect("a file for up's output");
    let up = Up(Command::new(support::sluice::sluice_binary())
        .arg("up")
        .arg("--dir")
        .arg(dir.path())
        .arg("--envoy")
        .arg(support::envoy::envoy_binary())
        .args(["--envoy-admin-addr", &envoy_admin])
        .args(["--xds-addr", &address(ports.xds)])
        .args(["--admin-addr", &address(ports.admin)])
        .args(["--listen-address", "127.0.0.1"])
        .args(["--http-port", &ports.http.to_string()])
        .args(["--https-port", &ports.https.to_string()])
        .args(["--internal-http-port", &ports.internal_http.to_string()])
        .args(["--internal-https-port", &ports.internal_https.to_string()])
        .stdin(Stdio::null())
        .stdout(output.reopen().expect("reopen the output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start `sluice up`"));
    let admin = address(ports.admin);
    let admin = admin.as_str();

    let dump = poll_until(CONVERGE, async || {
        let dump = sluice(&["proxy", "dump", "--admin-addr", admin]).await;
        (dump.success && dump.stdout.contains("external-http")).then_some(dump)
    })
    .await;
    assert!(
        dump.is_some(),
        "`proxy dump` reads the Envoy that `up` started"
    );
    let printed = std::fs::read_to_string(output.path()).unwrap_or_default();
    assert!(
        printed.contains(&format!("envoy admin: http://{envoy_admin}")),
        "{printed}"
    );
    let stats = ok(&[
        "proxy",
        "stats",
        "--admin-addr",
        admin,
        "--filter",
        "lds.update_rejected$",
    ])
    .await;
    assert!(
        stats
            .stdout
            .contains("listener_manager.lds.update_rejected"),
        "{stats:?}"
    );
    let passed = poll_until(CONVERGE, async || {
        let check = sluice(&["check", "--admin-addr", admin]).await;
        check.success.then_some(check)
    })
    .await
    .expect("everything is fine under `sluice up`");
    assert!(
        passed
            .stdout
            .lines()
            .any(|l| l.starts_with("OK") && l.contains(&format!("zero at {envoy_admin}"))),
        "{passed:?}"
    );
    drop(up);
}

#[tokio::test]
async fn without_a_control_plane_commands_say_what_to_do() {
    let admin = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["get", "ingress"],
        vec!["get", "proxy"],
        vec!["proxy", "status"],
        vec!["proxy", "url"],
        vec!["curl", "--service", "hello"],
    ] {
        let mut args = args.clone();
        args.extend(["--admin-addr", &admin]);
        let output = fails(&args).await;
        assert!(
            output
                .stderr
                .contains("is `sluice serve` or `sluice up` running?")
                && output.stderr.contains("--admin-addr"),
            "{output:?}"
        );
    }
    let check = fails(&["check", "--admin-addr", &admin]).await;
    assert!(
        check.stdout.starts_with("FAIL  control plane healthy"),
        "{check:?}"
    );
}

#[tokio::test]
async fn completion_prints_a_script() {
    let bash = ok(&["completion", "bash"]).await.stdout;
    assert!(
        bash.contains("_sluice()") && bash.contains("complete -F"),
        "{bash}"
    );
    assert!(bash.contains("served-config"), "subcommands are completed");
    let fish = ok(&["completion", "fish"]).await.stdout;
    assert!(fish.contains("complete -c sluice"), "{fish}");
    let zsh = ok(&["completion", "zsh"]).await.stdout;
    assert!(zsh.starts_with("#compdef sluice"), "{zsh}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_https_sends_the_host_as_server_name() {
    let backend = Backend::start("secure").await;
    let dir = ManifestDir::new();
    dir.write(
        "svc.yaml",
        &manifests::service_for("secure", NS, backend.port(), "http"),
    );
    let host = "secure.default.example.com";
    let (certificate, key) = support::tls::certificate(host);
    dir.write(
        "secret.yaml",
        &manifests::to_yaml(&manifests::tls_secret(
            NS,
            "secure-cert",
            &certificate,
            &key,
        )),
    );
    let ingress = Ingress::new(NS, "secure")
        .rule(
            Rule::external(&[host]).path(HttpPath::new().split(Split::new(
                NS,
                "secure",
                SERVICE_PORT,
            ))),
        )
        .tls(&[host], NS, "secure-cert");
    dir.write("secure.yaml", &ingress.to_yaml());
    let stack = Stack::start(dir.path(), false).await;
    stack
        .sluice
        .wait_ingress_ready(NS, "secure", "True", CONVERGE)
        .await;
    let admin = stack.sluice.admin_addr().to_string();
    let admin = admin.as_str();
    let https_port = stack.sluice.ports().https;
    let ca = tempfile::NamedTempFile::new().expect("a file for the CA");
    std::fs::write(ca.path(), &certificate).expect("write the CA");
    let ca_path = ca.path().to_str().expect("a UTF-8 temp path");

    let url = ok(&["proxy", "url", "--port", "https", "--admin-addr", admin]).await;
    assert!(url.stderr.is_empty(), "served now: {url:?}");
    let curl = ok(&[
        "curl",
        "--service",
        "secure",
        "--https",
        "--cacert",
        ca_path,
        "--admin-addr",
        admin,
    ])
    .await;
    assert_eq!(
        curl.stdout,
        format!(
            "Running: curl -sS -H 'Host: {host}' --resolve {host}:{https_port}:127.0.0.1 \
             --cacert {ca_path} https://{host}:{https_port}/\nsecure"
        )
    );
    let insecure = ok(&[
        "curl",
        "--service",
        "secure",
        "--https",
        "-k",
        "--admin-addr",
        admin,
    ])
    .await;
    assert!(insecure.stdout.ends_with("\nsecure"), "{insecure:?}");
    let untrusted = fails(&[
        "curl",
        "--service",
        "secure",
        "--https",
        "--admin-addr",
        admin,
    ])
    .await;
    assert!(
        untrusted.stderr.contains("TLS handshake") && untrusted.stderr.contains(host),
        "a self-signed certificate is not trusted by default: {untrusted:?}"
    );
}
