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
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, ScopedRds, ScopedRoutes,
    http_connection_manager::{CodecType, RouteSpecifier, UpgradeConfig},
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

use crate::translate::clusters::{ads, socket_address};
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

fn connection_manager(kind: ListenerKind) -> HttpConnectionManager {
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
        http_filters: vec![
            lowercase_authority(),
            HttpFilter {
                name: "envoy.filters.http.router".to_owned(),
                config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
                ..Default::default()
            },
        ],
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        use_remote_address: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

fn connection_manager_filter(kind: ListenerKind) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(&connection_manager(
            kind,
        )))),
    }
}

pub fn http_listener(config: &TranslateConfig, kind: ListenerKind) -> Listener {
    Listener {
        name: listener_name(kind).to_owned(),
        address: Some(socket_address(
            &config.listen_address,
            u32::from(port(config, kind)),
        )),
        filter_chains: vec![FilterChain {
            filters: vec![connection_manager_filter(kind)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tls_context(secret: &str) -> TransportSocket {
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
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

/// An HTTPS listener with one SNI filter chain per secret (by SDS name), serving its hosts.
pub fn https_listener(
    config: &TranslateConfig,
    kind: ListenerKind,
    chains: &BTreeMap<String, BTreeSet<String>>,
) -> Listener {
    Listener {
        name: listener_name(kind).to_owned(),
        address: Some(socket_address(
            &config.listen_address,
            u32::from(port(config, kind)),
        )),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_owned(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        filter_chains: chains
            .iter()
            .map(|(secret, hosts)| FilterChain {
                name: secret.clone(),
                filter_chain_match: Some(FilterChainMatch {
                    server_names: hosts.iter().cloned().collect(),
                    ..Default::default()
                }),
                transport_socket: Some(tls_context(secret)),
                filters: vec![connection_manager_filter(kind)],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
