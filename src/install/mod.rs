//! What `sluice install` puts in a cluster: the Knative ingress CRDs and Serving's Route and
//! Configuration CRDs, generated from sluice's own types, and sluice itself beside its Envoys
//! ([`knative`]), with the certificates of xDS over mutual TLS ([`certs`]); printed as YAML, or
//! applied with server-side apply.

pub mod certs;
pub mod knative;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use kube::{Client, CustomResourceExt};
use serde::Serialize;

use crate::knative::{
    ClusterIngressResource, ConfigurationResource, IngressResource, RouteResource,
};

/// The field manager of everything sluice applies.
const MANAGER: &str = "sluice-install";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot discover the API server's resources: {0}")]
    Discovery(#[source] kube::Error),
    #[error("the API server does not serve {api_version} {kind}; {hint}")]
    Unknown {
        api_version: String,
        kind: String,
        hint: &'static str,
    },
    #[error("applying {kind} {name} failed: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("reading {namespace}/{name} failed: {source}")]
    Read {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating {kind} {namespace}/{name} failed: {source}")]
    Create {
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "Secret {namespace}/{present} exists but {namespace}/{missing} does not, and a new CA \
         would not match the one there: create {missing} with a certificate of the CA in \
         {present}'s ca.crt, or delete {present} so that both are made anew"
    )]
    HalfTheXdsSecrets {
        namespace: String,
        present: String,
        missing: String,
    },
    #[error(transparent)]
    Certificate(#[from] certs::CertificateError),
    #[error(
        "not available after {seconds} s: {}; see `kubectl -n {namespace} describe deployment` \
         and the pods' events (image pulls, scheduling, probes)",
        .missing.join("; ")
    )]
    NotAvailable {
        namespace: String,
        seconds: u64,
        missing: Vec<String>,
    },
}

