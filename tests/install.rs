//! `sluice install`: the manifests in `deploy/knative/` are exactly what `sluice install knative
//! --dry-run` prints and hold no key, the proxies' bootstraps are ones a real Envoy accepts, an
//! Envoy on a proxy's bootstrap reaches sluice over mutual TLS with the certificates `sluice
//! install xds-certs` makes, mounted as the Deployments mount them, and the CRDs print.

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use support::envoy::envoy_binary;
use support::sluice::run_sluice;
use support::{Envoy, ManifestDir, Sluice, poll_until, secs};

/// The objects of a multi-document YAML text.
fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).expect("the manifests are YAML")
}

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/knative")
}

/// The objects of `deploy/knative`, in the order of its kustomization.
fn deployed() -> Vec<Value> {
    let dir = deploy_dir();
    let kustomization =
        std::fs::read_to_string(dir.join("kustomization.yaml")).expect("read the kustomization");
    let kustomization: Value =
        serde_saphyr::from_str(&kustomization).expect("the kustomization is YAML");
    kustomization["resources"]
        .as_array()
        .expect("a resource list")
        .iter()
        .flat_map(|file| {
            let path = dir.join(file.as_str().expect("a file name"));
            objects(&std::fs::read_to_string(&path).expect("read a deploy file"))
        })
        .collect()
}

#[test]
fn deploy_is_what_install_knative_prints() {
    let printed = objects(&run_sluice(&[
        "install".into(),
        "knative".into(),
        "--dry-run".into(),
    ]));
    assert_eq!(
        deployed(),
        printed,
        "deploy/knative is out of date: run `sluice install knative --dry-run --output-dir deploy/knative`"
    );
    for entry in std::fs::read_dir(deploy_dir()).expect("list deploy/knative") {
        let path = entry.expect("a deploy file").path();
        let text = std::fs::read_to_string(&path).expect("read a deploy file");
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("kind: Secret"),
            "{} holds key material",
            path.display()
        );
    }
    let kinds: Vec<String> = printed
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "Namespace/gloo-system",
        "Deployment/sluice",
        "Service/sluice",
        "Deployment/knative-external-proxy",
        "Service/knative-external-proxy",
        "Deployment/knative-internal-proxy",
        "Service/knative-internal-proxy",
        "ClusterRole/sluice-gloo-system",
        "Role/sluice",
        "ConfigMap/config-network",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }
}

#[test]
fn namespace_and_image_apply_everywhere() {
    let printed = run_sluice(&[
        "install".into(),
        "knative".into(),
        "--dry-run".into(),
        "--namespace".into(),
        "edge".into(),
        "--image".into(),
        "registry.example.com/sluice:test".into(),
    ]);
    assert!(!printed.contains("gloo-system"), "{printed}");
    assert!(printed.contains("address: sluice.edge.svc.cluster.local, port_value: 9977"));
    assert!(printed.contains("edge~knative-external-proxy"));
    let images: Vec<Value> = objects(&printed)
        .into_iter()
        .filter(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "sluice")
        .map(|o| o["spec"]["template"]["spec"]["containers"][0]["image"].clone())
        .collect();
    assert_eq!(images, ["registry.example.com/sluice:test"]);
}

/// The Secrets `sluice install xds-certs --dry-run` prints, written out as a Secret volume
/// would hold them: a directory per Secret, a file per key.
fn xds_secret_volumes(dir: &Path) -> Vec<Secret> {
    let printed = run_sluice(&["install".into(), "xds-certs".into(), "--dry-run".into()]);
    let secrets: Vec<Secret> = serde_saphyr::from_multiple(&printed).expect("the Secrets are YAML");
    for secret in &secrets {
        let volume = dir.join(secret.metadata.name.as_deref().expect("a Secret's name"));
        std::fs::create_dir_all(&volume).unwrap();
        for (file, content) in secret.data.as_ref().expect("the Secret's data") {
            std::fs::write(volume.join(file), &content.0).unwrap();
        }
    }
    secrets
}

