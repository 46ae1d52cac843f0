//! `sluice proxy url|address|status|served-config|dump|stats`.

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;
use serde_json::Value;

use super::model::XDS_TYPES;
use super::output::{self, Output, Table, or_dash};
use super::{Dialer, Envoy, SYSTEM_NAMESPACE, ServedConfig, ServedTarget, Target};

const DEFAULT_PROXY: &str = "knative-external-proxy";

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// The URL of a proxy's port, as glooctl's `proxy url`.
    ///
    /// Locally: the listener the control plane gives its Envoys, dialed on loopback when it
    /// binds every address. `--port https` gives the HTTPS listener (served once an ingress has
    /// a valid TLS secret; until then a warning goes to stderr), `--name
    /// knative-internal-proxy` the internal (cluster-local) listeners.
    ///
    /// In a cluster, glooctl's rules on the proxy's Service: its only port, else the one named
    /// --port ("named port not found" otherwise); a LoadBalancer's first ingress, host name
    /// else IP ("load balancer ingress not found" while it has none); a NodePort's node port on
    /// the node of its first scheduled pod, at the node's ExternalIP, else its InternalIP; a
    /// ClusterIP's cluster IP, with a warning on stderr (only reachable from inside). With
    /// --local-cluster (minikube, kind) any type is taken as a NodePort at the node's
    /// InternalIP.
    Url(UrlArgs),
    /// Like `url`, as host:port without a scheme.
    Address(UrlArgs),
    /// Every connected Envoy (node id, role, the control-plane replica it is connected to)
    /// and, per xDS type, SYNCED, STALE (an update sent and not yet ACKed), NACKED (the last
    /// update was rejected; the message follows the table) or NOT_SENT.
    ///
    /// Locally: the Envoys connected to the control plane at --admin-addr. In a cluster: the
    /// Envoys of every sluice replica (each knows only its own streams), merged; the replicas
    /// are the endpoints of Service `sluice` in -n, asked through port-forwards (or at their
    /// pod IPs with --replicas-via pod-ip). The same state is served over CSDS
    /// (envoy.service.status.v3) on each replica's xDS port.
    Status(StatusArgs),
    /// What the control plane serves to one Envoy (`--node`, with each resource's status) or
    /// to the Envoys of a role (`--role`, from the current snapshot), as Envoy JSON/YAML with
    /// `-o json|yaml`; private keys are redacted.
    ///
    /// In a cluster a node's config comes from the replica it is connected to, a role's from
    /// any replica.
    #[command(group(ArgGroup::new("whom").required(true).args(["node", "role"])))]
    ServedConfig(ServedArgs),
    /// Envoy's own /config_dump of a proxy's Envoy: the table summarizes it, `-o json` prints
    /// it as Envoy gives it.
    ///
    /// Locally: from the Envoy that `sluice up` started (the control plane reports its admin
    /// address), or the one at --envoy-admin-addr. In a cluster: from the first running pod
    /// (by name) of the proxy's Deployment (--name, in -n), through a port-forward to its
    /// Envoy admin port (19000, on the pod's loopback).
    Dump(EnvoyAdminArgs),
    /// Envoy's own /stats of a proxy's Envoy (counters and gauges), optionally filtered.
    ///
    /// Locally: from the Envoy that `sluice up` started, or the one at --envoy-admin-addr. In a
    /// cluster: from a pod of the proxy, through a port-forward, as `dump`.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct UrlArgs {
    #[command(flatten)]
    target: Target,
    /// The proxy: knative-external-proxy or knative-internal-proxy.
    #[arg(long, default_value = DEFAULT_PROXY)]
    name: String,
    /// The port's name: http or https.
    #[arg(long, default_value = "http")]
    port: String,
    /// The namespace of sluice and its proxies.
    #[arg(short, long, default_value = SYSTEM_NAMESPACE)]
    namespace: String,
    /// In a cluster: take the Service as a NodePort and the node's InternalIP, for a cluster
    /// on this machine (minikube, kind) whose load balancers get no address.
    #[arg(short, long)]
    local_cluster: bool,
    /// table for people; json or yaml for programs (shapes: docs/cli.md).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// In a cluster: the namespace of sluice and its proxies.
    #[arg(short, long, default_value = SYSTEM_NAMESPACE)]
    namespace: String,
    /// table for people; json or yaml for programs (shapes: docs/cli.md).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct ServedArgs {
    #[command(flatten)]
    target: Target,
    /// A connected Envoy's node id (see `sluice proxy status`).
    #[arg(long)]
    node: Option<String>,
    /// A role (node.metadata.role), e.g. gloo-system~knative-external-proxy; any other role
    /// gets the listeners of both proxies.
    #[arg(long)]
    role: Option<String>,
    /// In a cluster: the namespace of sluice and its proxies.
    #[arg(short, long, default_value = SYSTEM_NAMESPACE)]
    namespace: String,
    /// table for people; json or yaml for programs (shapes: docs/cli.md).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct EnvoyAdminArgs {
    #[command(flatten)]
    target: Target,
    /// The proxy whose Envoy to ask.
    #[arg(long, default_value = DEFAULT_PROXY)]
    name: String,
    /// The namespace of sluice and its proxies.
    #[arg(short, long, default_value = SYSTEM_NAMESPACE)]
    namespace: String,
    /// The Envoy's admin address (its bootstrap's `admin`), when the control plane does not
    /// know it; in a cluster, instead of a port-forward to a proxy pod.
    #[arg(long, value_name = "HOST:PORT")]
    envoy_admin_addr: Option<String>,
    /// table for people; json or yaml for programs (shapes: docs/cli.md).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    envoy: EnvoyAdminArgs,
    /// Only stats whose name matches this regular expression (Envoy's `/stats?filter=`).
    #[arg(long)]
    filter: Option<String>,
}

