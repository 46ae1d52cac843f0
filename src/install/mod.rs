//! What `sluice install` puts in a cluster: the Knative ingress CRDs and Serving's Route and
//! Configuration CRDs, generated from sluice's own types; printed as YAML, or applied with
//! server-side apply.

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

/// The schema as Knative means it: no defaults the API server would write into stored objects
/// (Knative defaults in its webhook, and sluice when it reads), and no Rust documentation.
fn tidy(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
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