/// The container's text with each Secret volume's mount path replaced by that Secret's
/// directory under `volumes` (see [`xds_secret_volumes`]).
fn with_secret_volumes(deployment: &Value, text: &str, volumes: &Path) -> String {
    let spec = &deployment["spec"]["template"]["spec"];
    let mut text = text.to_owned();
    for mount in spec["containers"][0]["volumeMounts"].as_array().unwrap() {
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("a mount's volume");
        if let Some(secret) = volume["secret"]["secretName"].as_str() {
            let path = volumes.join(secret);
            text = text.replace(mount["mountPath"].as_str().unwrap(), path.to_str().unwrap());
        }
    }
    text
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_proxies_bootstraps_are_valid_envoy_config() {
    let dir = support::temp_dir("sluice-install-");
    let volumes = dir.path().join("volumes");
    xds_secret_volumes(&volumes);
    let objects = deployed();
    for object in &objects {
        let Some(bootstrap) = object["data"]["envoy.yaml"].as_str() else {
            continue;
        };
        let name = object["metadata"]["name"].as_str().unwrap();
        let proxy = named(&objects, "Deployment", name.trim_end_matches("-bootstrap"));
        let bootstrap = with_secret_volumes(proxy, bootstrap, &volumes);
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, bootstrap).unwrap();
        let output = Command::new(envoy_binary())
            .args(["--mode", "validate", "--service-node", "pod-0", "-c"])
            .arg(&path)
            .output()
            .expect("run envoy --mode validate");
        assert!(
            output.status.success(),
            "Envoy refuses the bootstrap of {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The installed sluice's TLS flags and the installed external proxy's bootstrap, with the
/// Secrets' files where the Deployments mount them and loopback for the Service's address: the
/// certificates are used as made (the Envoy still checks that sluice's names the Service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_proxies_reach_the_installed_sluice_over_mutual_tls() {
    let dir = support::temp_dir("sluice-install-mtls-");
    let volumes = dir.path().join("volumes");
    let secrets = xds_secret_volumes(&volumes);
    let names: Vec<_> = secrets
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["sluice-xds-server", "sluice-xds-client"]);
    let objects = deployed();

    let sluice_deployment = named(&objects, "Deployment", "sluice");
    let args: Vec<String> = sluice_deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| with_secret_volumes(sluice_deployment, a.as_str().unwrap(), &volumes))
        .collect();
    let mut tls_args = Vec::new();
    for pair in args.windows(2) {
        if ["--xds-tls-cert", "--xds-tls-key", "--xds-client-ca"].contains(&pair[0].as_str()) {
            tls_args.extend([pair[0].as_str(), pair[1].as_str()]);
        }
    }
    assert_eq!(tls_args.len(), 6, "sluice's TLS flags: {args:?}");
    let manifests = ManifestDir::new();
    let sluice = Sluice::start_with(manifests.path(), &tls_args);
    sluice.wait_ready().await;

    let proxy = named(&objects, "Deployment", "knative-external-proxy");
    let bootstrap =
        named(&objects, "ConfigMap", "knative-external-proxy-bootstrap")["data"]["envoy.yaml"]
            .as_str()
            .unwrap();
    let service = "sluice.gloo-system.svc.cluster.local";
    let dialed = format!("address: {service}, port_value: 9977");
    assert!(bootstrap.contains(&dialed), "{bootstrap}");
    let bootstrap = with_secret_volumes(proxy, bootstrap, &volumes)
        .replace(
            &dialed,
            &format!(
                "address: 127.0.0.1, port_value: {}",
                sluice.xds_addr().port()
            ),
        )
        .replace("port_value: 19000", "port_value: 0");
    assert!(
        bootstrap.contains(&format!("sni: \"{service}\"")),
        "{bootstrap}"
    );
    let envoy = Envoy::start_with(&bootstrap, &["--service-node", "external-pod-0"]);
    envoy.wait_ready().await;
    let connected = poll_until(secs(20), async || {
        let proxies = sluice.admin_get("/debug/proxies").await.body;
        proxies.contains("external-pod-0").then_some(())
    })
    .await;
    assert!(
        connected.is_some(),
        "the Envoy is not among sluice's proxies"
    );
    let stats = envoy
        .admin_get("/stats?filter=listener_manager.lds.update_success")
        .await
        .body;
    assert!(
        !stats.contains("update_success: 0"),
        "the Envoy got no listeners: {stats}"
    );
}

#[test]
fn the_crds_print() {
    let printed = objects(&run_sluice(&[
        "install".into(),
        "crds".into(),
        "--dry-run".into(),
    ]));
    let names: Vec<_> = printed
        .iter()
        .map(|crd| crd["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"ingresses.networking.internal.knative.dev".to_owned()));
    assert!(names.contains(&"clusteringresses.networking.internal.knative.dev".to_owned()));
}