/// Waits until every Deployment named has as many available replicas as it asks for.
pub async fn wait_available(
    client: &Client,
    namespace: &str,
    deployments: &[&str],
    timeout: std::time::Duration,
) -> Result<(), InstallError> {
    use k8s_openapi::api::apps::v1::Deployment;
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut missing = Vec::new();
        for name in deployments {
            let deployment = api.get(name).await.map_err(|source| InstallError::Read {
                namespace: namespace.to_owned(),
                name: (*name).to_owned(),
                source,
            })?;
            let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
            let available = deployment
                .status
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if available < wanted {
                missing.push(format!(
                    "{name}: {available} of {wanted} replicas available"
                ));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(InstallError::NotAvailable {
                namespace: namespace.to_owned(),
                seconds: timeout.as_secs(),
                missing,
            });
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Whether the cluster has a namespace.
pub async fn has_namespace(client: &Client, name: &str) -> Result<bool, InstallError> {
    use k8s_openapi::api::core::v1::Namespace;
    Api::<Namespace>::all(client.clone())
        .get_opt(name)
        .await
        .map(|found| found.is_some())
        .map_err(InstallError::Discovery)
}

/// Objects as one YAML stream, `---` between documents.
pub fn to_yaml<T: Serialize>(objects: &[T]) -> String {
    objects
        .iter()
        .map(|object| serde_saphyr::to_string(object).expect("a Kubernetes object serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Server-side applies each object, in order, as the field manager `sluice-install`.
pub async fn apply<T: Serialize>(client: &Client, objects: &[T]) -> Result<(), InstallError> {
    let mut discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(InstallError::Discovery)?;
    for object in objects {
        let object: DynamicObject = serde_json::from_value(
            serde_json::to_value(object).expect("a Kubernetes object serializes"),
        )
        .expect("a Kubernetes object reads as a dynamic object");
        let types = object.types.clone().unwrap_or_default();
        let (group, version) = match types.api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", types.api_version.as_str()),
        };
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
        let mut found = discovery.resolve_gvk(&gvk);
        if found.is_none() {
            // A CRD applied a moment ago is served only once discovery sees it.
            discovery = Discovery::new(client.clone())
                .run()
                .await
                .map_err(InstallError::Discovery)?;
            found = discovery.resolve_gvk(&gvk);
        }
        let Some((resource, capabilities)) = found else {
            return Err(InstallError::Unknown {
                api_version: types.api_version.clone(),
                kind: types.kind.clone(),
                hint: "install its CRD first (for Knative's ingresses: `sluice install crds`)",
            });
        };
        let name = object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match (&capabilities.scope, &object.metadata.namespace) {
            (Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|source| InstallError::Apply {
            kind: types.kind.clone(),
            name: name.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The `Ingress` and legacy `ClusterIngress` CRDs (networking.internal.knative.dev/v1alpha1),
/// and the `Route` and `Configuration` CRDs (serving.knative.dev/v1) that `serve
/// --serve-routes` reads where Knative Serving is not installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        IngressResource::crd(),
        ClusterIngressResource::crd(),
        RouteResource::crd(),
        ConfigurationResource::crd(),
    ]
    .into_iter()
    .map(tidy)
    .collect()
}

/// The label marking the CRDs sluice installs: the ones it may update.
const OWNER_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "sluice");

/// The CRDs of [`crds`] that the cluster lacks or that sluice installed: a CRD someone else
/// installed (Knative Serving's own) is left alone. Returns them and the names of those left.
pub async fn crds_to_apply(
    client: &Client,
) -> Result<(Vec<CustomResourceDefinition>, Vec<String>), InstallError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut apply = Vec::new();
    let mut foreign = Vec::new();
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let existing = api
            .get_opt(&name)
            .await
            .map_err(|source| InstallError::Read {
                namespace: String::new(),
                name: name.clone(),
                source,
            })?;
        let ours = existing.as_ref().is_none_or(|existing| {
            existing
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(OWNER_LABEL.0))
                .is_some_and(|owner| owner == OWNER_LABEL.1)
        });
        if ours {
            apply.push(crd);
        } else {
            foreign.push(name);
        }
    }
    Ok((apply, foreign))
}

/// The schema as Knative means it: no defaults the API server would write into stored objects
/// (Knative defaults in its webhook, and sluice when it reads), and no Rust documentation.
fn tidy(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    value["metadata"]["labels"] = serde_json::json!({ OWNER_LABEL.0: OWNER_LABEL.1 });
    for version in value["spec"]["versions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        strip(&mut version["schema"]["openAPIV3Schema"]);
    }
    serde_json::from_value(value).expect("a tidied CRD is still a CRD")
}

fn strip(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(fields) => {
            fields.remove("default");
            fields.remove("description");
            fields.values_mut().for_each(strip);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_are_knatives_kinds_with_a_status_subresource_and_no_defaults() {
        let crds = crds();
        let names: Vec<_> = crds
            .iter()
            .map(|crd| crd.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "ingresses.networking.internal.knative.dev",
                "clusteringresses.networking.internal.knative.dev",
                "routes.serving.knative.dev",
                "configurations.serving.knative.dev",
            ]
        );
        assert_eq!(crds[0].spec.scope, "Namespaced");
        assert_eq!(crds[1].spec.scope, "Cluster");
        for crd in &crds[..2] {
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            assert!(version.subresources.as_ref().unwrap().status.is_some());
            let schema = serde_json::to_string(&version.schema).unwrap();
            assert!(!schema.contains("\"default\""), "{schema}");
            assert!(schema.contains("x-kubernetes-int-or-string"), "{schema}");
        }
        for crd in &crds[2..] {
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1");
            assert_eq!(crd.spec.scope, "Namespaced");
            assert!(version.subresources.as_ref().unwrap().status.is_some());
        }
        let route = serde_json::to_string(&crds[2].spec.versions[0].schema).unwrap();
        assert!(
            route.contains("revisionName") && !route.contains("\"name\":{"),
            "v1 has no per-target name: {route}"
        );
        let configuration = serde_json::to_string(&crds[3].spec.versions[0].schema).unwrap();
        assert!(
            configuration.contains("x-kubernetes-preserve-unknown-fields"),
            "{configuration}"
        );
    }
}
