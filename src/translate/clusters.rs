//! From a backend (a Service port named by an ingress split) to an Envoy `Cluster` and, for
//! in-cluster services, the `ClusterLoadAssignment` that EDS delivers.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, EdsClusterConfig},
};
use envoy_types::pb::envoy::config::core::v3::{Address, TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions, SocketAddress,
    address::Address as AddressKind, config_source::ConfigSourceSpecifier,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CertificateValidationContext;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    },
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{Any, Duration};
use k8s_openapi::api::core::v1::{Service, ServicePort as K8sServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::knative::ServicePort;
use crate::translate::pack;
use crate::translate::routes::ClusterKey;
use crate::world::World;

const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";
const CONNECT_TIMEOUT: Duration = Duration {
    seconds: 5,
    nanos: 0,
};

/// The port of `service` that `port` names, by number or by name.
fn service_port<'a>(service: &'a Service, port: &ServicePort) -> Option<&'a K8sServicePort> {
    let ports = service.spec.as_ref()?.ports.as_ref()?;
    ports.iter().find(|candidate| match port {
        ServicePort::Number(number) => candidate.port == *number,
        ServicePort::Name(name) => candidate.name.as_deref() == Some(name.as_str()),
    })
}

/// Knative's revisions serve system-internal TLS on the port it names `https` (443).
const HTTPS_PORT_NAME: &str = "https";
const HTTPS_PORT: i32 = 443;

/// Whether a backend port speaks TLS: its Service port is Knative's HTTPS port, by name or
/// number (or, with no such Service yet, the ingress names it so).
fn speaks_tls(key: &ClusterKey, port: Option<&K8sServicePort>) -> bool {
    match port {
        Some(port) => {
            port.name.as_deref() == Some(HTTPS_PORT_NAME)
                || port.port == HTTPS_PORT
                || matches!(
                    port.app_protocol.as_deref(),
                    Some("https" | "kubernetes.io/https")
                )
        }
        None => match key.port() {
            ServicePort::Number(number) => *number == HTTPS_PORT,
            ServicePort::Name(name) => name == HTTPS_PORT_NAME,
        },
    }
}

/// TLS to a revision, verified against Knative's CA (by SDS, so a rotation changes no
/// cluster) and the names Knative's certificates carry: `kn-routing` (the activator) and
/// `kn-user-<namespace>` (the queue-proxy of a revision in that namespace).
fn upstream_tls(ca_secret: &str, namespace: &str) -> TransportSocket {
    let dns = |name: String| SubjectAltNameMatcher {
        san_type: SanType::Dns as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(name)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            // Knative's own data plane speaks TLS 1.3 only.
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![
                            dns("kn-routing".to_owned()),
                            dns(format!("kn-user-{}", namespace.to_ascii_lowercase())),
                        ],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(SdsSecretConfig {
                        name: ca_secret.to_owned(),
                        sds_config: Some(ads()),
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

fn speaks_h2c(port: &K8sServicePort) -> bool {
    matches!(port.name.as_deref(), Some("http2" | "h2c"))
        || port.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL)
}

pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub(crate) fn socket_address(host: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn load_assignment(name: &str, addresses: &BTreeSet<(String, u32)>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: addresses
                .iter()
                .map(|(host, port)| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(host, *port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(crate) fn h2_options() -> Any {
    pack(&HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    })
}

/// A backend cluster, and its endpoints when EDS delivers them (not for `ExternalName`).
pub struct Backend {
    pub cluster: Cluster,
    pub endpoints: Option<ClusterLoadAssignment>,
}

/// Builds the cluster for `key`. A missing Service or port gives a cluster without endpoints:
/// requests get 503 until the Service appears, and nothing else is affected. With
/// `upstream_ca` (the SDS name of Knative's CA), a backend on Knative's HTTPS port is spoken
/// to over TLS.
pub fn backend(key: &ClusterKey, world: &World, upstream_ca: Option<&str>) -> Backend {
    let name = key.name();
    let service = world.services.get(key.service());
    let port = service.and_then(|service| service_port(service, key.port()));
    let mut cluster = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(CONNECT_TIMEOUT),
        ..Default::default()
    };
    if let Some(ca) = upstream_ca
        && speaks_tls(key, port)
    {
        cluster.transport_socket = Some(upstream_tls(ca, &key.service().namespace));
    }
    if port.is_some_and(speaks_h2c) {
        cluster.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            h2_options(),
        );
    }
    let spec = service.and_then(|service| service.spec.as_ref());
    if let (Some(spec), Some(port)) = (spec, port)
        && spec.type_.as_deref() == Some("ExternalName")
    {
        let external_name = spec.external_name.clone().unwrap_or_default();
        let addresses = BTreeSet::from([(external_name, port.port as u32)]);
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
        cluster.dns_lookup_family = DnsLookupFamily::V4Preferred as i32;
        cluster.load_assignment = Some(load_assignment(name, &addresses));
        return Backend {
            cluster,
            endpoints: None,
        };
    }
    cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
    cluster.eds_cluster_config = Some(EdsClusterConfig {
        eds_config: Some(ads()),
        service_name: String::new(),
    });
    let addresses = port
        .map(|port| ready_addresses(world, key, port))
        .unwrap_or_default();
    Backend {
        cluster,
        endpoints: Some(load_assignment(name, &addresses)),
    }
}

/// The ready addresses of a service port, from its EndpointSlices if it has any, else from its
/// Endpoints. Endpoint ports carry the Service port's name, which is how they are matched.
fn ready_addresses(
    world: &World,
    key: &ClusterKey,
    port: &K8sServicePort,
) -> BTreeSet<(String, u32)> {
    let service = key.service();
    let wanted = port.name.as_deref().unwrap_or_default();
    let fallback = match &port.target_port {
        Some(IntOrString::Int(number)) => Some(*number),
        Some(IntOrString::String(_)) => None,
        None => Some(port.port),
    };
    let pick = |ports: &[(Option<&str>, Option<i32>)]| -> Option<u32> {
        ports
            .iter()
            .find(|(name, _)| name.unwrap_or_default() == wanted)
            .and_then(|(_, number)| *number)
            .or(if ports.len() == 1 { ports[0].1 } else { None })
            .or(fallback)
            .and_then(|number| u32::try_from(number).ok())
    };
    let mut addresses = BTreeSet::new();
    let mut slices = world.slices_of(service).peekable();
    if slices.peek().is_some() {
        for slice in slices {
            let ports: Vec<_> = slice
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.as_deref(), p.port))
                .collect();
            let Some(number) = pick(&ports) else { continue };
            for endpoint in &slice.endpoints {
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if ready {
                    addresses.extend(endpoint.addresses.iter().map(|a| (a.clone(), number)));
                }
            }
        }
        return addresses;
    }
    if let Some(endpoints) = world.endpoints.get(service) {
        for subset in endpoints.subsets.iter().flatten() {
            let ports: Vec<_> = subset
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.as_deref(), Some(p.port)))
                .collect();
            let Some(number) = pick(&ports) else { continue };
            for address in subset.addresses.iter().flatten() {
                addresses.insert((address.ip.clone(), number));
            }
        }
    }
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{Object, SourceEvent};

    fn world(manifests: &str) -> World {
        let mut world = World::new("test");
        let events = manifests.split("---").map(|doc| {
            let value: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
            let object = match value["kind"].as_str().unwrap() {
                "Service" => Object::Service(Box::new(serde_json::from_value(value).unwrap())),
                "Endpoints" => Object::Endpoints(Box::new(serde_json::from_value(value).unwrap())),
                "EndpointSlice" => {
                    Object::EndpointSlice(Box::new(serde_json::from_value(value).unwrap()))
                }
                other => panic!("unexpected kind {other}"),
            };
            SourceEvent::Upsert(object)
        });
        world.apply(events);
        world
    }

    fn key(port: ServicePort) -> ClusterKey {
        ClusterKey::new("default", "hello", &port)
    }

    fn addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
        cla.endpoints[0]
            .lb_endpoints
            .iter()
            .map(|e| {
                let Some(HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                    panic!()
                };
                let Some(AddressKind::SocketAddress(socket)) =
                    &endpoint.address.as_ref().unwrap().address
                else {
                    panic!()
                };
                let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
                    panic!()
                };
                format!("{}:{port}", socket.address)
            })
            .collect()
    }

    const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: h2c, port: 81, targetPort: 9090}
