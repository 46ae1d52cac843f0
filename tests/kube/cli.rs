//! The operator commands against a cluster: the sluice binary run as a user would, with
//! `--kubeconfig`, against the real API server. There is no kubelet, scheduler or
//! controller-manager here, so the tests write what those would: Pods bound to Nodes, Node
//! addresses, a LoadBalancer's ingress, Deployment availability, and the EndpointSlices of
//! Service `sluice` pointing at `sluice serve` processes on the test address. Port-forwards
//! need a kubelet: they are tested up to the API server's refusal.

use std::net::SocketAddr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use libtest_mimic::Trial;
use serde_json::{Value, json};
use sluice::install::knative::{KnativeInstall, manifests};

use crate::kit::{self, CONVERGE, Scene};
use crate::support::cluster::{Cluster, TEST_ADDRESS};
use crate::support::manifests::{HttpPath, Ingress, Rule, SERVICE_PORT, Split};
use crate::support::sluice::{CliOutput, run_cli};
use crate::support::{Sluice, Stack, StackOptions, poll_until};

pub fn trials() -> Vec<Trial> {
    vec![
        crate::trial("cli::proxy_url_follows_glooctl", proxy_url),
        crate::trial("cli::two_replicas_and_the_api_server", two_replicas),
        crate::trial("cli::port_forwards_up_to_the_api_call", port_forwards),
    ]
}

/// `sluice <args> --kubeconfig <the cluster's> -n <ns>`.
async fn sluice(scene: &Scene<'_>, args: &[&str]) -> CliOutput {
    let kubeconfig = scene.cluster.kubeconfig.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &kubeconfig]);
    run_cli(&all).await
}

async fn ok(scene: &Scene<'_>, args: &[&str]) -> CliOutput {
    let output = sluice(scene, args).await;
    assert!(
        output.success,
        "`sluice {}` failed: {output:?}",
        args.join(" ")
    );
    output
}

async fn fails(scene: &Scene<'_>, args: &[&str]) -> CliOutput {
    let output = sluice(scene, args).await;
    assert!(
        !output.success && output.code == Some(1),
        "`sluice {}` should exit 1: {output:?}",
        args.join(" ")
    );
    output
}

/// A merge patch of `name`'s status, as the component that owns it would write it.
async fn patch_status<K>(api: &Api<K>, name: &str, status: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap_or_else(|e| panic!("patch the status of {name}: {e}"));
}

/// The proxies' Deployments (and, with `services`, their Services) as `sluice install
/// knative` makes them in `ns`.
fn installed_proxies(ns: &str, services: bool) -> Vec<Value> {
    manifests(&KnativeInstall {
        namespace: ns.to_owned(),
        ..KnativeInstall::default()
    })
    .into_iter()
    .filter(|(file, _)| file.starts_with("knative-"))
    .flat_map(|(_, objects)| objects)
    .filter(|o| o["kind"] == "Deployment" || (services && o["kind"] == "Service"))
    .collect()
}

/// A Node named `name` with `addresses` ([(type, address)]) in its status, as a kubelet
/// registers it. Nodes are cluster-wide: each test names its own after its namespace.
async fn node(scene: &Scene<'_>, name: &str, addresses: &[(&str, &str)]) {
    let nodes: Api<Node> = Api::all(scene.applier.client().clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|(kind, address)| json!({"type": kind, "address": address}))
        .collect();
    patch_status(&nodes, name, json!({ "addresses": addresses })).await;
}

/// A Pod with `labels`, bound to `node_name`, in `phase`, as a scheduler and a kubelet would
/// leave it. (Its namespace needs a `default` ServiceAccount: [`service_account`].)
async fn pod(scene: &Scene<'_>, name: &str, labels: Value, node_name: &str, phase: &str) {
    let pods: Api<Pod> = Api::namespaced(scene.applier.client().clone(), &scene.ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node_name,
            "automountServiceAccountToken": false,
            "containers": [{"name": "envoy", "image": "envoyproxy/envoy:v1.40.0"}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    patch_status(&pods, name, json!({ "phase": phase })).await;
}

/// The `default` ServiceAccount a controller-manager would make, which pods need.
async fn service_account(scene: &Scene<'_>) {
    scene
        .apply(&[json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": scene.ns},
        })])
        .await;
}

