//! What the gateway options add to the listeners: the access log, the external authorization
//! filter, the tracer, and the clusters of the services those two call.

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily},
};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, DataSource, GrpcService, HeaderValue, HttpService as CoreHttpService, HttpUri,
    SubstitutionFormatString, TransportSocket, TypedExtensionConfig,
    data_source::Specifier,
    grpc_service::{EnvoyGrpc, TargetSpecifier},
    http_uri::HttpUpstreamType,
    substitution_format_string::Format,
    transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::trace::v3::{
    OpenTelemetryConfig,
    tracing::{Http as TracerHttp, http::ConfigType as TracerConfigType},
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StdoutAccessLog, stdout_access_log::AccessLogFormat,
};
use envoy_types::pb::envoy::extensions::common::matching::v3::ExtensionWithMatcher;
use envoy_types::pb::envoy::extensions::filters::common::matcher::action::v3::SkipFilter;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    AuthorizationRequest, BufferSettings, ExtAuthz as ExtAuthzFilter,
    HttpService as AuthzHttpService, ext_authz::Services,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_connection_manager::Tracing as HcmTracing, http_filter::ConfigType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig as XdsExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::{
    Matcher, StringMatcher,
    matcher::{
        MatcherList, MatcherType, OnMatch,
        matcher_list::{
            FieldMatcher, Predicate,
            predicate::{MatchType, SinglePredicate, single_predicate},
        },
        on_match,
    },
    string_matcher::MatchPattern,
};

use crate::options::{AuthzProtocol, ExtAuthz, GatewayOptions, Tracing, TracingProtocol};
use crate::translate::clusters::{h2_options, socket_address};
use crate::translate::pack;

/// The cluster of the external authorization service. Backend clusters are always named
/// `<namespace>/<service>:<port>`, so this name cannot collide with one.
pub const EXT_AUTHZ_CLUSTER: &str = "ext-authz";
/// The cluster of the OTLP collector.
pub const TRACING_CLUSTER: &str = "otel-collector";

/// Knative's probe requests carry `K-Network-Probe: probe`; Knative's own proxies answer them
/// before the revision's container sees them, so they never need authorizing.
const PROBE_HEADER: &str = "k-network-probe";
const PROBE_VALUE: &str = "probe";

pub(crate) fn duration(value: StdDuration) -> Duration {
    Duration {
        seconds: value.as_secs() as i64,
        nanos: value.subsec_nanos() as i32,
    }
}

/// The access log, to Envoy's stdout, when it is on.
pub fn access_log(options: &GatewayOptions) -> Vec<AccessLog> {
    let Some(format) = &options.access_log else {
        return Vec::new();
    };
    let stdout = StdoutAccessLog {
        access_log_format: Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(Format::TextFormatSource(DataSource {
                specifier: Some(Specifier::InlineString(format.clone())),
                ..Default::default()
            })),
            ..Default::default()
        })),
    };
    vec![AccessLog {
        name: "envoy.access_loggers.stdout".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack(&stdout))),
        ..Default::default()
    }]
}

