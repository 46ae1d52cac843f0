//! The listeners: external and internal HTTP, and HTTPS beside them once an ingress has TLS,
//! each routing by scope (host, listener kind).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::common::mutation_rules::v3::{
    HeaderMutation as MutationRule, header_mutation::Action as MutationAction,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, TypedExtensionConfig, data_source::Specifier, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    AdditionalAddress, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter,
    listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, ScopedRds, ScopedRoutes,
    http_connection_manager::{
        CodecType, RouteSpecifier, ServerHeaderTransformation, UpgradeConfig,
    },
    http_filter::ConfigType,
    scoped_routes::{
        ConfigSpecifier, ScopeKeyBuilder,
        scope_key_builder::{
            FragmentBuilder,
            fragment_builder::{HeaderValueExtractor, Type, header_value_extractor::ExtractType},
        },
    },
};
use envoy_types::pb::envoy::extensions::http::early_header_mutation::header_mutation::v3::HeaderMutation;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, TlsParameters,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::google::protobuf::BoolValue;

use crate::options::{GatewayOptions, TlsVersion};
use crate::translate::clusters::{ads, socket_address};
use crate::translate::gateway;
use crate::translate::routes::{LISTENER_HEADER, ListenerKind, set_header};
use crate::translate::{TranslateConfig, pack};

pub fn listener_name(kind: ListenerKind) -> &'static str {
    match kind {
        ListenerKind::External => "external-http",
        ListenerKind::Internal => "internal-http",
        ListenerKind::ExternalTls => "external-https",
        ListenerKind::InternalTls => "internal-https",
    }
}

pub(crate) fn port(config: &TranslateConfig, kind: ListenerKind) -> u16 {
    match kind {
        ListenerKind::External => config.http_port,
        ListenerKind::Internal => config.internal_http_port,
        ListenerKind::ExternalTls => config.https_port,
        ListenerKind::InternalTls => config.internal_https_port,
    }
}

fn header_fragment(name: &str, separator: &str) -> FragmentBuilder {
    FragmentBuilder {
        r#type: Some(Type::HeaderValueExtractor(HeaderValueExtractor {
            name: name.to_owned(),
            element_separator: separator.to_owned(),
            extract_type: Some(ExtractType::Index(0)),
        })),
    }
}

/// Host names are case-insensitive, but a scope key matches exactly: the host is lowercased
/// (as the translator lowercases ingress hosts) and the route looked up again. Requests with a
/// lowercase host, the usual case, pay one pattern match.
const LOWERCASE_AUTHORITY: &str = r#"function envoy_on_request(request)
  local authority = request:headers():get(":authority")
  if authority ~= nil and string.find(authority, "%u") then
    request:headers():replace(":authority", string.lower(authority))
  end
end
"#;

fn lowercase_authority() -> HttpFilter {
    let lua = Lua {
        default_source_code: Some(DataSource {
            specifier: Some(Specifier::InlineString(LOWERCASE_AUTHORITY.to_owned())),
            ..Default::default()
        }),
        clear_route_cache: Some(BoolValue { value: true }),
        ..Default::default()
    };
    HttpFilter {
        name: "envoy.filters.http.lua".to_owned(),
        config_type: Some(ConfigType::TypedConfig(pack(&lua))),
        ..Default::default()
    }
}

fn connection_manager(kind: ListenerKind, options: &GatewayOptions) -> HttpConnectionManager {
    // The listener says which it is in a header the client cannot forge (it is overwritten
    // before routing); scopes are keyed on it so that one Envoy can hold both listeners while
    // ClusterLocal hosts stay unreachable from outside.
    let mark_listener = HeaderMutation {
        mutations: vec![MutationRule {
            action: Some(MutationAction::Append(set_header(
                LISTENER_HEADER,
                kind.as_str(),
            ))),
        }],
    };
    HttpConnectionManager {
        stat_prefix: listener_name(kind).to_owned(),
        codec_type: CodecType::Auto as i32,
        early_header_mutation_extensions: vec![TypedExtensionConfig {
            name: "envoy.http.early_header_mutation.header_mutation".to_owned(),
            typed_config: Some(pack(&mark_listener)),
        }],
        route_specifier: Some(RouteSpecifier::ScopedRoutes(ScopedRoutes {
            name: "sluice".to_owned(),
            scope_key_builder: Some(ScopeKeyBuilder {
                fragments: vec![
                    // The host without its port: `host` and `host:*` select the same scope.
                    header_fragment(":authority", ":"),
                    header_fragment(LISTENER_HEADER, ""),
                ],
            }),
            rds_config_source: Some(ads()),
            config_specifier: Some(ConfigSpecifier::ScopedRds(ScopedRds {
                scoped_rds_config_source: Some(ads()),
                srds_resources_locator: String::new(),
            })),
        })),
        http_filters: [lowercase_authority()]
            .into_iter()
            .chain(options.ext_authz.as_ref().map(gateway::ext_authz_filter))
            .chain([HttpFilter {
                name: "envoy.filters.http.router".to_owned(),
                config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
                ..Default::default()
            }])
            .collect(),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        use_remote_address: Some(BoolValue {
            value: options.use_remote_address,
        }),
        xff_num_trusted_hops: options.trusted_hops,
        server_header_transformation: if options.server_header {
            ServerHeaderTransformation::Overwrite
        } else {
            ServerHeaderTransformation::PassThrough
        } as i32,
        // Zero turns Envoy's 5-minute default off: Knative's requests may be idle for long.
        stream_idle_timeout: Some(gateway::duration(options.stream_idle_timeout)),
        access_log: gateway::access_log(options),
        generate_request_id: options.tracing.as_ref().map(|_| BoolValue { value: true }),
        tracing: options.tracing.as_ref().map(gateway::tracing),
        ..Default::default()
    }
}

