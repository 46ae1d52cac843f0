//! Gateway options: what an operator sets in the `config-sluice` ConfigMap, under the keys of
//! net-kourier's `config-kourier` (same names, meanings and defaults, so values can be copied
//! over), read into plain values the translator turns into listeners and clusters.
//!
//! Pure: a ConfigMap's data in, [`GatewayOptions`] or the problems out. A ConfigMap with any
//! problem (a key sluice does not know, a value it cannot use) changes nothing: [`Options`]
//! keeps the last good options in force and reports every problem by key.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::world::NsName;

/// The ConfigMap sluice reads its gateway options from, in its own namespace.
pub const CONFIG_MAP: &str = "config-sluice";

/// Envoy's own default access log line, with the upstream cluster added: time, method, path,
/// protocol, status, flags, bytes, duration, upstream service time, client addresses, user
/// agent, request id, host, upstream host and upstream cluster.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \
\"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER%\n";

/// The lowest TLS version the external HTTPS listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// How Envoy talks to the external authorization service (`extauthz-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzProtocol {
    Grpc,
    Http,
    Https,
}

/// Envoy's external authorization filter on the service routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthz {
    pub host: String,
    pub port: u16,
    pub protocol: AuthzProtocol,
    pub failure_mode_allow: bool,
    pub max_request_bytes: u32,
    pub timeout: Duration,
    /// HTTP only: the path prefix of the check request.
    pub path_prefix: String,
    /// gRPC only: the body as raw bytes rather than a UTF-8 string.
    pub pack_as_bytes: bool,
}

/// How spans reach the OTLP collector (`tracing-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracingProtocol {
    Grpc,
    HttpProtobuf,
}

/// Envoy's OpenTelemetry tracer.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The endpoint as written, e.g. `http://otel-collector:4318/v1/traces`.
    pub endpoint: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub protocol: TracingProtocol,
    /// Percent of requests traced, 0 to 100.
    pub sampling_percent: f64,
    pub service_name: String,
}

/// Every option, as the translator uses it. `Default` is what an absent ConfigMap means.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayOptions {
    /// The access log line format; `None` when access logging is off.
    pub access_log: Option<String>,
    pub use_remote_address: bool,
    pub trusted_hops: u32,
    pub proxy_protocol: bool,
    /// OpenSSL cipher names for TLS 1.2 and below; empty: Envoy's defaults.
    pub cipher_suites: Vec<String>,
    pub tls_minimum_version: TlsVersion,
    /// Whether Envoy adds `server: envoy` to responses that have no `server` header.
    pub server_header: bool,
    /// Zero: no stream idle timeout.
    pub stream_idle_timeout: Duration,
    pub ext_authz: Option<ExtAuthz>,
    /// The Secret whose `ca.crt` verifies the revisions when Knative encrypts traffic inside
    /// the cluster.
    pub upstream_ca: Option<NsName>,
    /// The Secret whose `tls.crt`/`tls.key` the internal HTTPS listener serves for every
    /// cluster-local host without a certificate of its own.
    pub cluster_cert: Option<NsName>,
    pub tracing: Option<Tracing>,
    pub cryptomb: bool,
    /// The addresses every listener binds; `None`: `--listen-address`.
    pub listen_addresses: Option<Vec<IpAddr>>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            access_log: Some(DEFAULT_ACCESS_LOG_FORMAT.to_owned()),
            use_remote_address: true,
            trusted_hops: 0,
            proxy_protocol: false,
            cipher_suites: Vec::new(),
            tls_minimum_version: TlsVersion::Tls12,
            server_header: true,
            stream_idle_timeout: Duration::ZERO,
            ext_authz: None,
            upstream_ca: None,
            cluster_cert: None,
            tracing: None,
            cryptomb: false,
            listen_addresses: None,
        }
    }
}