pub async fn run(command: ProxyCommand) -> anyhow::Result<()> {
    match command {
        ProxyCommand::Url(args) => url(args, true).await,
        ProxyCommand::Address(args) => url(args, false).await,
        ProxyCommand::Status(args) => status(args).await,
        ProxyCommand::ServedConfig(args) => served_config(args).await,
        ProxyCommand::Dump(args) => dump(args).await,
        ProxyCommand::Stats(args) => stats(args).await,
    }
}

/// Where a proxy's port is reached.
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// host:port.
    pub address: String,
}

impl Endpoint {
    /// The endpoint of the port named `port_name` (`https` is spoken over TLS) at `address`.
    pub fn new(port_name: &str, address: String) -> Endpoint {
        Endpoint {
            scheme: if port_name == "https" {
                "https"
            } else {
                "http"
            },
            address,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.address)
    }
}

#[derive(Serialize)]
struct UrlOutput {
    url: String,
}

#[derive(Serialize)]
struct AddressOutput {
    address: String,
}

async fn url(args: UrlArgs, with_scheme: bool) -> anyhow::Result<()> {
    let backend = args.target.connect(&args.namespace).await?;
    let endpoint = backend
        .endpoint(&args.name, &args.port, args.local_cluster)
        .await?;
    if with_scheme {
        let url = endpoint.url();
        output::print(args.output, &UrlOutput { url: url.clone() }, || {
            format!("{url}\n")
        })
    } else {
        let address = endpoint.address;
        output::print(
            args.output,
            &AddressOutput {
                address: address.clone(),
            },
            || format!("{address}\n"),
        )
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let backend = args.target.connect(&args.namespace).await?;
    let envoys = backend.envoys().await?;
    output::print(args.output, &envoys, || status_table(&envoys))
}

fn status_table(envoys: &[Envoy]) -> String {
    let mut header = vec!["NAME", "ROLE", "REPLICA", "MODE"];
    header.extend(XDS_TYPES);
    let mut table = Table::new(&header);
    let mut nacks = Vec::new();
    for envoy in envoys {
        let mut row = vec![
            envoy.node.clone(),
            or_dash(envoy.role.as_deref().unwrap_or_default()),
            or_dash(&envoy.replica),
            match envoy.mode.as_str() {
                "StateOfTheWorld" => "SotW".to_owned(),
                other => other.to_owned(),
            },
        ];
        for name in XDS_TYPES {
            let sync = envoy.types.get(name);
            let status = sync.map_or("NOT_SENT", |s| s.status.as_str());
            row.push(status.replace('_', " "));
            if status == "NACKED"
                && let Some(nack) = sync.and_then(|s| s.last_nack.as_ref())
            {
                nacks.push(format!(
                    "{} {name} NACKED version {} ({}): {}\n",
                    envoy.node,
                    nack.version,
                    nack.resources.join(","),
                    nack.message.trim()
                ));
            }
        }
        table.row(row);
    }
    let mut text = if envoys.is_empty() {
        "No Envoy is connected.\n".to_owned()
    } else {
        table.render()
    };
    if !nacks.is_empty() {
        text.push('\n');
        text.extend(nacks);
    }
    text
}

async fn served_config(args: ServedArgs) -> anyhow::Result<()> {
    let target = match (args.node, args.role) {
        (Some(node), _) => ServedTarget::Node(node),
        (None, Some(role)) => ServedTarget::Role(role),
        (None, None) => bail!("name an Envoy with --node or a role with --role"),
    };
    let backend = args.target.connect(&args.namespace).await?;
    let config = backend.served_config(&target).await?;
    output::print(args.output, &config, || served_table(&config))
}

fn served_table(config: &ServedConfig) -> String {
    let mut table = Table::new(&["TYPE", "NAME", "VERSION", "STATUS"]);
    for resource in &config.resources {
        table.row(vec![
            resource.kind.clone(),
            resource.name.clone(),
            resource.version.clone(),
            or_dash(resource.status.as_deref().unwrap_or_default()),
        ]);
    }
    table.render()
}

/// `GET path` from the Envoy admin of proxy `args.name`, as text.
async fn envoy_admin_get(args: &EnvoyAdminArgs, path: &str) -> anyhow::Result<String> {
    let backend = args.target.connect(&args.namespace).await?;
    let admin = backend
        .envoy_admin(&args.name, args.envoy_admin_addr.as_deref())
        .await?
        .with_context(|| {
            format!(
                "no Envoy admin address is known for {}: the control plane did not start its \
                 Envoy (only `sluice up` does); pass --envoy-admin-addr HOST:PORT, the `admin` \
                 address of the Envoy's bootstrap",
                args.name
            )
        })?;
    envoy_get(&admin, path).await
}

/// `GET path` from the Envoy admin interface at `admin`, as text.
pub async fn envoy_get(admin: &Dialer, path: &str) -> anyhow::Result<String> {
    let address = admin.describe();
    let reply = admin.get(path).await.with_context(|| {
        format!("cannot ask Envoy's admin at {address}; is that Envoy running?")
    })?;
    if !reply.status.is_success() {
        bail!(
            "Envoy's admin at {address} answered {} to {path}: {}",
            reply.status,
            reply.text().trim()
        );
    }
    Ok(reply.text())
}

async fn dump(args: EnvoyAdminArgs) -> anyhow::Result<()> {
    let text = envoy_admin_get(&args, "/config_dump").await?;
    let dump: Value = serde_json::from_str(&text).context("Envoy's /config_dump is not JSON")?;
    output::print(args.output, &dump, || dump_table(&dump))
}

/// One row per resource in a config dump: its kind (`Listeners`, `Clusters`, ...), the list
/// it is in (`dynamic_listeners`, `static_clusters`, ...), its name and version.
fn dump_table(dump: &Value) -> String {
    let mut table = Table::new(&["KIND", "STATE", "NAME", "VERSION"]);
    for config in dump["configs"].as_array().into_iter().flatten() {
        let kind = config["@type"]
            .as_str()
            .and_then(|t| t.rsplit('.').next())
            .map(|t| t.trim_end_matches("ConfigDump"))
            .unwrap_or("?");
        let Some(fields) = config.as_object() else {
            continue;
        };
        for (state, items) in fields {
            for item in items.as_array().into_iter().flatten() {
                table.row(vec![
                    kind.to_owned(),
                    state.clone(),
                    or_dash(&find_str(item, "name")),
                    or_dash(&find_str(item, "version_info")),
                ]);
            }
        }
    }
    table.render()
}

/// `key` in `item`, or in an object nested in it (a dump nests a resource in its state).
fn find_str(item: &Value, key: &str) -> String {
    if let Some(found) = item[key].as_str() {
        return found.to_owned();
    }
    item.as_object()
        .into_iter()
        .flat_map(|fields| fields.values())
        .find_map(|nested| nested[key].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[derive(Debug, Serialize)]
struct Stat {
    name: String,
    value: Value,
}

async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let mut path = "/stats?format=json".to_owned();
    if let Some(filter) = &args.filter {
        path.push_str("&filter=");
        path.push_str(&percent_encode(filter));
    }
    let text = envoy_admin_get(&args.envoy, &path).await?;
    let stats = parse_stats(&text)?;
    output::print(args.envoy.output, &stats, || {
        let mut table = Table::new(&["NAME", "VALUE"]);
        for stat in &stats {
            table.row(vec![stat.name.clone(), stat.value.to_string()]);
        }
        table.render()
    })
}

/// The counters and gauges of Envoy's `/stats?format=json` (histograms left out).
fn parse_stats(text: &str) -> anyhow::Result<Vec<Stat>> {
    let json: Value = serde_json::from_str(text).context("Envoy's /stats is not JSON")?;
    Ok(json["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|stat| {
            Some(Stat {
                name: stat["name"].as_str()?.to_owned(),
                value: stat.get("value")?.clone(),
            })
        })
        .collect())
}

/// The counters of Envoy's `/stats` whose name matches `filter`, with their values.
pub async fn envoy_counters(admin: &Dialer, filter: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let path = format!("/stats?format=json&filter={}", percent_encode(filter));
    let stats = parse_stats(&envoy_get(admin, &path).await?)?;
    Ok(stats
        .into_iter()
        .filter_map(|s| Some((s.name, s.value.as_u64()?)))
        .collect())
}

/// A query value with everything but unreserved characters percent-encoded.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::model::{Nack, TypeSync};

    #[test]
    fn a_nack_shows_in_its_column_and_below_the_table() {
        let mut types: std::collections::BTreeMap<String, TypeSync> = XDS_TYPES
            .iter()
            .map(|t| ((*t).to_owned(), TypeSync::not_sent()))
            .collect();
        types.insert(
            "LDS".into(),
            TypeSync {
                status: "NACKED".into(),
                acked_version: String::new(),
                acked_resources: 0,
                last_nack: Some(Nack {
                    version: "v1".into(),
                    message: "cannot bind".into(),
                    resources: vec!["external-http".into()],
                }),
            },
        );
        let envoy = Envoy {
            node: "envoy-1".into(),
            role: None,
            group: "All".into(),
            mode: "Delta".into(),
            replica: "sluice-0".into(),
            connected_seconds: 3,
            types,
        };
        let text = status_table(&[envoy]);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("NAME"));
        let row = lines.next().unwrap();
        assert!(row.contains("NACKED") && row.contains("NOT SENT"), "{text}");
        assert!(
            text.contains("envoy-1 LDS NACKED version v1 (external-http): cannot bind"),
            "{text}"
        );
    }

    #[test]
    fn a_config_dump_becomes_one_row_per_resource() {
        let dump = serde_json::json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "version_info": "abc",
             "dynamic_listeners": [{"name": "external-http", "active_state": {"version_info": "abc"}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
             "dynamic_active_clusters": [{"version_info": "v2", "cluster": {"name": "default/hello:80"}}]}
        ]});
        let table = dump_table(&dump);
        assert!(
            table.contains("Listeners   dynamic_listeners         external-http      abc"),
            "{table}"
        );
        assert!(table.contains("default/hello:80"), "{table}");
    }

    #[test]
    fn filters_are_percent_encoded() {
        assert_eq!(percent_encode("update_rejected$"), "update_rejected%24");
    }
}
