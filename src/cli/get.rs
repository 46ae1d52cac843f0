//! `sluice get ingress`, `sluice get route` (in `route.rs`) and `sluice get proxy`.

use clap::{Args, Subcommand};

use sluice::knative::Visibility;
use sluice::status::IngressView;

use super::output::{self, Output, Table, or_dash};
use super::{Namespaces, Proxy, SYSTEM_NAMESPACE, Target};

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Ingresses and ClusterIngresses with their Knative status: NAME, READY, REASON, HOSTS,
    /// VISIBILITY, AGE.
    ///
    /// Locally the control plane's view of the manifests it reads, with the conditions it
    /// computes. In a cluster the Ingresses as the API server holds them, with the status the
    /// sluice replica holding the Lease wrote (an ingress is owned when its class annotation
    /// names --ingress-class). AGE comes from metadata.creationTimestamp (`-` when a manifest
    /// has none). ClusterIngresses are cluster-scoped: they are listed whatever the namespace.
    #[command(alias = "ingresses", alias = "ing")]
    Ingress(IngressArgs),
    /// Knative Routes: NAME, URL, TRAFFIC (one entry per target, `90% -> hello-00001`, a tag as
    /// `#tag`), READY, AGE.
    ///
    /// The traffic is what is served: each target at its revision, a `configurationName`
    /// target at its Configuration's latest ready revision. Locally the control plane's view
    /// of the Routes in its manifests.
    #[command(alias = "routes", alias = "rt")]
    Route(super::route::RouteArgs),
    /// The proxies (Knative's external and internal gateways): their addresses, served ports,
    /// and how many Envoys of each are connected.
    ///
    /// Locally both proxies listen where `sluice serve --listen-address` and the port flags
    /// say, and an Envoy counts for a proxy when its role gets that proxy's listeners (an
    /// Envoy without a proxy role, such as the one `sluice up` starts, counts for both).
    ///
    /// In a cluster the addresses and ports are those of each proxy's Service in -n (a
    /// LoadBalancer's ingress addresses, a NodePort's node address and node ports, else the
    /// cluster IP), and the Envoys are those connected to any sluice replica.
    #[command(alias = "proxies")]
    Proxy(ProxyArgs),
}

#[derive(Debug, Args)]
pub struct IngressArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    namespaces: Namespaces,
    /// table for people; json or yaml for programs (shapes: docs/cli.md).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    target: Target,
    /// The namespace of sluice and its proxies (locally their role is `<namespace>~<name>`).
    #[arg(short, long, default_value = SYSTEM_NAMESPACE)]
    namespace: String,
    /// table for people; json or yaml for programs (shapes: docs/cli.md).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(command: GetCommand) -> anyhow::Result<()> {
    match command {
        GetCommand::Ingress(args) => ingress(args).await,
        GetCommand::Route(args) => super::route::run(args).await,
        GetCommand::Proxy(args) => proxy(args).await,
    }
}

async fn ingress(args: IngressArgs) -> anyhow::Result<()> {
    let backend = args.target.connect(SYSTEM_NAMESPACE).await?;
    let views: Vec<IngressView> = backend.ingresses(args.namespaces.only()).await?;
    let now = jiff::Timestamp::now();
    output::print(args.output, &views, || {
        ingress_table(&views, args.namespaces.all, now)
    })
}

