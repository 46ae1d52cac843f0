//! `sluice install`: the manifests in `deploy/knative/` are exactly what `sluice install knative
//! --dry-run` prints, the proxies' bootstraps are ones a real Envoy accepts, and the CRDs print.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use support::envoy::envoy_binary;
use support::sluice::run_sluice;

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

#[test]
fn the_proxies_bootstraps_are_valid_envoy_config() {
    let dir = support::temp_dir("sluice-install-");
    for object in deployed() {
        let Some(bootstrap) = object["data"]["envoy.yaml"].as_str() else {
            continue;
        };
        let name = object["metadata"]["name"].as_str().unwrap();
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