impl GatewayOptions {
    /// What an operator should know about options that are valid but do less than asked.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.cryptomb {
            notes.push(format!(
                "{ENABLE_CRYPTOMB}: true has no effect: CryptoMB needs Envoy's contrib build, and \
                 the stock Envoy sluice configures lacks it; TLS handshakes use BoringSSL as usual"
            ));
        }
        notes
    }
}

/// Why a `config-sluice` ConfigMap cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionProblem {
    #[error(
        "ConfigMap {CONFIG_MAP}: key {key:?} is not a sluice option; remove it or fix its name \
         (README.md lists every key)"
    )]
    UnknownKey { key: String },
    #[error("ConfigMap {CONFIG_MAP}: {key}: {value:?} {reason}")]
    BadValue {
        key: &'static str,
        value: String,
        reason: String,
    },
}

const ENABLE_ACCESS_LOG: &str = "enable-service-access-logging";
const ACCESS_LOG_TEMPLATE: &str = "service-access-log-template";
const USE_REMOTE_ADDRESS: &str = "use-remote-address";
const TRUSTED_HOPS: &str = "trusted-hops-count";
const PROXY_PROTOCOL: &str = "enable-proxy-protocol";
const CIPHER_SUITES: &str = "cipher-suites";
const TLS_MINIMUM_VERSION: &str = "tls-minimum-protocol-version";
const DISABLE_SERVER_HEADER: &str = "disable-envoy-server-header";
const STREAM_IDLE_TIMEOUT: &str = "stream-idle-timeout";
const EXTAUTHZ_HOST: &str = "extauthz-host";
const EXTAUTHZ_PROTOCOL: &str = "extauthz-protocol";
const EXTAUTHZ_FAILURE_MODE_ALLOW: &str = "extauthz-failure-mode-allow";
const EXTAUTHZ_MAX_REQUEST_BYTES: &str = "extauthz-max-request-body-bytes";
const EXTAUTHZ_TIMEOUT: &str = "extauthz-timeout";
const EXTAUTHZ_PATH_PREFIX: &str = "extauthz-path-prefix";
/// Kourier's example ConfigMap spells it `extauthz-pack-as-byte`, its code reads
/// `extauthz-pack-as-bytes`: both are accepted.
const EXTAUTHZ_PACK_AS_BYTES: &str = "extauthz-pack-as-bytes";
const EXTAUTHZ_PACK_AS_BYTE: &str = "extauthz-pack-as-byte";
const CERTS_SECRET_NAME: &str = "certs-secret-name";
const CERTS_SECRET_NAMESPACE: &str = "certs-secret-namespace";
const CLUSTER_CERT_SECRET: &str = "cluster-cert-secret";
const TRACING_ENDPOINT: &str = "tracing-endpoint";
const TRACING_PROTOCOL: &str = "tracing-protocol";
const TRACING_SAMPLING_RATE: &str = "tracing-sampling-rate";
const TRACING_SERVICE_NAME: &str = "tracing-service-name";
const ENABLE_CRYPTOMB: &str = "enable-cryptomb";
const LISTEN_IP_ADDRESSES: &str = "listen-ip-addresses";
/// Knative's ConfigMaps document themselves under this key; it is never configuration.
const EXAMPLE: &str = "_example";

/// Every key sluice reads, in README order.
pub const KEYS: &[&str] = &[
    ENABLE_ACCESS_LOG,
    ACCESS_LOG_TEMPLATE,
    USE_REMOTE_ADDRESS,
    TRUSTED_HOPS,
    PROXY_PROTOCOL,
    CIPHER_SUITES,
    TLS_MINIMUM_VERSION,
    DISABLE_SERVER_HEADER,
    STREAM_IDLE_TIMEOUT,
    EXTAUTHZ_HOST,
    EXTAUTHZ_PROTOCOL,
    EXTAUTHZ_FAILURE_MODE_ALLOW,
    EXTAUTHZ_MAX_REQUEST_BYTES,
    EXTAUTHZ_TIMEOUT,
    EXTAUTHZ_PATH_PREFIX,
    EXTAUTHZ_PACK_AS_BYTES,
    EXTAUTHZ_PACK_AS_BYTE,
    CERTS_SECRET_NAME,
    CERTS_SECRET_NAMESPACE,
    CLUSTER_CERT_SECRET,
    TRACING_ENDPOINT,
    TRACING_PROTOCOL,
    TRACING_SAMPLING_RATE,
    TRACING_SERVICE_NAME,
    ENABLE_CRYPTOMB,
    LISTEN_IP_ADDRESSES,
];

