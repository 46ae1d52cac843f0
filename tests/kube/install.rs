//! `sluice install knative` against the API server, and sluice running with exactly the RBAC it
//! installs: a ServiceAccount token, not an administrator.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::json;
use sluice::install::knative::{KnativeInstall, manifests};
use sluice::knative::{IngressResource, RouteResource};

use crate::kit::{self, Scene};
use crate::support::cluster::{Cluster, client_from};
use crate::support::{Stack, StackOptions, sluice::sluice_binary};

/// Runs `sluice <args>` to completion; returns (success, stdout + stderr).
fn run(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(sluice_binary())
        .args(args)
        .output()
        .expect("run sluice");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

pub async fn install_knative(_shared: &'static Cluster) {
    // Whether Knative Serving's namespace exists decides what is applied, and other tests make
    // it in the shared cluster: this one gets a cluster of its own.
    let cluster = Cluster::start().await;
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let namespace = "sluice-installed";
    let install = |timeout: &'static str| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            run(&[
                "install",
                "knative",
                "--kubeconfig",
                &kubeconfig,
                "--namespace",
                namespace,
                "--image",
                "sluice:test",
                "--timeout",
                timeout,
            ])
        })
    };
    // No controller-manager runs here, so the Deployments never become available: the command
    // applies everything, then says which Deployments are missing.
    let (ok, output) = install("2").await.unwrap();
    assert!(
        !ok,
        "install succeeded without available Deployments: {output}"
    );
    for deployment in ["sluice", "knative-external-proxy", "knative-internal-proxy"] {
        assert!(
            output.contains(&format!("{deployment}: 0 of")),
            "the failure does not name {deployment}: {output}"
        );
    }
    assert!(output.contains("config-network was not set"), "{output}");
    assert!(
        output.contains("created the Secrets sluice-xds-server and sluice-xds-client"),
        "{output}"
    );
    let secrets: Api<Secret> = Api::namespaced(cluster.client().await, namespace);
    let server = secrets
        .get("sluice-xds-server")
        .await
        .expect("the server Secret");
    let client = secrets
        .get("sluice-xds-client")
        .await
        .expect("the client Secret");
    verify_xds_certificates(&server, &client, namespace);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client().await, namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client().await, namespace);
    let sluice = deployments
        .get("sluice")
        .await
        .expect("sluice's Deployment");
    let args = container(&sluice)
        .args
        .clone()
        .unwrap_or_default()
        .join(" ");
    assert!(
        args.contains(
            "--xds-tls-cert /etc/sluice-xds/tls.crt --xds-tls-key /etc/sluice-xds/tls.key \
             --xds-client-ca /etc/sluice-xds/ca.crt"
        ),
        "{args}"
    );
    assert_eq!(
        mounted_secret(&sluice, "/etc/sluice-xds"),
        "sluice-xds-server"
    );
    for proxy in ["knative-external-proxy", "knative-internal-proxy"] {
        let deployment = deployments.get(proxy).await.expect("a proxy's Deployment");
        assert_eq!(
            mounted_secret(&deployment, "/etc/sluice-xds"),
            "sluice-xds-client"
        );
        let bootstrap = configmaps
            .get(&format!("{proxy}-bootstrap"))
            .await
            .expect("a proxy's bootstrap")
            .data
            .unwrap()["envoy.yaml"]
            .clone();
        for expected in [
            "trusted_ca: {filename: \"/etc/sluice-xds/ca.crt\"}",
            "certificate_chain: {filename: \"/etc/sluice-xds/tls.crt\"}",
            "private_key: {filename: \"/etc/sluice-xds/tls.key\"}",
            &format!("matcher: {{exact: \"sluice.{namespace}.svc.cluster.local\"}}"),
        ] {
            assert!(bootstrap.contains(expected), "{proxy}: {bootstrap}");
        }
    }
    for configmap in configmaps.list(&Default::default()).await.unwrap() {
        let text = serde_json::to_string(&configmap.data).unwrap();
        assert!(
            !text.contains("PRIVATE KEY"),
            "ConfigMap {:?} holds a key",
            configmap.metadata.name
        );
    }

    let applier = crate::support::cluster::Applier::new(cluster.client().await).await;
    let expected = manifests(&KnativeInstall {
        namespace: namespace.to_owned(),
        image: "sluice:test".to_owned(),
        serve_routes: false,
    });
    for object in expected.iter().flat_map(|(_, objects)| objects) {
        if object["metadata"]["namespace"] == "knative-serving" {
            continue;
        }
        assert!(
            applier.exists(object).await,
            "{} {} was not applied",
            object["kind"],
            object["metadata"]["name"]
        );
    }

    // With Knative Serving's namespace, its config-network selects sluice; applying again is
    // harmless.
    applier
        .apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "knative-serving"}})])
        .await;
    let (ok, output) = install("1").await.unwrap();
    assert!(!ok, "{output}");
    let network: Api<ConfigMap> = Api::namespaced(cluster.client().await, "knative-serving");
    let network = network.get("config-network").await.expect("config-network");
    assert_eq!(
        network.data.unwrap()["ingress-class"],
        "sluice.ingress.networking.knative.dev"
    );
    // The Secrets made the first time stay as they are.
    assert!(output.contains("left as they are"), "{output}");
    for before in [&server, &client] {
        let name = before.metadata.name.as_deref().unwrap();
        let after = secrets.get(name).await.unwrap();
        assert_eq!(after.data, before.data, "{name} was changed");
        assert_eq!(
            after.metadata.resource_version, before.metadata.resource_version,
            "{name} was written again"
        );
    }

    // One without the other is refused: a new CA could not match the one that is there.
    secrets
        .delete("sluice-xds-client", &DeleteParams::default())
        .await
        .expect("delete the client Secret");
    let (ok, output) = tokio::task::spawn_blocking(move || {
        run(&[
            "install",
            "xds-certs",
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            namespace,
        ])
    })
    .await
    .unwrap();
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!(
            "Secret {namespace}/sluice-xds-server exists but {namespace}/sluice-xds-client does not"
        )),
        "{output}"
    );
    assert!(
        secrets
            .get_opt("sluice-xds-client")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        secrets.get("sluice-xds-server").await.unwrap().data,
        server.data
    );
}