/// The external authorization filter, skipped for Knative's probe requests: a matcher on the
/// probe header, so no route needs a per-route override.
pub fn ext_authz_filter(authz: &ExtAuthz) -> HttpFilter {
    let services = match authz.protocol {
        AuthzProtocol::Grpc => Services::GrpcService(GrpcService {
            timeout: Some(duration(authz.timeout)),
            initial_metadata: vec![client_header()],
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: EXT_AUTHZ_CLUSTER.to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        AuthzProtocol::Http | AuthzProtocol::Https => Services::HttpService(AuthzHttpService {
            server_uri: Some(HttpUri {
                uri: format!(
                    "{}://{}",
                    if authz.protocol == AuthzProtocol::Https {
                        "https"
                    } else {
                        "http"
                    },
                    host_port(&authz.host, authz.port)
                ),
                timeout: Some(duration(authz.timeout)),
                http_upstream_type: Some(HttpUpstreamType::Cluster(EXT_AUTHZ_CLUSTER.to_owned())),
            }),
            path_prefix: authz.path_prefix.clone(),
            authorization_request: Some(AuthorizationRequest {
                headers_to_add: vec![client_header()],
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let filter = ExtAuthzFilter {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: authz.failure_mode_allow,
        with_request_body: Some(BufferSettings {
            max_request_bytes: authz.max_request_bytes,
            allow_partial_message: true,
            pack_as_bytes: authz.pack_as_bytes,
        }),
        services: Some(services),
        ..Default::default()
    };
    let skip_probes = Matcher {
        matcher_type: Some(MatcherType::MatcherList(MatcherList {
            matchers: vec![FieldMatcher {
                predicate: Some(Predicate {
                    match_type: Some(MatchType::SinglePredicate(SinglePredicate {
                        input: Some(XdsExtensionConfig {
                            name: "request-headers".to_owned(),
                            typed_config: Some(pack(&HttpRequestHeaderMatchInput {
                                header_name: PROBE_HEADER.to_owned(),
                            })),
                        }),
                        matcher: Some(single_predicate::Matcher::ValueMatch(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(PROBE_VALUE.to_owned())),
                            ..Default::default()
                        })),
                    })),
                }),
                on_match: Some(OnMatch {
                    on_match: Some(on_match::OnMatch::Action(XdsExtensionConfig {
                        name: "skip".to_owned(),
                        typed_config: Some(pack(&SkipFilter {})),
                    })),
                    ..Default::default()
                }),
            }],
        })),
        ..Default::default()
    };
    let wrapped = ExtensionWithMatcher {
        xds_matcher: Some(skip_probes),
        extension_config: Some(TypedExtensionConfig {
            name: "envoy.filters.http.ext_authz".to_owned(),
            typed_config: Some(pack(&filter)),
        }),
        ..Default::default()
    };
    HttpFilter {
        name: "envoy.filters.http.ext_authz".to_owned(),
        config_type: Some(ConfigType::TypedConfig(pack(&wrapped))),
        ..Default::default()
    }
}

/// Tells the authorization service who asks, as Kourier does (`client: kourier`).
fn client_header() -> HeaderValue {
    HeaderValue {
        key: "client".to_owned(),
        value: "sluice".to_owned(),
        ..Default::default()
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The OpenTelemetry tracer of every connection manager.
pub fn tracing(tracing: &Tracing) -> HcmTracing {
    let mut config = OpenTelemetryConfig {
        service_name: tracing.service_name.clone(),
        ..Default::default()
    };
    match tracing.protocol {
        TracingProtocol::Grpc => {
            config.grpc_service = Some(GrpcService {
                timeout: Some(duration(StdDuration::from_millis(250))),
                target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: TRACING_CLUSTER.to_owned(),
                    ..Default::default()
                })),
                ..Default::default()
            });
        }
        TracingProtocol::HttpProtobuf => {
            config.http_service = Some(CoreHttpService {
                http_uri: Some(HttpUri {
                    uri: tracing.endpoint.clone(),
                    timeout: Some(duration(StdDuration::from_secs(5))),
                    http_upstream_type: Some(HttpUpstreamType::Cluster(TRACING_CLUSTER.to_owned())),
                }),
                ..Default::default()
            });
        }
    }
    HcmTracing {
        overall_sampling: Some(Percent {
            value: tracing.sampling_percent,
        }),
        provider: Some(TracerHttp {
            name: "envoy.tracers.opentelemetry".to_owned(),
            config_type: Some(TracerConfigType::TypedConfig(pack(&config))),
        }),
        ..Default::default()
    }
}

/// A cluster of one `host:port`, resolved by DNS (an IP address resolves to itself).
fn service_cluster(name: &str, host: &str, port: u16, http2: bool) -> Cluster {
    let mut cluster = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(duration(StdDuration::from_secs(5))),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(host, u32::from(port))),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    if http2 {
        cluster.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            h2_options(),
        );
    }
    cluster
}

/// The authorization service's cluster: HTTP/2 for gRPC, TLS for `https`.
pub fn ext_authz_cluster(authz: &ExtAuthz) -> Cluster {
    let mut cluster = service_cluster(
        EXT_AUTHZ_CLUSTER,
        &authz.host,
        authz.port,
        authz.protocol == AuthzProtocol::Grpc,
    );
    if authz.protocol == AuthzProtocol::Https {
        let context = UpstreamTlsContext {
            sni: authz.host.clone(),
            ..Default::default()
        };
        cluster.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".to_owned(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
        });
    }
    cluster
}

/// The OTLP collector's cluster: HTTP/2 for gRPC.
pub fn tracing_cluster(tracing: &Tracing) -> Cluster {
    service_cluster(
        TRACING_CLUSTER,
        &tracing.host,
        tracing.port,
        tracing.protocol == TracingProtocol::Grpc,
    )
}