/// The cipher names BoringSSL (and so the stock Envoy) accepts in `cipher_suites`; any other
/// name would make Envoy reject the listener.
pub const KNOWN_CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "PSK-AES128-CBC-SHA",
    "PSK-AES256-CBC-SHA",
    "DES-CBC3-SHA",
];

/// The default `tracing-service-name`.
const DEFAULT_TRACING_SERVICE: &str = "sluice";

/// Reads one ConfigMap's data. `system_namespace` is where `cluster-cert-secret` lives.
pub fn parse(
    data: &BTreeMap<String, String>,
    system_namespace: &str,
) -> Result<GatewayOptions, Vec<OptionProblem>> {
    let mut reader = Reader {
        data,
        problems: Vec::new(),
    };
    for key in data.keys() {
        if key != EXAMPLE && !KEYS.contains(&key.as_str()) {
            reader
                .problems
                .push(OptionProblem::UnknownKey { key: key.clone() });
        }
    }
    let defaults = GatewayOptions::default();
    let access_log =
        reader
            .boolean(ENABLE_ACCESS_LOG, true)
            .then(|| match reader.raw(ACCESS_LOG_TEMPLATE) {
                Some(template) => {
                    reader.check_format(template);
                    // Envoy writes each line as the template says: without a final newline the
                    // lines would run together.
                    if template.ends_with('\n') {
                        template.to_owned()
                    } else {
                        format!("{template}\n")
                    }
                }
                None => DEFAULT_ACCESS_LOG_FORMAT.to_owned(),
            });
    let options = GatewayOptions {
        access_log,
        use_remote_address: reader.boolean(USE_REMOTE_ADDRESS, defaults.use_remote_address),
        trusted_hops: reader.number(TRUSTED_HOPS, 0),
        proxy_protocol: reader.boolean(PROXY_PROTOCOL, false),
        cipher_suites: reader.ciphers(),
        tls_minimum_version: reader.tls_version(),
        server_header: !reader.boolean(DISABLE_SERVER_HEADER, false),
        stream_idle_timeout: reader.duration(STREAM_IDLE_TIMEOUT),
        ext_authz: reader.ext_authz(),
        upstream_ca: reader.upstream_ca(),
        cluster_cert: reader
            .raw(CLUSTER_CERT_SECRET)
            .map(|name| NsName::new(system_namespace, name)),
        tracing: reader.tracing(),
        cryptomb: reader.boolean(ENABLE_CRYPTOMB, false),
        listen_addresses: reader.addresses(),
    };
    if reader.problems.is_empty() {
        Ok(options)
    } else {
        Err(reader.problems)
    }
}

struct Reader<'a> {
    data: &'a BTreeMap<String, String>,
    problems: Vec<OptionProblem>,
}