fn pod_spec(deployment: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn container(deployment: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &pod_spec(deployment).containers[0]
}

/// The name of the Secret whose volume the Deployment's container mounts at `path`.
fn mounted_secret(deployment: &Deployment, path: &str) -> String {
    let spec = pod_spec(deployment);
    let mount = container(deployment)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    assert_eq!(mount.read_only, Some(true));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume");
    volume
        .secret
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .expect("a Secret volume")
}

/// Both Secrets are `kubernetes.io/tls` of one CA; sluice's certificate is a server's for
/// every name of its Service, the proxies' a client's, as rustls (sluice's side) checks them.
fn verify_xds_certificates(server: &Secret, client: &Secret, namespace: &str) {
    use rustls::client::danger::ServerCertVerifier;
    let file = |secret: &Secret, name: &str| secret.data.as_ref().unwrap()[name].0.clone();
    let certificate =
        |pem: Vec<u8>| CertificateDer::from_pem_slice(&pem).expect("a PEM certificate");
    for secret in [server, client] {
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let key = String::from_utf8(file(secret, "tls.key")).unwrap();
        assert!(key.contains("PRIVATE KEY"), "{:?}", secret.metadata.name);
    }
    assert_eq!(file(server, "ca.crt"), file(client, "ca.crt"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate(file(server, "ca.crt"))).unwrap();
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    for name in [
        "sluice".to_owned(),
        format!("sluice.{namespace}"),
        format!("sluice.{namespace}.svc"),
        format!("sluice.{namespace}.svc.cluster.local"),
    ] {
        servers
            .verify_server_cert(
                &certificate(file(server, "tls.crt")),
                &[],
                &ServerName::try_from(name.clone()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("sluice's certificate for {name}: {e}"));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap()
        .verify_client_cert(&certificate(file(client, "tls.crt")), &[], UnixTime::now())
        .expect("the proxies' certificate is a client's of the CA");
}

pub async fn install_crds_leaves_foreign_ones(cluster: &'static Cluster) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client().await);
    let name = "configurations.serving.knative.dev";
    let label = |value: serde_json::Value| {
        Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": value}}}))
    };
    // As if Knative Serving had installed it.
    crds.patch(name, &PatchParams::default(), &label(json!("knative")))
        .await
        .expect("relabel the CRD");
    let (ok, output) =
        tokio::task::spawn_blocking(move || run(&["install", "crds", "--kubeconfig", &kubeconfig]))
            .await
            .unwrap();
    let owner =
        crds.get(name).await.unwrap().metadata.labels.unwrap()["app.kubernetes.io/managed-by"]
            .clone();
    crds.patch(name, &PatchParams::default(), &label(json!("sluice")))
        .await
        .expect("restore the label");
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!("{name} was installed by someone else")),
        "{output}"
    );
    assert_eq!(
        owner, "knative",
        "install crds took over a CRD it did not install"
    );
}

/// A token of ServiceAccount `namespace/sluice`.
async fn service_account_token(scene: &Scene<'_>) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(scene.applier.client().clone(), &scene.ns);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    accounts
        .create_token_request("sluice", &PostParams::default(), &request)
        .await
        .expect("a token for the sluice ServiceAccount")
        .status
        .expect("a token request status")
        .token
}

pub async fn least_privilege_serving_routes(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "rbac-routes").await;
    let objects: Vec<serde_json::Value> = manifests(&KnativeInstall {
        namespace: scene.ns.clone(),
        serve_routes: true,
        ..KnativeInstall::default()
    })
    .into_iter()
    .filter(|(file, _)| ["rbac.yaml", "serve-routes.yaml"].contains(file))
    .flat_map(|(_, objects)| objects)
    .collect();
    scene.apply(&objects).await;
    let token = service_account_token(&scene).await;
    let kubeconfig = cluster.kubeconfig_for(&scene.ns, &token);

    let backend = kit::backend("hello-00001");
    scene
        .apply(&scene.service("hello-00001", backend.addr()))
        .await;
    scene
        .apply(&[json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Route",
            "metadata": {"name": "hello", "namespace": scene.ns},
            "spec": {"traffic": [{"revisionName": "hello-00001", "percent": 100}]},
        })])
        .await;
    let stack = Stack::start_on(
        scene.sluice_as(&kubeconfig, &["--serve-routes"]),
        StackOptions {
            delta,
            ..StackOptions::default()
        },
    )
    .await;
    let host = format!("hello.{}.example.com", scene.ns);
    let response = stack
        .get_until(stack.http_addr(), &host, "/", kit::CONVERGE, |r| {
            r.status == 200
        })
        .await;
    assert_eq!(response.backend(), Some("hello-00001"));
    let routes: Api<RouteResource> = Api::namespaced(scene.applier.client().clone(), &scene.ns);
    let ready = crate::support::poll_until(kit::CONVERGE, async || {
        let route = routes.get("hello").await.ok()?;
        let ready = route
            .status?
            .conditions
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "the Route's status was not written with the installed RBAC"
    );
}