fn ingress_table(views: &[IngressView], all_namespaces: bool, now: jiff::Timestamp) -> String {
    let mut header = vec!["NAME", "READY", "REASON", "HOSTS", "VISIBILITY", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    // Shown only when some listed ingress has one, such as a Route's Ingress.
    let owners = views.iter().any(|view| view.owner.is_some());
    if owners {
        header.push("OWNER");
    }
    let mut table = Table::new(&header);
    for view in views {
        let ready = view.condition("Ready");
        let name = if view.kind == "ClusterIngress" {
            format!("clusteringress/{}", view.name)
        } else {
            view.name.clone()
        };
        let mut row = vec![
            name,
            or_dash(ready.map_or("", |c| c.status.as_str())),
            or_dash(ready.map_or("", |c| c.reason.as_str())),
            or_dash(&hosts(view)),
            or_dash(&visibility(view)),
            age(view.creation_timestamp.as_deref(), now),
        ];
        if all_namespaces {
            row.insert(0, or_dash(&view.namespace));
        }
        if owners {
            row.push(or_dash(
                &view.owner.as_deref().unwrap_or_default().to_lowercase(),
            ));
        }
        table.row(row);
    }
    table.render()
}

/// The first three hosts, then how many more, as kubectl shows an Ingress's hosts.
fn hosts(view: &IngressView) -> String {
    let mut all: Vec<&str> = Vec::new();
    for host in view.rules.iter().flat_map(|rule| &rule.hosts) {
        if !all.contains(&host.as_str()) {
            all.push(host);
        }
    }
    let shown = all.iter().take(3).copied().collect::<Vec<_>>().join(",");
    match all.len() {
        0..=3 => shown,
        n => format!("{shown} + {} more...", n - 3),
    }
}

fn visibility(view: &IngressView) -> String {
    let mut all: Vec<Visibility> = view.rules.iter().map(|rule| rule.visibility).collect();
    all.sort();
    all.dedup();
    all.iter()
        .map(|v| match v {
            Visibility::ExternalIP => "ExternalIP",
            Visibility::ClusterLocal => "ClusterLocal",
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn age(created: Option<&str>, now: jiff::Timestamp) -> String {
    let Some(created) = created.and_then(|c| c.parse::<jiff::Timestamp>().ok()) else {
        return "-".to_owned();
    };
    human_duration(now.as_second() - created.as_second())
}

/// kubectl's short age format (`45s`, `3m20s`, `5h`, `2d3h`, `400d`, `3y20d`).
fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        with(minutes, "m", seconds % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        with(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        with(hours / 24, "d", hours % 24, "h")
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        with(hours / 24 / 365, "y", (hours / 24) % 365, "d")
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let backend = args.target.connect(&args.namespace).await?;
    let proxies = backend.proxies().await?;
    output::print(args.output, &proxies, || proxy_table(&proxies))
}

fn proxy_table(proxies: &[Proxy]) -> String {
    let mut table = Table::new(&["NAME", "NAMESPACE", "ADDRESSES", "PORTS", "ENVOYS"]);
    for proxy in proxies {
        let ports: Vec<String> = proxy
            .ports
            .iter()
            .filter(|p| p.served)
            .map(|p| format!("{}:{}", p.name, p.port))
            .collect();
        table.row(vec![
            proxy.name.clone(),
            proxy.namespace.clone(),
            or_dash(&proxy.addresses.join(",")),
            or_dash(&ports.join(",")),
            proxy.envoys.to_string(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice::status::{IngressStatus, RuleView};

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(51 * 3600), "2d3h");
        assert_eq!(human_duration(400 * 86400), "400d");
        assert_eq!(human_duration(-10), "<invalid>");
        let now: jiff::Timestamp = "2024-01-02T00:00:00Z".parse().unwrap();
        assert_eq!(age(Some("2024-01-01T23:59:00Z"), now), "60s");
        assert_eq!(age(None, now), "-");
    }

    #[test]
    fn the_table_names_hosts_and_visibility() {
        let view = IngressView {
            namespace: "default".into(),
            name: "hello".into(),
            kind: "Ingress".into(),
            owned: true,
            rules: vec![
                RuleView {
                    hosts: vec!["hello.default.example.com".into()],
                    visibility: Visibility::ExternalIP,
                },
                RuleView {
                    hosts: vec![
                        "hello.default".into(),
                        "hello.default.svc".into(),
                        "hello.default.svc.cluster.local".into(),
                    ],
                    visibility: Visibility::ClusterLocal,
                },
            ],
            labels: Default::default(),
            creation_timestamp: None,
            owner: None,
            status: IngressStatus {
                conditions: vec![],
                public_load_balancer: vec![],
                private_load_balancer: vec![],
            },
        };
        let now = jiff::Timestamp::now();
        let table = ingress_table(&[view], true, now);
        let row = table.lines().nth(1).unwrap();
        assert!(row.starts_with("default"), "{table}");
        assert!(
            row.contains("hello.default.example.com,hello.default,hello.default.svc + 1 more..."),
            "{table}"
        );
        assert!(row.contains("ExternalIP,ClusterLocal"), "{table}");
    }
}
