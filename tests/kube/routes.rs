//! `--serve-routes`: a Route applied through the real API server is served through Envoy and
//! its status written there, `sluice rollout` patches it there, and an Ingress another
//! controller made under a Route's name is served as it is, its Route left alone.

use kube::Api;
use serde_json::{Value, json};
use sluice::knative::{RouteResource, RouteStatus};

use crate::kit::{self, CONVERGE, Scene};
use crate::support::cluster::Cluster;
use crate::support::manifests;
use crate::support::sluice::run_cli;
use crate::support::{Stack, StackOptions, poll_until};

/// Route `name` in the scene's namespace with `traffic`.
fn route(scene: &Scene, name: &str, traffic: Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": {"name": name, "namespace": scene.ns},
        "spec": {"traffic": traffic},
    })
}

fn routes(scene: &Scene) -> Api<RouteResource> {
    Api::namespaced(scene.applier.client().clone(), &scene.ns)
}

fn ready(status: &RouteStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// Waits until Route `name`'s status in the API server satisfies `accept`.
async fn wait_route(
    scene: &Scene,
    name: &str,
    what: &str,
    accept: impl Fn(&RouteResource, &RouteStatus) -> bool,
) -> RouteResource {
    let mut last = None;
    let found = poll_until(CONVERGE, async || {
        let route = routes(scene).get(name).await.ok()?;
        let status = route.status.clone()?;
        if accept(&route, &status) {
            return Some(route);
        }
        last = Some(status);
        None
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "Route {}/{name}: no {what} within {CONVERGE:?}; last status: {last:#?}",
            scene.ns
        )
    })
}

/// Percent per revision in a Route's status traffic.
fn split(status: &RouteStatus) -> Vec<(String, i64)> {
    status
        .traffic
        .iter()
        .map(|t| (t.revision_name.clone(), t.percent.unwrap_or(0)))
        .collect()
}

pub async fn served_with_status(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "routes").await;
    let blue = kit::backend("hello-00001");
    let green = kit::backend("hello-00002");
    scene
        .apply(&scene.service("hello-00001", blue.addr()))
        .await;
    scene
        .apply(&scene.service("hello-00002", green.addr()))
        .await;
    let stack = Stack::start_on(
        scene.sluice(&["--serve-routes"]),
        StackOptions {
            delta,
            ..StackOptions::default()
        },
    )
    .await;
    scene
        .apply(&[route(
            &scene,
            "hello",
            json!([
                {"tag": "blue", "revisionName": "hello-00001", "percent": 100},
                {"tag": "green", "revisionName": "hello-00002", "percent": 0},
            ]),
        )])
        .await;
    let host = format!("hello.{}.example.com", scene.ns);
    let served = wait_route(
        &scene,
        "hello",
        "Ready=True at its generation",
        |route, status| {
            ready(status) == Some("True") && status.observed_generation == route.metadata.generation
        },
    )
    .await;
    let status = served.status.unwrap();
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://{host}").as_str())
    );
    assert_eq!(
        status.address.and_then(|a| a.url).as_deref(),
        Some(format!("http://hello.{}.svc.cluster.local", scene.ns).as_str())
    );
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["AllTrafficAssigned", "IngressReady", "Ready"]);
    assert_eq!(
        status.traffic[1].url.as_deref(),
        Some(format!("http://green-hello.{}.example.com", scene.ns).as_str())
    );
    let response = stack
        .get_until(stack.http_addr(), &host, "/", CONVERGE, |r| r.status == 200)
        .await;
    assert_eq!(response.backend(), Some("hello-00001"));
    let green_host = format!("green-hello.{}.example.com", scene.ns);
    assert_eq!(
        stack.get(&green_host, "/").await.backend(),
        Some("hello-00002")
    );
    assert!(
        scene.ingresses().get_opt("hello").await.unwrap().is_none(),
        "the Route's Ingress lives in sluice only, not in the API server"
    );

    let kubeconfig = cluster.kubeconfig.display().to_string();
    let traffic = kit::TrafficLoop::start(vec![(
        stack.http_addr(),
        format!("blue-hello.{}.example.com", scene.ns),
        "hello-00001".to_owned(),
    )]);
    let output = run_cli(&[
        "rollout",
        "hello",
        "-n",
        &scene.ns,
        "-p",
        "blue=50%",
        "-p",
        "hello-00002=50%",
        "--kubeconfig",
        &kubeconfig,
    ])
    .await;
    traffic.finish().await;
    assert!(output.success, "rollout failed: {output:?}");
    assert!(
        output
            .stdout
            .contains("50% -> hello-00001 #blue, 50% -> hello-00002 #green   True"),
        "{}",
        output.stdout
    );
    let patched = routes(&scene).get("hello").await.unwrap();
    let percents: Vec<Option<i64>> = patched.spec.traffic.iter().map(|t| t.percent).collect();
    assert_eq!(percents, [Some(50), Some(50)]);
    assert_eq!(
        split(patched.status.as_ref().unwrap()),
        [
            ("hello-00001".to_owned(), 50),
            ("hello-00002".to_owned(), 50)
        ]
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        if let Some(backend) = stack.get(&host, "/").await.backend() {
            seen.insert(backend.to_owned());
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "both revisions answer after the rollout: {seen:?}"
    );

    let refused = run_cli(&[
        "rollout",
        "hello",
        "-n",
        &scene.ns,
        "-p",
        "blue=60",
        "-p",
        "green=50",
        "--kubeconfig",
        &kubeconfig,
    ])
    .await;
    assert!(!refused.success, "{refused:?}");
    let unchanged = routes(&scene).get("hello").await.unwrap();
    assert_eq!(
        unchanged.metadata.generation, patched.metadata.generation,
        "a refused rollout changes nothing"
    );
}

pub async fn foreign_ingress_wins(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "routes-foreign").await;
    let backend = kit::backend("made-elsewhere");
    scene
        .apply(&scene.service("made-elsewhere", backend.addr()))
        .await;
    let stack = Stack::start_on(
        scene.sluice(&["--serve-routes"]),
        StackOptions {
            delta,
            ..StackOptions::default()
        },
    )
    .await;
    let host = format!("served.{}.example.com", scene.ns);
    let ingress = manifests::Ingress::new(&scene.ns, "served")
        .label("serving.knative.dev/route", "served")
        .rule(
            manifests::Rule::external(&[&host]).path(manifests::HttpPath::new().split(
                manifests::Split::new(&scene.ns, "made-elsewhere", manifests::SERVICE_PORT),
            )),
        )
        .to_value();
    scene.apply(&[ingress]).await;
    scene
        .apply(&[route(
            &scene,
            "served",
            json!([{"revisionName": "nowhere-00001", "percent": 100}]),
        )])
        .await;
    scene.wait_ready("served").await;
    let response = stack
        .get_until(stack.http_addr(), &host, "/", CONVERGE, |r| r.status == 200)
        .await;
    assert_eq!(response.backend(), Some("made-elsewhere"));
    let untouched = routes(&scene).get("served").await.unwrap();
    assert!(
        untouched.status.is_none(),
        "the Route of an Ingress sluice did not make is left to its controller: {:?}",
        untouched.status
    );
}