"#;

    #[test]
    fn slices_win_over_endpoints_and_only_ready_addresses_count() {
        let world = world(&format!(
            r#"{SERVICE}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: hello, namespace: default}}
subsets:
- addresses: [{{ip: 10.0.0.9}}]
  ports: [{{name: http, port: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello-1
  namespace: default
  labels: {{kubernetes.io/service-name: hello}}
addressType: IPv4
ports: [{{name: http, port: 8080}}, {{name: h2c, port: 9090}}]
endpoints:
- addresses: [10.0.0.2]
- addresses: [10.0.0.1]
  conditions: {{ready: true}}
- addresses: [10.0.0.3]
  conditions: {{ready: false}}
"#
        ));
        let backend = backend(&key(ServicePort::Number(80)), &world, None);
        assert_eq!(
            addresses(&backend.endpoints.unwrap()),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        assert!(backend.cluster.typed_extension_protocol_options.is_empty());
        let h2c = super::backend(&key(ServicePort::Name("h2c".into())), &world, None);
        assert!(!h2c.cluster.typed_extension_protocol_options.is_empty());
        assert_eq!(
            addresses(&h2c.endpoints.unwrap()),
            ["10.0.0.1:9090", "10.0.0.2:9090"]
        );
    }

    #[test]
    fn endpoints_are_used_without_slices() {
        let world = world(&format!(
            r#"{SERVICE}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: hello, namespace: default}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  notReadyAddresses: [{{ip: 127.0.0.2}}]
  ports: [{{name: http, port: 8080}}]
"#
        ));
        let backend = backend(&key(ServicePort::Name("http".into())), &world, None);
        assert_eq!(addresses(&backend.endpoints.unwrap()), ["127.0.0.1:8080"]);
    }

    #[test]
    fn external_name_is_a_dns_cluster_and_missing_service_has_no_endpoints() {
        let world = world(
            r#"
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  type: ExternalName
  externalName: example.org
  ports: [{name: http, port: 80}]
"#,
        );
        let backend = backend(&key(ServicePort::Number(80)), &world, None);
        assert!(backend.endpoints.is_none());
        assert_eq!(
            addresses(backend.cluster.load_assignment.as_ref().unwrap()),
            ["example.org:80"]
        );
        let missing = super::backend(&key(ServicePort::Number(8080)), &world, None);
        assert!(addresses(&missing.endpoints.unwrap()).is_empty());
    }
}