pub async fn least_privilege(cluster: &'static Cluster, delta: bool) {
    let scene = Scene::new(cluster, "rbac").await;
    let rbac = manifests(&KnativeInstall {
        namespace: scene.ns.clone(),
        ..KnativeInstall::default()
    })
    .into_iter()
    .find(|(file, _)| *file == "rbac.yaml")
    .expect("the RBAC part")
    .1;
    scene.apply(&rbac).await;
    let token = service_account_token(&scene).await;
    let kubeconfig = cluster.kubeconfig_for(&scene.ns, &token);

    let backend = kit::backend("backend");
    scene.apply(&scene.service("backend", backend.addr())).await;
    scene
        .apply(&[scene.ingress("web", "web.example.com", "backend")])
        .await;
    let stack = Stack::start_on(
        scene.sluice_as(&kubeconfig, &[]),
        StackOptions {
            delta,
            ..StackOptions::default()
        },
    )
    .await;
    stack
        .get_until(
            stack.http_addr(),
            "web.example.com",
            "/",
            kit::CONVERGE,
            |r| r.status == 200,
        )
        .await;
    scene.wait_ready("web").await;

    // The same token may not change an ingress's spec, nor read ConfigMaps elsewhere.
    let as_sluice = client_from(&kubeconfig).await;
    let ingresses: Api<IngressResource> = Api::namespaced(as_sluice.clone(), &scene.ns);
    let spec_patch = Patch::Merge(json!({"metadata": {"labels": {"tampered": "yes"}}}));
    let refused = ingresses
        .patch("web", &PatchParams::default(), &spec_patch)
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(status)) if status.code == 403),
        "sluice's token may patch an ingress: {refused:?}"
    );
    let elsewhere: Api<ConfigMap> = Api::namespaced(as_sluice, "default");
    let refused = elsewhere.list(&Default::default()).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(status)) if status.code == 403),
        "sluice's token may list ConfigMaps outside its namespace: {refused:?}"
    );
}