fn nodeport_service(ns: &str, name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "NodePort",
            "selector": {"app": app},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "https", "port": 443, "targetPort": 8443},
            ],
        },
    })
}

async fn service(scene: &Scene<'_>, name: &str) -> Service {
    Api::<Service>::namespaced(scene.applier.client().clone(), &scene.ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get service {name}: {e}"))
}

fn node_port(service: &Service, port: &str) -> i32 {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(port)))
        .and_then(|p| p.node_port)
        .expect("a node port")
}

/// `proxy url` and `proxy address` by glooctl's rules, for each type of Service.
async fn proxy_url(cluster: &'static Cluster) {
    let scene = Scene::new(cluster, "cli-url").await;
    let ns = scene.ns.as_str();
    scene.apply(&installed_proxies(ns, true)).await;
    let services: Api<Service> = Api::namespaced(scene.applier.client().clone(), ns);

    // A LoadBalancer without an ingress yet, then with an IP, then with a host name too.
    let pending = fails(&scene, &["proxy", "url", "-n", ns]).await;
    assert!(
        pending
            .stderr
            .contains("load balancer ingress not found on service knative-external-proxy"),
        "{pending:?}"
    );
    let external = "knative-external-proxy";
    patch_status(
        &services,
        external,
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}),
    )
    .await;
    let url = ok(&scene, &["proxy", "url", "-n", ns]).await;
    assert_eq!(url.stdout, "http://203.0.113.10:80\n", "{url:?}");
    assert!(url.stderr.is_empty(), "{url:?}");
    let https = ok(&scene, &["proxy", "url", "-n", ns, "--port", "https"]).await;
    assert_eq!(https.stdout, "https://203.0.113.10:443\n");
    let address = ok(&scene, &["proxy", "address", "-n", ns, "-o", "json"]).await;
    assert_eq!(address.json(), json!({"address": "203.0.113.10:80"}));
    patch_status(
        &services,
        external,
        json!({"loadBalancer": {"ingress": [{"hostname": "lb.example.com", "ip": "203.0.113.10"}]}}),
    )
    .await;
    let url = ok(&scene, &["proxy", "url", "-n", ns, "-o", "json"]).await;
    assert_eq!(url.json(), json!({"url": "http://lb.example.com:80"}));
    let unknown = fails(&scene, &["proxy", "url", "-n", ns, "--port", "grpc"]).await;
    assert!(
        unknown
            .stderr
            .contains("named port grpc not found on service knative-external-proxy"),
        "{unknown:?}"
    );
    let missing = fails(&scene, &["proxy", "url", "-n", ns, "--name", "gateway"]).await;
    assert!(
        missing.stderr.contains("could not find Service gateway"),
        "{missing:?}"
    );

    // The internal proxy is a ClusterIP Service: its cluster IP, with a warning.
    let internal = service(&scene, "knative-internal-proxy").await;
    let cluster_ip = internal.spec.unwrap().cluster_ip.unwrap();
    let url = ok(
        &scene,
        &["proxy", "url", "-n", ns, "--name", "knative-internal-proxy"],
    )
    .await;
    assert_eq!(url.stdout, format!("http://{cluster_ip}:80\n"));
    assert!(
        url.stderr.contains("warning") && url.stderr.contains("ClusterIP"),
        "{url:?}"
    );

    // NodePorts: the node of the first scheduled pod, its ExternalIP unless there is none or
    // the cluster is local.
    let with_external = format!("{ns}-external");
    let internal_only = format!("{ns}-internal");
    node(
        &scene,
        &with_external,
        &[
            ("Hostname", with_external.as_str()),
            ("InternalIP", "10.0.0.5"),
            ("ExternalIP", "198.51.100.5"),
        ],
    )
    .await;
    node(&scene, &internal_only, &[("InternalIP", "10.0.0.6")]).await;
    scene
        .apply(&[
            nodeport_service(ns, "np-external", "np-external"),
            nodeport_service(ns, "np-internal", "np-internal"),
        ])
        .await;
    let unscheduled = fails(&scene, &["proxy", "url", "-n", ns, "--name", "np-external"]).await;
    assert!(
        unscheduled
            .stderr
            .contains("no node found for np-external's pods"),
        "{unscheduled:?}"
    );
    service_account(&scene).await;
    pod(
        &scene,
        "np-external-1",
        json!({"app": "np-external"}),
        &with_external,
        "Running",
    )
    .await;
    pod(
        &scene,
        "np-internal-1",
        json!({"app": "np-internal"}),
        &internal_only,
        "Running",
    )
    .await;
    let external_ports = service(&scene, "np-external").await;
    let url = ok(&scene, &["proxy", "url", "-n", ns, "--name", "np-external"]).await;
    assert_eq!(
        url.stdout,
        format!(
            "http://198.51.100.5:{}\n",
            node_port(&external_ports, "http")
        )
    );
    let local = ok(
        &scene,
        &[
            "proxy",
            "address",
            "-n",
            ns,
            "--name",
            "np-external",
            "--port",
            "https",
            "--local-cluster",
        ],
    )
    .await;
    assert_eq!(
        local.stdout,
        format!("10.0.0.5:{}\n", node_port(&external_ports, "https"))
    );
    let internal_ports = service(&scene, "np-internal").await;
    let url = ok(&scene, &["proxy", "url", "-n", ns, "--name", "np-internal"]).await;
    assert_eq!(
        url.stdout,
        format!("http://10.0.0.6:{}\n", node_port(&internal_ports, "http"))
    );
}

