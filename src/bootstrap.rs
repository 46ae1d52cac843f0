//! The Envoy bootstrap that points a stock Envoy at sluice: ADS over gRPC, LDS and CDS from ADS.

use std::fmt::Write;

/// What goes into a bootstrap.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// `host:port` of sluice's xDS server.
    pub xds_addr: String,
    pub node_id: String,
    /// `node.metadata.role`, e.g. `gloo-system~knative-external-proxy`.
    pub role: Option<String>,
    /// `host:port` of Envoy's own admin interface.
    pub admin_addr: String,
    /// Delta (incremental) xDS instead of state-of-the-world.
    pub delta: bool,
    /// Reach sluice over TLS; plain gRPC when `None`.
    pub tls: Option<BootstrapTls>,
    /// Create every cluster's traffic stats with the cluster, as Envoy does by default, instead
    /// of on first use.
    pub eager_stats: bool,
}

/// TLS to sluice's xDS port, as paths of PEM files Envoy reads when it starts: the bootstrap
/// never holds a key.
#[derive(Debug, Clone)]
pub struct BootstrapTls {
    /// The CA that signed sluice's certificate.
    pub ca: String,
    /// Envoy's client certificate and key, for mutual TLS.
    pub client: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{what} {value:?} is not HOST:PORT (for example 127.0.0.1:9977)")]
    BadAddress { what: &'static str, value: String },
}

fn split_addr(what: &'static str, value: &str) -> Result<(String, u16), BootstrapError> {
    let bad = || BootstrapError::BadAddress {
        what,
        value: value.to_owned(),
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// YAML double-quoted scalar: JSON string syntax is valid YAML.
fn quoted(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

/// Renders the bootstrap as YAML.
pub fn render(config: &BootstrapConfig) -> Result<String, BootstrapError> {
    let (xds_host, xds_port) = split_addr("--xds-addr", &config.xds_addr)?;
    let (admin_host, admin_port) = split_addr("--admin-addr", &config.admin_addr)?;
    let api_type = if config.delta { "DELTA_GRPC" } else { "GRPC" };
    let discovery = if xds_host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    // Envoy retries a lost xDS stream after a jittered, doubling back-off: by default from
    // 500 ms up to 30 s, so after a few short outages in a row it came back long after sluice
    // did. Bounded, it is back within about a second (base and cap: EnvoyGrpc.retry_policy).
    let (backoff_base, backoff_max) = ("0.25s", "1s");
    let mut yaml = String::new();
    let _ = writeln!(yaml, "node:");
    let _ = writeln!(yaml, "  id: {}", quoted(&config.node_id));
    let _ = writeln!(yaml, "  cluster: sluice");
    if let Some(role) = &config.role {
        let _ = writeln!(yaml, "  metadata:\n    role: {}", quoted(role));
    }
    let _ = write!(
        yaml,
        r#"admin:
  address:
    socket_address: {{address: {admin_host}, port_value: {admin_port}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc:
        cluster_name: sluice-xds
        retry_policy:
          retry_back_off: {{base_interval: {backoff_base}, max_interval: {backoff_max}}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: sluice-xds
    type: {discovery}
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            connection_keepalive: {{interval: 30s, timeout: 5s}}
    load_assignment:
      cluster_name: sluice-xds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {xds_host}, port_value: {xds_port}}}
"#
    );
    if let Some(tls) = &config.tls {
        yaml.push_str(&transport_socket(tls, &xds_host));
    }
    if !config.eager_stats {
        // Most of a cluster's ~110 stats count its traffic, and most Knative revisions are idle
        // or scaled to zero: at 5,000 clusters they were a third of Envoy's heap. Created on a
        // cluster's first request instead, every stat that is ever touched still exists.
        yaml.push_str("deferred_stat_options: {enable_deferred_creation_stats: true}\n");
    }
    Ok(yaml)
}

/// The sluice-xds cluster's TLS: sluice's certificate must chain to the CA and name the host
/// Envoy dials (as a DNS name or an IP address).
fn transport_socket(tls: &BootstrapTls, xds_host: &str) -> String {
    let (san_type, sni) = if xds_host.parse::<std::net::IpAddr>().is_ok() {
        ("IP_ADDRESS", String::new())
    } else {
        ("DNS", format!("\n        sni: {}", quoted(xds_host)))
    };
    let mut yaml = format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext{sni}
        common_tls_context:
          alpn_protocols: [h2]
          validation_context:
            trusted_ca: {{filename: {ca}}}
            match_typed_subject_alt_names:
            - san_type: {san_type}
              matcher: {{exact: {host}}}
"#,
        ca = quoted(&tls.ca),
        host = quoted(xds_host),
    );
    if let Some((certificate, key)) = &tls.client {
        let _ = write!(
            yaml,
            r#"          tls_certificates:
          - certificate_chain: {{filename: {}}}
            private_key: {{filename: {}}}
"#,
            quoted(certificate),
            quoted(key)
        );
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(delta: bool) -> BootstrapConfig {
        BootstrapConfig {
            xds_addr: "127.0.0.1:9977".into(),
            node_id: "envoy-1".into(),
            role: Some("gloo-system~knative-external-proxy".into()),
            admin_addr: "127.0.0.1:19000".into(),
            delta,
            tls: None,
            eager_stats: false,
        }
    }

    #[test]
    fn tls_names_files_and_checks_the_servers_name() {
        let mut tls = config(false);
        tls.xds_addr = "sluice.gloo-system:9977".into();
        tls.tls = Some(BootstrapTls {
            ca: "/etc/sluice/ca.crt".into(),
            client: Some(("/etc/sluice/tls.crt".into(), "/etc/sluice/tls.key".into())),
        });
        let parsed: serde_json::Value = serde_saphyr::from_str(&render(&tls).unwrap()).unwrap();
        let socket = &parsed["static_resources"]["clusters"][0]["transport_socket"];
        let context = &socket["typed_config"];
        assert_eq!(context["sni"], "sluice.gloo-system");
        let common = &context["common_tls_context"];
        assert_eq!(
            common["validation_context"]["trusted_ca"]["filename"],
            "/etc/sluice/ca.crt"
        );
        let san = &common["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(
            (san["san_type"].as_str(), san["matcher"]["exact"].as_str()),
            (Some("DNS"), Some("sluice.gloo-system"))
        );
        assert_eq!(
            common["tls_certificates"][0]["private_key"]["filename"],
            "/etc/sluice/tls.key"
        );
        assert!(
            render(&config(false))
                .unwrap()
                .find("transport_socket")
                .is_none()
        );
    }

    #[test]
    fn bootstrap_is_yaml_with_ads_and_the_role() {
        let yaml = render(&config(false)).unwrap();
        let parsed: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            parsed["node"]["metadata"]["role"],
            "gloo-system~knative-external-proxy"
        );
        assert_eq!(
            parsed["dynamic_resources"]["ads_config"]["api_type"],
            "GRPC"
        );
        let backoff = &parsed["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
            ["retry_policy"]["retry_back_off"];
        assert_eq!(
            backoff["max_interval"], "1s",
            "reconnects within about a second"
        );
        let endpoint = &parsed["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]
            [0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
        assert_eq!(endpoint["port_value"], 9977);
        let delta: serde_json::Value =
            serde_saphyr::from_str(&render(&config(true)).unwrap()).unwrap();
        assert_eq!(
            delta["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
    }

    #[test]
    fn traffic_stats_are_deferred_unless_eager() {
        let deferred: serde_json::Value =
            serde_saphyr::from_str(&render(&config(true)).unwrap()).unwrap();
        assert_eq!(
            deferred["deferred_stat_options"]["enable_deferred_creation_stats"],
            true
        );
        let eager: serde_json::Value = serde_saphyr::from_str(
            &render(&BootstrapConfig {
                eager_stats: true,
                ..config(true)
            })
            .unwrap(),
        )
        .unwrap();
        assert!(eager.get("deferred_stat_options").is_none(), "{eager}");
    }

    #[test]
    fn a_bad_address_is_named() {
        let error = render(&BootstrapConfig {
            tls: None,
            xds_addr: "localhost".into(),
            ..config(false)
        })
        .unwrap_err();
        assert!(error.to_string().contains("--xds-addr \"localhost\""));
    }
}
