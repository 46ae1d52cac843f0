//! `--serve-routes`: a Route applied through the real API server is served through Envoy and
//! its status written there, `sluice rollout` patches it there (or the Knative Service that
//! owns it), and an Ingress another controller made under a Route's name is served as it is,
//! its Route left alone.

use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
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
    scene: &Scene<'_>,
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
    // `get route` against the cluster reads the Route and its status from the API server.
    let listed = run_cli(&["get", "route", "-n", &scene.ns, "--kubeconfig", &kubeconfig]).await;
    assert!(listed.success, "{listed:?}");
    assert!(
        listed.stdout.lines().any(|line| line.starts_with("hello ")
            && line.contains("50% -> hello-00002 #green")
            && line.contains("True")),
        "{}",
        listed.stdout
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

/// A minimal CRD for Knative Serving's `Service`, which this cluster lacks: enough to own a
/// Route and hold `spec.traffic`.
fn knative_service_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "services.serving.knative.dev"},
        "spec": {
            "group": "serving.knative.dev",
            "names": {"kind": "Service", "plural": "services", "singular": "service", "shortNames": ["ksvc"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    })
}

fn knative_services(scene: &Scene) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "serving.knative.dev".into(),
        version: "v1".into(),
        api_version: "serving.knative.dev/v1".into(),
        kind: "Service".into(),
        plural: "services".into(),
    };
    Api::namespaced_with(scene.applier.client().clone(), &scene.ns, &resource)
}

pub async fn rollout_through_owning_service(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "routes-ksvc").await;
    let blue = kit::backend("hello-00001");
    let green = kit::backend("hello-00002");
    scene
        .apply(&scene.service("hello-00001", blue.addr()))
        .await;
    scene
        .apply(&scene.service("hello-00002", green.addr()))
        .await;
    scene.apply(&[knative_service_crd()]).await;
    let services = knative_services(&scene);
    let traffic = json!([{"revisionName": "hello-00001", "percent": 100}]);
    let service: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": scene.ns},
        "spec": {"traffic": traffic},
    }))
    .unwrap();
    let created = poll_until(CONVERGE, async || {
        services.create(&PostParams::default(), &service).await.ok()
    })
    .await
    .expect("the Knative Service CRD is served and the Service created");
    let mut owned = route(&scene, "hello", traffic);
    owned["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "name": "hello",
        "uid": created.metadata.uid,
        "controller": true,
    }]);
    scene.apply(&[owned]).await;
    let stack = Stack::start_on(
        scene.sluice(&["--serve-routes"]),
        StackOptions {
            delta,
            ..StackOptions::default()
        },
    )
    .await;
    wait_route(&scene, "hello", "Ready=True", |_, status| {
        ready(status) == Some("True")
    })
    .await;

    // Knative Serving's part, which this cluster lacks: the Service's traffic goes to its Route.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let serving = {
        let (services, routes) = (services.clone(), routes(&scene));
        tokio::spawn(async move {
            while !*stopped.borrow_and_update() {
                if let Ok(service) = services.get("hello").await {
                    let patch = json!({"spec": {"traffic": service.data["spec"]["traffic"]}});
                    let _ = routes
                        .patch("hello", &PatchParams::default(), &Patch::Merge(patch))
                        .await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let output = run_cli(&[
        "rollout",
        "hello",
        "-n",
        &scene.ns,
        "--traffic",
        "hello-00001=20,hello-00002=80",
        "--kubeconfig",
        &kubeconfig,
    ])
    .await;
    stop.send_replace(true);
    serving.await.expect("the Serving stand-in panicked");
    assert!(output.success, "rollout failed: {output:?}");
    assert!(
        output.stderr.contains("patched Knative Service"),
        "{}",
        output.stderr
    );
    let service = services.get("hello").await.unwrap();
    assert_eq!(
        service.data["spec"]["traffic"],
        json!([
            {"revisionName": "hello-00001", "percent": 20},
            {"revisionName": "hello-00002", "percent": 80},
        ])
    );
    let served = routes(&scene).get("hello").await.unwrap();
    assert_eq!(
        split(served.status.as_ref().unwrap()),
        [
            ("hello-00001".to_owned(), 20),
            ("hello-00002".to_owned(), 80)
        ]
    );
    let host = format!("hello.{}.example.com", scene.ns);
    stack
        .get_until(stack.http_addr(), &host, "/", CONVERGE, |r| {
            r.backend() == Some("hello-00002")
        })
        .await;
}