impl<'a> Reader<'a> {
    /// The value of `key`, trimmed; an empty value means the default, as in Kourier's example.
    fn raw(&self, key: &str) -> Option<&'a str> {
        let value = self.data.get(key)?;
        if key == ACCESS_LOG_TEMPLATE {
            return Some(value.as_str()).filter(|v| !v.trim().is_empty());
        }
        Some(value.trim()).filter(|v| !v.is_empty())
    }

    fn bad(&mut self, key: &'static str, value: &str, reason: impl Into<String>) {
        self.problems.push(OptionProblem::BadValue {
            key,
            value: value.to_owned(),
            reason: reason.into(),
        });
    }

    /// Go's `strconv.ParseBool`, as Kourier reads booleans.
    fn boolean(&mut self, key: &'static str, default: bool) -> bool {
        let Some(value) = self.raw(key) else {
            return default;
        };
        match value {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            _ => {
                self.bad(key, value, "is not a boolean; use true or false");
                default
            }
        }
    }

    fn number<T: std::str::FromStr>(&mut self, key: &'static str, default: T) -> T {
        let Some(value) = self.raw(key) else {
            return default;
        };
        match value.parse() {
            Ok(number) => number,
            Err(_) => {
                let bits = std::mem::size_of::<T>() * 8;
                self.bad(
                    key,
                    value,
                    format!("is not a whole number from 0 to 2^{bits}-1"),
                );
                default
            }
        }
    }

    fn duration(&mut self, key: &'static str) -> Duration {
        let Some(value) = self.raw(key) else {
            return Duration::ZERO;
        };
        parse_go_duration(value).unwrap_or_else(|reason| {
            self.bad(key, value, reason);
            Duration::ZERO
        })
    }

    /// The access log format must be one Envoy accepts, or Envoy would reject every listener.
    fn check_format(&mut self, template: &str) {
        if let Err(reason) = check_access_log_format(template) {
            self.bad(ACCESS_LOG_TEMPLATE, template, reason);
        }
    }

    fn ciphers(&mut self) -> Vec<String> {
        let Some(value) = self.raw(CIPHER_SUITES) else {
            return Vec::new();
        };
        // Kourier reads a set, and gives Envoy its names sorted.
        let mut names: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        let unknown: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|name| !KNOWN_CIPHERS.contains(name))
            .collect();
        if !unknown.is_empty() {
            let reason = format!(
                "names cipher suites Envoy does not know ({}); known: {}",
                unknown.join(", "),
                KNOWN_CIPHERS.join(", ")
            );
            self.bad(CIPHER_SUITES, value, reason);
        }
        names
    }

    fn tls_version(&mut self) -> TlsVersion {
        match self.raw(TLS_MINIMUM_VERSION) {
            None => TlsVersion::Tls12,
            Some("1.2" | "TLSv1_2" | "TLSv1.2") => TlsVersion::Tls12,
            Some("1.3" | "TLSv1_3" | "TLSv1.3") => TlsVersion::Tls13,
            Some(other) => {
                self.bad(
                    TLS_MINIMUM_VERSION,
                    other,
                    "is not a TLS version; use 1.2 or 1.3",
                );
                TlsVersion::Tls12
            }
        }
    }

    fn ext_authz(&mut self) -> Option<ExtAuthz> {
        let protocol = match self.raw(EXTAUTHZ_PROTOCOL) {
            None | Some("grpc") => AuthzProtocol::Grpc,
            Some("http") => AuthzProtocol::Http,
            Some("https") => AuthzProtocol::Https,
            Some(other) => {
                self.bad(EXTAUTHZ_PROTOCOL, other, "is not grpc, http or https");
                AuthzProtocol::Grpc
            }
        };
        let failure_mode_allow = self.boolean(EXTAUTHZ_FAILURE_MODE_ALLOW, false);
        let max_request_bytes = self.number(EXTAUTHZ_MAX_REQUEST_BYTES, 8192);
        let timeout = Duration::from_millis(self.number(EXTAUTHZ_TIMEOUT, 2000u64));
        let path_prefix = self
            .raw(EXTAUTHZ_PATH_PREFIX)
            .unwrap_or_default()
            .to_owned();
        let bytes = self.boolean(EXTAUTHZ_PACK_AS_BYTES, false);
        let byte = self.boolean(EXTAUTHZ_PACK_AS_BYTE, false);
        let pack_as_bytes = bytes || byte;
        let host = self.raw(EXTAUTHZ_HOST)?;
        if pack_as_bytes && protocol != AuthzProtocol::Grpc {
            self.bad(
                EXTAUTHZ_PACK_AS_BYTES,
                "true",
                "applies to the grpc protocol only; set it to false, or extauthz-protocol to grpc",
            );
        }
        let Some((name, port)) = split_host_port(host) else {
            self.bad(
                EXTAUTHZ_HOST,
                host,
                "is not host:port (e.g. my-auth.auth-system.svc.cluster.local:2222)",
            );
            return None;
        };
        Some(ExtAuthz {
            host: name,
            port,
            protocol,
            failure_mode_allow,
            max_request_bytes,
            timeout,
            path_prefix,
            pack_as_bytes,
        })
    }

    fn upstream_ca(&mut self) -> Option<NsName> {
        match (
            self.raw(CERTS_SECRET_NAME),
            self.raw(CERTS_SECRET_NAMESPACE),
        ) {
            (None, None) => None,
            (Some(name), Some(namespace)) => Some(NsName::new(namespace, name)),
            (Some(name), None) => {
                self.bad(
                    CERTS_SECRET_NAME,
                    name,
                    "needs certs-secret-namespace too: set both, or neither",
                );
                None
            }
            (None, Some(namespace)) => {
                self.bad(
                    CERTS_SECRET_NAMESPACE,
                    namespace,
                    "needs certs-secret-name too: set both, or neither",
                );
                None
            }
        }
    }

    fn tracing(&mut self) -> Option<Tracing> {
        let protocol = match self.raw(TRACING_PROTOCOL) {
            None | Some("grpc") => TracingProtocol::Grpc,
            Some("http/protobuf") => TracingProtocol::HttpProtobuf,
            Some(other) => {
                self.bad(TRACING_PROTOCOL, other, "is not grpc or http/protobuf");
                TracingProtocol::Grpc
            }
        };
        let sampling_percent = match self.raw(TRACING_SAMPLING_RATE) {
            None => 100.0,
            Some(value) => match value.parse::<f64>() {
                Ok(rate) if (0.0..=1.0).contains(&rate) => rate * 100.0,
                _ => {
                    self.bad(
                        TRACING_SAMPLING_RATE,
                        value,
                        "is not a number from 0.0 to 1.0",
                    );
                    100.0
                }
            },
        };
        let service_name = self
            .raw(TRACING_SERVICE_NAME)
            .unwrap_or(DEFAULT_TRACING_SERVICE)
            .to_owned();
        let endpoint = self.raw(TRACING_ENDPOINT)?;
        let Some((host, port, path)) = split_url(endpoint) else {
            self.bad(
                TRACING_ENDPOINT,
                endpoint,
                "is not a URL with a port, e.g. http://otel-collector.observability:4317",
            );
            return None;
        };
        Some(Tracing {
            endpoint: endpoint.to_owned(),
            host,
            port,
            path,
            protocol,
            sampling_percent,
            service_name,
        })
    }

    fn addresses(&mut self) -> Option<Vec<IpAddr>> {
        let value = self.raw(LISTEN_IP_ADDRESSES)?;
        let mut addresses = Vec::new();
        for part in value.split(',').map(str::trim) {
            match part.parse::<IpAddr>() {
                Ok(address) if !addresses.contains(&address) => addresses.push(address),
                Ok(_) => {}
                Err(_) => {
                    self.bad(
                        LISTEN_IP_ADDRESSES,
                        value,
                        format!("has {part:?}, which is not an IP address"),
                    );
                    return None;
                }
            }
        }
        Some(addresses)
    }
}

