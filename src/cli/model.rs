//! What the backends hand the commands; these are also the JSON/YAML shapes the commands print
//! (documented in docs/cli.md: add fields, never rename or remove them).

use std::collections::BTreeMap;

use serde::Serialize;

/// The xDS types as operators name them, in the order `proxy status` shows them.
pub const XDS_TYPES: [&str; 6] = ["LDS", "CDS", "EDS", "SRDS", "RDS", "SDS"];

/// One proxy: Knative's external or internal gateway.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proxy {
    pub name: String,
    pub namespace: String,
    /// Where clients reach it: host names or IP addresses.
    pub addresses: Vec<String>,
    pub ports: Vec<ProxyPort>,
    /// Connected Envoys that serve this proxy's listeners.
    pub envoys: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPort {
    /// `http` or `https`.
    pub name: String,
    pub port: u16,
    /// The Envoy listener behind it.
    pub listener: String,
    /// Whether it is served now (HTTPS only once an ingress has a valid TLS secret).
    pub served: bool,
}

impl Proxy {
    pub fn port(&self, name: &str) -> Option<&ProxyPort> {
        self.ports.iter().find(|p| p.name == name)
    }
}

/// One connected Envoy and where each xDS type stands with it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envoy {
    pub node: String,
    pub role: Option<String>,
    /// Which listeners it gets: `External`, `Internal` or `All`.
    pub group: String,
    /// `StateOfTheWorld` or `Delta`.
    pub mode: String,
    /// The control-plane replica it is connected to.
    pub replica: String,
    pub connected_seconds: u64,
    /// Every type of [`XDS_TYPES`], by its short name.
    pub types: BTreeMap<String, TypeSync>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeSync {
    /// `SYNCED`, `STALE`, `NACKED` or `NOT_SENT`.
    pub status: String,
    pub acked_version: String,
    pub acked_resources: u64,
    /// The last rejection, even when a later response was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<Nack>,
}

impl TypeSync {
    pub fn not_sent() -> TypeSync {
        TypeSync {
            status: "NOT_SENT".to_owned(),
            acked_version: String::new(),
            acked_resources: 0,
            last_nack: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    pub version: String,
    pub message: String,
    pub resources: Vec<String>,
}

impl Envoy {
    /// The types that are not in sync: STALE or NACKED.
    pub fn unsynced(&self) -> impl Iterator<Item = (&str, &TypeSync)> {
        XDS_TYPES.into_iter().filter_map(|name| {
            let sync = self.types.get(name)?;
            matches!(sync.status.as_str(), "STALE" | "NACKED").then_some((name, sync))
        })
    }
}

/// Whose served config to show.
#[derive(Debug, Clone)]
pub enum ServedTarget {
    Node(String),
    Role(String),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub group: String,
    pub resources: Vec<ServedResource>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedResource {
    /// `LDS`, `CDS`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub version: String,
    /// For a node: `SYNCED`, `STALE` or `NACKED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nack_message: Option<String>,
    /// The resource as Envoy's JSON (`null` when its body is not known).
    pub resource: serde_json::Value,
}

/// The control plane's own health.
#[derive(Debug, Clone)]
pub struct Health {
    /// Where it was asked.
    pub at: String,
    pub healthy: Result<(), String>,
    pub ready: Result<(), String>,
    /// The gateway options: notes on those in force, or why the newest are not in force.
    pub options: Result<Vec<String>, String>,
}
