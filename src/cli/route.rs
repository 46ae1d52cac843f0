//! `sluice get route`: Knative Routes with their URL, the traffic they serve and whether they
//! are Ready, as knctl's `routes list` and kn's `route list` show them.

use clap::Args;

use sluice::knative::TrafficTarget;
use sluice::routes::status::RouteView;

use super::get::age;
use super::output::{self, Output, Table, or_dash};
use super::{Namespaces, SYSTEM_NAMESPACE, Target};

#[derive(Debug, Args)]
pub struct RouteArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    namespaces: Namespaces,
    /// table for people; json or yaml for programs (shapes: docs/cli.md).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(args: RouteArgs) -> anyhow::Result<()> {
    let backend = args.target.connect(SYSTEM_NAMESPACE).await?;
    let views: Vec<RouteView> = backend
        .routes()
        .await?
        .into_iter()
        .filter(|view| args.namespaces.includes(&view.namespace))
        .collect();
    let now = jiff::Timestamp::now();
    output::print(args.output, &views, || {
        table(&views, args.namespaces.all, now)
    })
}

/// NAME, URL, TRAFFIC, READY, AGE; NAMESPACE first with `-A`.
pub fn table(views: &[RouteView], all_namespaces: bool, now: jiff::Timestamp) -> String {
    let mut header = vec!["NAME", "URL", "TRAFFIC", "READY", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut table = Table::new(&header);
    for view in views {
        let mut row = vec![
            view.name.clone(),
            or_dash(view.url.as_deref().unwrap_or_default()),
            or_dash(&traffic(&view.traffic)),
            or_dash(view.condition("Ready").map_or("", |c| c.status.as_str())),
            age(view.creation_timestamp.as_deref(), now),
        ];
        if all_namespaces {
            row.insert(0, view.namespace.clone());
        }
        table.row(row);
    }
    table.render()
}

/// One entry per target: `90% -> hello-00001`, `10% -> hello-00002 #latest` for a tag, and
/// kn's `@latest (hello-00003)` for a target that follows its Configuration.
pub fn traffic(targets: &[TrafficTarget]) -> String {
    targets
        .iter()
        .map(|target| {
            let revision = if target.latest_revision == Some(true) {
                format!("@latest ({})", target.revision_name)
            } else {
                target.revision_name.clone()
            };
            let tag = if target.tag.is_empty() {
                String::new()
            } else {
                format!(" #{}", target.tag)
            };
            format!("{}% -> {revision}{tag}", target.percent.unwrap_or(0))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice::status::Condition;

    fn target(tag: &str, revision: &str, percent: i64, latest: bool) -> TrafficTarget {
        TrafficTarget {
            tag: tag.into(),
            revision_name: revision.into(),
            percent: Some(percent),
            latest_revision: Some(latest),
            ..TrafficTarget::default()
        }
    }

    #[test]
    fn the_table_shows_each_target() {
        let view = RouteView {
            namespace: "hello-test".into(),
            name: "hello".into(),
            url: Some("http://hello.hello-test.example.com".into()),
            address_url: None,
            traffic: vec![
                target("", "hello-00001", 90, false),
                target("latest", "hello-00002", 10, false),
                target("", "hello-00003", 0, true),
            ],
            spec_traffic: vec![],
            conditions: vec![Condition {
                kind: "Ready".into(),
                status: "True".into(),
                reason: String::new(),
                message: String::new(),
            }],
            generation: None,
            creation_timestamp: None,
            origin: None,
            ingress: None,
        };
        let table = table(&[view], false, jiff::Timestamp::now());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME    URL"), "{table}");
        assert!(
            lines[1].contains(
                "90% -> hello-00001, 10% -> hello-00002 #latest, 0% -> @latest (hello-00003)   True"
            ),
            "{table}"
        );
    }
}