/// Service `sluice` and one EndpointSlice per replica (each its own admin port, on the test
/// address), as the endpoints controller would write them for pods `sluice-<id>`.
fn sluice_service(ns: &str, replicas: &[(&str, SocketAddr)]) -> Vec<Value> {
    let mut objects = vec![json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sluice", "namespace": ns},
        "spec": {"ports": [
            {"name": "grpc-xds", "port": 9977},
            {"name": "http-admin", "port": 9091},
        ]},
    })];
    for (id, admin) in replicas {
        objects.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("sluice-{id}"),
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": "sluice"},
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": [admin.ip().to_string()],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("sluice-{id}")},
            }],
            "ports": [{"name": "http-admin", "port": admin.port(), "protocol": "TCP"}],
        }));
    }
    objects
}

/// A replica of sluice in Kubernetes mode, its admin API on the test address, and an Envoy.
async fn replica(scene: &Scene<'_>, id: &str, delta: bool) -> Stack {
    let mut args = scene.sluice_args();
    args.extend(["--replica-id".to_owned(), id.to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sluice =
        Sluice::start_in_cluster_with_admin_on(&scene.cluster.kubeconfig, TEST_ADDRESS, &args);
    Stack::start_on(
        sluice,
        StackOptions {
            delta,
            node_id: Some(format!("envoy-{id}")),
            ..StackOptions::default()
        },
    )
    .await
}

fn ingress(ns: &str, name: &str, host: &str) -> Ingress {
    Ingress::new(ns, name).rule(
        Rule::external(&[host]).path(HttpPath::new().split(Split::new(
            ns,
            "backend",
            SERVICE_PORT,
        ))),
    )
}

/// Two replicas, each with its own Envoy: `proxy status`, `served-config` and `get proxy`
/// merge them; `get ingress`, `curl` and `check` read the API server.
async fn two_replicas(cluster: &'static Cluster) {
    let scene = Scene::new(cluster, "cli-replicas").await;
    let ns = scene.ns.as_str();
    let backend = kit::backend("backend");
    scene.apply(&scene.service("backend", backend.addr())).await;
    let web = ingress(ns, "web", "web.example.com")
        .label("serving.knative.dev/service", "hello")
        .to_value();
    let mut broken = ingress(ns, "broken", "broken.example.com").to_value();
    broken["spec"]["rules"][0]["http"]["paths"][0]["splits"][0]["percent"] = json!(60);
    let other = ingress(ns, "other", "other.example.com")
        .class(Some("istio.ingress.networking.knative.dev"))
        .to_value();
    scene.apply(&[web, broken.clone(), other]).await;
    let first = replica(&scene, "first", false).await;
    let second = replica(&scene, "second", true).await;
    scene
        .apply(&sluice_service(
            ns,
            &[
                ("first", first.sluice.admin_addr()),
                ("second", second.sluice.admin_addr()),
            ],
        ))
        .await;

    // The proxies: the external one a LoadBalancer whose ingress is where the first Envoy
    // listens, the internal one a ClusterIP; their Deployments as installed.
    let http = first.http_addr();
    scene
        .apply(&[
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "knative-external-proxy", "namespace": ns},
                "spec": {"type": "LoadBalancer", "ports": [
                    {"name": "http", "port": http.port()},
                    {"name": "https", "port": first.sluice.https_addr().port()},
                ]},
            }),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "knative-internal-proxy", "namespace": ns},
                "spec": {"ports": [{"name": "http", "port": 80}]},
            }),
        ])
        .await;
    let services: Api<Service> = Api::namespaced(scene.applier.client().clone(), ns);
    patch_status(
        &services,
        "knative-external-proxy",
        json!({"loadBalancer": {"ingress": [{"ip": http.ip().to_string()}]}}),
    )
    .await;
    scene.apply(&installed_proxies(ns, false)).await;
    let deployments: Api<Deployment> = Api::namespaced(scene.applier.client().clone(), ns);
    for name in ["knative-external-proxy", "knative-internal-proxy"] {
        patch_status(
            &deployments,
            name,
            json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}),
        )
        .await;
    }
    scene.wait_ready("web").await;
    scene
        .wait_status("broken", "Ready=False", |i| {
            kit::ready(i).is_some_and(|(status, _)| status == "False")
        })
        .await;

    // proxy status: both Envoys, each on its replica, in sync.
    let via = ["-n", ns, "--replicas-via", "pod-ip"];
    let status_args: Vec<&str> = ["proxy", "status", "-o", "json"]
        .into_iter()
        .chain(via)
        .collect();
    let mut last = None;
    let merged = poll_until(CONVERGE, async || {
        let status = ok(&scene, &status_args).await.json();
        let synced = status.as_array()?.len() == 2
            && status.as_array()?.iter().all(|envoy| {
                ["LDS", "CDS", "EDS", "SRDS", "RDS"]
                    .iter()
                    .all(|t| envoy["types"][t]["status"] == "SYNCED")
            });
        last = Some(status.clone());
        synced.then_some(status)
    })
    .await
    .unwrap_or_else(|| panic!("two Envoys never showed SYNCED; last: {last:?}"));
    let on: Vec<(&str, &str, &str)> = merged
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["node"].as_str().unwrap(),
                e["replica"].as_str().unwrap(),
                e["mode"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        on,
        [
            ("envoy-first", "first", "StateOfTheWorld"),
            ("envoy-second", "second", "Delta")
        ]
    );
    let table_args: Vec<&str> = ["proxy", "status"].into_iter().chain(via).collect();
    let table = ok(&scene, &table_args).await.stdout;
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[1].starts_with("envoy-first") && rows[1].contains(" first "),
        "{table}"
    );
    assert!(
        rows[2].starts_with("envoy-second") && rows[2].contains(" second "),
        "{table}"
    );

    // served-config: a node from the replica it is connected to, a role from any.
    let args: Vec<&str> = [
        "proxy",
        "served-config",
        "--node",
        "envoy-second",
        "-o",
        "json",
    ]
    .into_iter()
    .chain(via)
    .collect();
    let served = ok(&scene, &args).await.json();
    assert_eq!(served["node"], "envoy-second");
    assert!(
        served["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["type"] == "RDS"
                && r["name"] == "web.example.com"
                && r["status"] == "SYNCED"),
        "{served}"
    );
    let args: Vec<&str> = ["proxy", "served-config", "--node", "nobody"]
        .into_iter()
        .chain(via)
        .collect();
    let nobody = fails(&scene, &args).await;
    assert!(
        nobody
            .stderr
            .contains("is connected to any replica of sluice (sluice-first, sluice-second)"),
        "{nobody:?}"
    );

    // get proxy: the Services' addresses and ports, the Envoys of both replicas.
    let args: Vec<&str> = ["get", "proxy", "-o", "json"]
        .into_iter()
        .chain(via)
        .collect();
    let proxies = ok(&scene, &args).await.json();
    let external = &proxies[0];
    assert_eq!(external["name"], "knative-external-proxy");
    assert_eq!(external["addresses"], json!([http.ip().to_string()]));
    assert_eq!(
        external["ports"][0],
        json!({"name": "http", "port": http.port(), "listener": "external-http", "served": true})
    );
    assert_eq!(external["envoys"], 2);
    let internal_ip = service(&scene, "knative-internal-proxy")
        .await
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    assert_eq!(proxies[1]["addresses"], json!([internal_ip]));
    assert_eq!(proxies[1]["envoys"], 2);

    // get ingress: the status the leader wrote to the API server.
    let listing = ok(&scene, &["get", "ingress", "-n", ns]).await.stdout;
    let row = |name: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {listing}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("web")[..4],
        ["web", "True", "-", "web.example.com"],
        "{listing}"
    );
    assert_eq!(
        row("broken")[1..3],
        ["False", "InvalidIngress"],
        "{listing}"
    );
    assert_eq!(row("other")[1..3], ["-", "-"], "{listing}");
    let json = ok(&scene, &["get", "ingress", "-n", ns, "-o", "json"])
        .await
        .json();
    let owned: Vec<(&str, bool)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["owned"].as_bool().unwrap()))
        .collect();
    assert_eq!(owned, [("broken", true), ("other", false), ("web", true)]);
    assert_eq!(
        json[2]["status"]["publicLoadBalancer"],
        json!([{"domainInternal": format!("knative-external-proxy.{ns}.svc.cluster.local")}])
    );
    let all = ok(&scene, &["get", "ingress", "-A"]).await.stdout;
    assert!(
        all.starts_with("NAMESPACE ") && all.lines().any(|l| l.starts_with(&format!("{ns} "))),
        "{all}"
    );

    // curl: the host of the service's ingress, through the LoadBalancer's address.
    let curl = ok(
        &scene,
        &[
            "curl",
            "--service",
            "hello",
            "-n",
            ns,
            "--system-namespace",
            ns,
        ],
    )
    .await;
    assert_eq!(
        curl.stdout.lines().next(),
        Some(format!("Running: curl -sS -H 'Host: web.example.com' http://{http}/").as_str()),
        "{curl:?}"
    );
    assert!(curl.stdout.ends_with("backend"), "{curl:?}");

    // check: the invalid ingress fails it; without it everything passes; an unavailable
    // proxy Deployment fails it again.
    let envoy_admin = first.envoy.admin_addr().unwrap().to_string();
    let check_args: Vec<&str> = [
        "check",
        "--envoy-admin-addr",
        &envoy_admin,
        "--ingress-namespace",
        ns,
    ]
    .into_iter()
    .chain(via)
    .collect();
    let check = fails(&scene, &check_args).await;
    let lines: Vec<&str> = check.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{check:?}");
    let failing: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failing.len(), 1, "{check:?}");
    assert!(
        failing[0].contains("ingresses Ready")
            && failing[0].contains(&format!("{ns}/broken"))
            && failing[0].contains("InvalidIngress"),
        "{check:?}"
    );
    assert!(
        lines[0].contains("2 replicas answer: sluice-first")
            && lines[2].starts_with("OK    proxy Deployments available"),
        "{check:?}"
    );
    scene.delete(&[broken]).await;
    let passed = ok(&scene, &check_args).await;
    assert!(
        passed.stdout.lines().all(|l| l.starts_with("OK")),
        "{passed:?}"
    );
    patch_status(
        &deployments,
        "knative-internal-proxy",
        json!({"readyReplicas": 0, "availableReplicas": 0}),
    )
    .await;
    let check = fails(&scene, &check_args).await;
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("FAIL  proxy Deployments available")
                && l.contains("knative-internal-proxy: 0 of 1 replicas available")),
        "{check:?}"
    );

    // With no flag and nothing at the default local address, a command asks the cluster of
    // $KUBECONFIG; with neither, it says what to do.
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let found = without_flags(&["get", "ingress", "-n", ns], &kubeconfig).await;
    assert!(
        found.status.success()
            && String::from_utf8_lossy(&found.stdout).contains("web.example.com"),
        "{found:?}"
    );
    let nowhere = without_flags(&["get", "ingress"], "/nonexistent/kubeconfig").await;
    let stderr = String::from_utf8_lossy(&nowhere.stderr);
    assert!(
        !nowhere.status.success()
            && stderr.contains("none answers at 127.0.0.1:9091")
            && stderr.contains("--kubeconfig"),
        "{nowhere:?}"
    );
    drop(second);
    drop(first);
}