/// `host:port` or `[v6]:port`.
fn split_host_port(value: &str) -> Option<(String, u16)> {
    let (host, port) = value.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok().filter(|port| *port > 0)?;
    (!host.is_empty() && !host.contains(':') || host.parse::<IpAddr>().is_ok())
        .then(|| (host.to_owned(), port))
}

/// `scheme://host:port/path` → (host, port, path).
fn split_url(value: &str) -> Option<(String, u16, String)> {
    let (scheme, rest) = value.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let (host, port) = split_host_port(authority)?;
    Some((host, port, path.to_owned()))
}

/// Go's `time.ParseDuration`, which Kourier uses: a sequence of decimal numbers, each with a
/// unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), like `300ms`, `1.5h` or `2h45m`; `0` alone.
pub fn parse_go_duration(value: &str) -> Result<Duration, String> {
    const ADVICE: &str = "is not a duration; write it like 0s, 300ms, 5m or 1h30m";
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    if value.is_empty() || value.starts_with('-') {
        return Err(ADVICE.to_owned());
    }
    let mut rest = value.strip_prefix('+').unwrap_or(value);
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{ADVICE} (a number needs a unit)"))?;
        let number: f64 = rest[..number_end].parse().map_err(|_| ADVICE.to_owned())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            unit => return Err(format!("{ADVICE} (unknown unit {unit:?})")),
        };
        total += number * nanos_per_unit;
        rest = &rest[unit_end..];
    }
    if total > u64::MAX as f64 {
        return Err(format!("{ADVICE} (too long)"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Envoy's access log command operators that take no argument.
const PLAIN_OPERATORS: &[&str] = &[
    "START_TIME",
    "START_TIME_LOCAL",
    "EMIT_TIME",
    "EMIT_TIME_LOCAL",
    "REQUEST_HEADERS_BYTES",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "BYTES_RETRANSMITTED",
    "PACKETS_RETRANSMITTED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "PROTOCOL",
    "UPSTREAM_PROTOCOL",
    "RESPONSE_CODE",
    "RESPONSE_CODE_DETAILS",
    "CONNECTION_TERMINATION_DETAILS",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "DURATION",
    "REQUEST_DURATION",
    "REQUEST_TX_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "ROUNDTRIP_DURATION",
    "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "UPSTREAM_HOST",
    "UPSTREAM_HOST_NAME",
    "UPSTREAM_HOST_NAME_WITHOUT_PORT",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_PORT",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_CONNECTION_ID",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_LOCAL_PORT",
    "CONNECTION_ID",
    "REQUESTED_SERVER_NAME",
    "ROUTE_NAME",
    "VIRTUAL_CLUSTER_NAME",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_PEER_IP_SAN",
    "DOWNSTREAM_PEER_EMAIL_SAN",
    "DOWNSTREAM_PEER_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_LOCAL_IP_SAN",
    "DOWNSTREAM_LOCAL_EMAIL_SAN",
    "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "HOSTNAME",
    "LOCAL_REPLY_BODY",
    "ACCESS_LOG_TYPE",
    "STREAM_ID",
    "TRACE_ID",
    "UNIQUE_ID",
    "UPSTREAM_FILTER_STATE",
    "CUSTOM_FLAGS",
];

/// Envoy's command operators that take an argument in parentheses.
const OPERATORS_WITH_ARGUMENT: &[&str] = &[
    "START_TIME",
    "START_TIME_LOCAL",
    "EMIT_TIME",
    "EMIT_TIME_LOCAL",
    "REQ",
    "RESP",
    "TRAILER",
    "REQ_WITHOUT_QUERY",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "ENVIRONMENT",
    "COMMON_DURATION",
    "CEL",
    "METADATA",
    "QUERY_PARAM",
    "PATH",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_CERT_V_END",
];

/// Whether every `%OPERATOR%`, `%OPERATOR(arg)%` or `%OPERATOR(arg):N%` of a text format is
/// one Envoy knows; a literal `%` is written `%%`.
pub fn check_access_log_format(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            rest = tail;
            continue;
        }
        let name_end = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .ok_or("has a % that opens a command operator and none that closes it")?;
        let name = &after[..name_end];
        let mut tail = &after[name_end..];
        let argument = tail.starts_with('(');
        if argument {
            let close = tail
                .find(')')
                .ok_or_else(|| format!("has %{name}(, whose ( is not closed"))?;
            tail = &tail[close + 1..];
            if let Some(length) = tail.strip_prefix(':') {
                let digits = length
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(length.len());
                if digits == 0 {
                    return Err(format!("has %{name}(...): without a length after the :"));
                }
                tail = &length[digits..];
            }
        }
        tail = tail
            .strip_prefix('%')
            .ok_or_else(|| format!("has %{name}, which is not closed by a %"))?;
        let known = if argument {
            OPERATORS_WITH_ARGUMENT.contains(&name)
        } else {
            PLAIN_OPERATORS.contains(&name)
        };
        if !known {
            return Err(format!(
                "has %{name}{}%, which is not one of Envoy's access log command operators",
                if argument { "(...)" } else { "" }
            ));
        }
        rest = tail;
    }
    Ok(())
}

/// The options in force: the last good `config-sluice`, and what is wrong with the newest.
#[derive(Debug, Default)]
pub struct Options {
    in_force: GatewayOptions,
    problems: Vec<OptionProblem>,
}

impl Options {
    pub fn in_force(&self) -> &GatewayOptions {
        &self.in_force
    }

    /// Why the newest `config-sluice` is not in force; empty when it is.
    pub fn problems(&self) -> &[OptionProblem] {
        &self.problems
    }

    /// Takes a new version of the ConfigMap's data (`None`: deleted, so the defaults); says
    /// whether the options in force changed. A version with problems changes nothing.
    pub fn update(
        &mut self,
        data: Option<&BTreeMap<String, String>>,
        system_namespace: &str,
    ) -> bool {
        let parsed = match data {
            Some(data) => parse(data, system_namespace),
            None => Ok(GatewayOptions::default()),
        };
        match parsed {
            Ok(options) => {
                self.problems.clear();
                let changed = options != self.in_force;
                self.in_force = options;
                changed
            }
            Err(problems) => {
                self.problems = problems;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parsed(pairs: &[(&str, &str)]) -> GatewayOptions {
        parse(&data(pairs), "gloo-system").unwrap()
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        parse(&data(pairs), "gloo-system")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn an_empty_config_map_and_empty_values_mean_the_defaults() {
        assert_eq!(parsed(&[]), GatewayOptions::default());
        let all_empty: Vec<(&str, &str)> = KEYS.iter().map(|k| (*k, "")).collect();
        assert_eq!(parsed(&all_empty), GatewayOptions::default());
        assert_eq!(
            parsed(&[("_example", "# anything at all")]),
            GatewayOptions::default()
        );
    }

    #[test]
    fn kourier_values_are_read_as_kourier_reads_them() {
        let options = parsed(&[
            ("enable-service-access-logging", "false"),
            ("use-remote-address", "f"),
            ("trusted-hops-count", "2"),
            ("enable-proxy-protocol", "True"),
            (
                "cipher-suites",
                "ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES128-GCM-SHA256",
            ),
            ("disable-envoy-server-header", "1"),
            ("stream-idle-timeout", "1h2m3.5s"),
            ("extauthz-host", "auth.auth-system:2222"),
            ("extauthz-protocol", "http"),
            ("extauthz-timeout", "500"),
            ("extauthz-path-prefix", "/verify"),
            ("certs-secret-name", "routing-serving-certs"),
            ("certs-secret-namespace", "knative-serving"),
            ("cluster-cert-secret", "local-cert"),
            (
                "tracing-endpoint",
                "http://otel.observability:4318/v1/traces",
            ),
            ("tracing-protocol", "http/protobuf"),
            ("tracing-sampling-rate", "0.25"),
            ("listen-ip-addresses", "0.0.0.0, ::"),
        ]);
        assert_eq!(options.access_log, None);
        assert!(!options.use_remote_address);
        assert_eq!(options.trusted_hops, 2);
        assert!(options.proxy_protocol);
        assert_eq!(
            options.cipher_suites,
            [
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256"
            ]
        );
        assert!(!options.server_header);
        assert_eq!(
            options.stream_idle_timeout,
            Duration::from_millis(3_723_500)
        );
        let authz = options.ext_authz.unwrap();
        assert_eq!(
            (authz.host.as_str(), authz.port),
            ("auth.auth-system", 2222)
        );
        assert_eq!(authz.protocol, AuthzProtocol::Http);
        assert_eq!(authz.timeout, Duration::from_millis(500));
        assert_eq!(authz.max_request_bytes, 8192);
        assert_eq!(
            options.upstream_ca,
            Some(NsName::new("knative-serving", "routing-serving-certs"))
        );
        assert_eq!(
            options.cluster_cert,
            Some(NsName::new("gloo-system", "local-cert"))
        );
        let tracing = options.tracing.unwrap();
        assert_eq!(
            (tracing.host.as_str(), tracing.port, tracing.path.as_str()),
            ("otel.observability", 4318, "/v1/traces")
        );
        assert_eq!(tracing.sampling_percent, 25.0);
        assert_eq!(tracing.service_name, "sluice");
        assert_eq!(
            options.listen_addresses,
            Some(vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()])
        );
    }

    #[test]
    fn a_template_is_checked_and_ends_its_line() {
        let options = parsed(&[(
            "service-access-log-template",
            "%REQ(:AUTHORITY)% %RESPONSE_CODE% 100%% %START_TIME(%s)%",
        )]);
        assert_eq!(
            options.access_log.as_deref(),
            Some("%REQ(:AUTHORITY)% %RESPONSE_CODE% 100%% %START_TIME(%s)%\n")
        );
        assert!(check_access_log_format(DEFAULT_ACCESS_LOG_FORMAT).is_ok());
        let found = problems(&[("service-access-log-template", "%NO_SUCH_THING%")]);
        assert!(
            found[0].contains("service-access-log-template"),
            "{found:?}"
        );
        assert!(problems(&[("service-access-log-template", "%REQ(x")])[0].contains("%REQ(x"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_each_reported_by_key() {
        let found = problems(&[
            ("enable-service-access-loging", "true"),
            ("use-remote-address", "yes"),
            ("trusted-hops-count", "-1"),
            ("stream-idle-timeout", "5 minutes"),
            ("cipher-suites", "NOT-A-CIPHER"),
            ("extauthz-host", "no-port"),
            ("tracing-sampling-rate", "2"),
            ("listen-ip-addresses", "127.0.0.1,localhost"),
            ("certs-secret-name", "alone"),
        ]);
        for key in [
            "\"enable-service-access-loging\" is not a sluice option",
            "use-remote-address: \"yes\"",
            "trusted-hops-count: \"-1\"",
            "stream-idle-timeout: \"5 minutes\"",
            "cipher-suites: \"NOT-A-CIPHER\"",
            "extauthz-host: \"no-port\"",
            "tracing-sampling-rate: \"2\"",
            "listen-ip-addresses",
            "certs-secret-name: \"alone\"",
        ] {
            assert!(
                found.iter().any(|p| p.contains(key)),
                "{key} not in {found:#?}"
            );
        }
        assert_eq!(found.len(), 9, "{found:#?}");
        assert!(
            problems(&[
                ("extauthz-host", "a:1"),
                ("extauthz-protocol", "http"),
                ("extauthz-pack-as-byte", "true")
            ])[0]
                .contains("grpc protocol only")
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("2h45m"), Ok(Duration::from_secs(9900)));
        assert_eq!(parse_go_duration("10us"), Ok(Duration::from_micros(10)));
        for bad in ["", "5", "-1s", "1d", "s", "1..5s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_config_map_keeps_the_last_good_options() {
        let mut options = Options::default();
        assert!(options.update(Some(&data(&[("trusted-hops-count", "1")])), "ns"));
        assert!(!options.update(Some(&data(&[("trusted-hops-count", "x")])), "ns"));
        assert_eq!(options.in_force().trusted_hops, 1);
        assert_eq!(options.problems().len(), 1);
        assert!(!options.update(Some(&data(&[("trusted-hops-count", "1")])), "ns"));
        assert!(options.problems().is_empty());
        assert!(options.update(None, "ns"));
        assert_eq!(options.in_force(), &GatewayOptions::default());
    }
}