fn connection_manager_filter(kind: ListenerKind, options: &GatewayOptions) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(&connection_manager(
            kind, options,
        )))),
    }
}

/// A listener of `kind` on every listen address, with no filter chain yet.
fn bound_listener(
    config: &TranslateConfig,
    options: &GatewayOptions,
    kind: ListenerKind,
) -> Listener {
    let port = u32::from(port(config, kind));
    let addresses: Vec<String> = match &options.listen_addresses {
        Some(addresses) => addresses.iter().map(ToString::to_string).collect(),
        None => vec![config.listen_address.clone()],
    };
    let mut addresses = addresses
        .into_iter()
        .map(|address| socket_address(&address, port));
    // A load balancer's PROXY header reaches the external proxies only.
    let proxy_protocol = (options.proxy_protocol && kind.is_external()).then(|| ListenerFilter {
        name: "envoy.filters.listener.proxy_protocol".to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
            &ProxyProtocol::default(),
        ))),
        ..Default::default()
    });
    Listener {
        name: listener_name(kind).to_owned(),
        address: addresses.next(),
        additional_addresses: addresses
            .map(|address| AdditionalAddress {
                address: Some(address),
                ..Default::default()
            })
            .collect(),
        listener_filters: proxy_protocol.into_iter().collect(),
        ..Default::default()
    }
}

pub fn http_listener(
    config: &TranslateConfig,
    options: &GatewayOptions,
    kind: ListenerKind,
) -> Listener {
    Listener {
        filter_chains: vec![FilterChain {
            filters: vec![connection_manager_filter(kind, options)],
            ..Default::default()
        }],
        ..bound_listener(config, options, kind)
    }
}

fn tls_context(secret: &str, options: &GatewayOptions, kind: ListenerKind) -> TransportSocket {
    // The TLS policy options are the external listener's, as in Kourier.
    let (minimum, ciphers) = if kind.is_external() {
        (options.tls_minimum_version, options.cipher_suites.clone())
    } else {
        (TlsVersion::Tls12, Vec::new())
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: match minimum {
                    TlsVersion::Tls12 => TlsProtocol::TlSv12,
                    TlsVersion::Tls13 => TlsProtocol::TlSv13,
                } as i32,
                cipher_suites: ciphers,
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: secret.to_owned(),
                sds_config: Some(ads()),
            }],
            alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    }
}

/// An HTTPS listener with one SNI filter chain per secret (by SDS name), serving its hosts,
/// and, with `default_certificate`, a chain for every other server name that serves it and
/// routes as the plain listener of the same visibility does.
pub fn https_listener(
    config: &TranslateConfig,
    options: &GatewayOptions,
    kind: ListenerKind,
    chains: &BTreeMap<String, BTreeSet<String>>,
    default_certificate: Option<&str>,
) -> Listener {
    let mut listener = bound_listener(config, options, kind);
    listener.listener_filters.push(ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    });
    Listener {
        filter_chains: chains
            .iter()
            .map(|(secret, hosts)| FilterChain {
                name: secret.clone(),
                filter_chain_match: Some(FilterChainMatch {
                    server_names: hosts.iter().cloned().collect(),
                    ..Default::default()
                }),
                transport_socket: Some(tls_context(secret, options, kind)),
                filters: vec![connection_manager_filter(kind, options)],
                ..Default::default()
            })
            .chain(default_certificate.map(|secret| {
                let plain = if kind.is_external() {
                    ListenerKind::External
                } else {
                    ListenerKind::Internal
                };
                FilterChain {
                    name: secret.to_owned(),
                    transport_socket: Some(tls_context(secret, options, kind)),
                    filters: vec![connection_manager_filter(plain, options)],
                    ..Default::default()
                }
            }))
            .collect(),
        ..listener
    }
}