/// `sluice <args>` with `KUBECONFIG=kubeconfig` and no flag saying where the control plane is.
async fn without_flags(args: &[&str], kubeconfig: &str) -> std::process::Output {
    tokio::process::Command::new(crate::support::sluice::sluice_binary())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_BACKTRACE", "0")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run sluice")
}

/// Without a kubelet no port-forward can succeed: everything up to the API server's answer is
/// checked (the pods found through the Deployment's selector and the EndpointSlices, the
/// errors that name them).
async fn port_forwards(cluster: &'static Cluster) {
    let scene = Scene::new(cluster, "cli-forward").await;
    let ns = scene.ns.as_str();
    scene.apply(&installed_proxies(ns, true)).await;

    let nothing = fails(&scene, &["proxy", "dump", "-n", ns]).await;
    assert!(
        nothing.stderr.contains(&format!(
            "no pod of Deployment {ns}/knative-external-proxy is running"
        )),
        "{nothing:?}"
    );
    service_account(&scene).await;
    let labels = json!({
        "app.kubernetes.io/name": "knative-external-proxy",
        "app.kubernetes.io/part-of": "sluice",
    });
    pod(
        &scene,
        "external-pending",
        labels.clone(),
        "nowhere",
        "Pending",
    )
    .await;
    pod(&scene, "external-running", labels, "nowhere", "Running").await;
    for command in ["dump", "stats"] {
        let refused = fails(&scene, &["proxy", command, "-n", ns]).await;
        assert!(
            refused.stderr.contains(&format!(
                "cannot port-forward to pod {ns}/external-running port 19000"
            )),
            "{refused:?}"
        );
    }

    // The replicas: a pod's endpoint is port-forwarded to; one without a pod cannot be.
    scene
        .apply(&sluice_service(
            ns,
            &[("a", SocketAddr::new(TEST_ADDRESS, 9091))],
        ))
        .await;
    let status = fails(&scene, &["proxy", "status", "-n", ns]).await;
    assert!(
        status.stderr.contains(&format!(
            "cannot reach sluice replica sluice-a at pod {ns}/sluice-a port 9091 (port-forward)"
        )),
        "{status:?}"
    );
    let check = fails(&scene, &["check", "-n", ns, "--ingress-namespace", ns]).await;
    let line = |name: &str| {
        check
            .stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} line: {check:?}"))
            .to_owned()
    };
    assert!(
        line("control plane healthy").starts_with("FAIL")
            && line("control plane healthy").contains("sluice-a"),
        "{check:?}"
    );
    assert!(
        line("update_rejected").starts_with("FAIL")
            && line("update_rejected").contains(&format!("pod {ns}/external-running port 19000")),
        "{check:?}"
    );
    let mut podless = sluice_service(ns, &[("a", SocketAddr::new(TEST_ADDRESS, 9091))]);
    podless[1]["endpoints"][0]
        .as_object_mut()
        .unwrap()
        .remove("targetRef");
    scene.apply(&podless).await;
    let status = fails(&scene, &["proxy", "status", "-n", ns]).await;
    assert!(
        status.stderr.contains("names no pod") && status.stderr.contains("--replicas-via pod-ip"),
        "{status:?}"
    );
}
