//! `sluice rollout`: shifts a Route's traffic in one command, as knctl's `rollout` did, and
//! waits until Envoy serves the new split.
//!
//! Where the Route lives decides how: a Route the local control plane read from a manifest file
//! is rewritten in that file (only its traffic, atomically: a temporary file renamed over it);
//! any other is patched on the API server (`--kubeconfig`/`--context`, else the usual
//! kubeconfig), or, when a Knative Service owns the Route, that Service's `spec.traffic`, as kn
//! does. Then the command waits for the Route to be Ready with the new traffic: locally the
//! control plane says so once every Envoy ACKed it; in a cluster, the Route's status does.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::Value;

use sluice::cluster::ClusterOptions;
use sluice::knative::{Route, RouteResource, RouteSpec, SERVING_GROUP, TrafficTarget};
use sluice::routes::edit::{self, RawTarget};
use sluice::routes::status::RouteView;
use sluice::status::Condition;

use super::output::write_stdout;
use super::route::{table, traffic};
use super::{Backend, SYSTEM_NAMESPACE, Target};

/// Shift a Route's traffic: `sluice rollout hello -n ns -p hello-00001=90% -p hello-00002=10%`.
///
/// Each TARGET is a revision name, a tag already on the Route, or `@latest` (the untagged
/// target that follows a Configuration); the percents must sum to 100, else nothing changes.
/// Every other target's share goes to 0% (untagged ones are dropped, tagged ones keep serving
/// their tag's host). A Route from the local control plane's manifests is rewritten in its
/// file, every other byte of the file unchanged; otherwise the Route (or the Knative Service
/// that owns it) is patched on the API server. Then it waits until the new split is served and
/// prints the Route's traffic.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// The Route.
    route: String,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// TARGET=PERCENT (knctl's `-p`), e.g. `hello-00002=10%`; repeat for each target.
    #[arg(short = 'p', long = "percentage", value_name = "TARGET=PERCENT")]
    percentages: Vec<String>,
    /// kn's spelling: TARGET=PERCENT[,TARGET=PERCENT...].
    #[arg(long, value_name = "TARGET=PERCENT,...")]
    traffic: Vec<String>,
    /// Print the traffic it would set, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for the new split to be served.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    timeout: u64,
    /// `--kubeconfig`/`--context` patch the Route on that cluster even when a local control
    /// plane runs.
    #[command(flatten)]
    target: Target,
}

pub async fn run(args: RolloutArgs) -> anyhow::Result<()> {
    let arguments: Vec<String> = args
        .percentages
        .iter()
        .chain(&args.traffic)
        .cloned()
        .collect();
    if arguments.is_empty() {
        bail!("say where the traffic goes: -p TARGET=PERCENT (or --traffic TARGET=PERCENT,...)");
    }
    let shares = edit::parse_shares(&arguments)?;
    let route = format!("{}/{}", args.namespace, args.route);
    let cluster_asked = args.target.kubeconfig.is_some() || args.target.context.is_some();
    if !cluster_asked && let Ok(backend) = args.target.connect(SYSTEM_NAMESPACE).await {
        let views = backend.routes().await?;
        let known = views
            .into_iter()
            .find(|view| view.namespace == args.namespace && view.name == args.route);
        if let Some(view) = known
            && let Some(origin) = view.origin.clone()
        {
            return in_file(&args, &backend, &shares, Path::new(&origin)).await;
        }
    }
    in_cluster(&args, &shares)
        .await
        .with_context(|| format!("rolling out Route {route} on the API server"))
}

/// Rewrites the Route's traffic in its manifest file and waits for the control plane to serve
/// it.
async fn in_file(
    args: &RolloutArgs,
    backend: &Backend,
    shares: &[(String, i64)],
    file: &Path,
) -> anyhow::Result<()> {
    let route = format!("{}/{}", args.namespace, args.route);
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {}, which holds Route {route}", file.display()))?;
    let block = edit::find(&text, &args.namespace, &args.route)
        .with_context(|| format!("cannot rewrite {}", file.display()))?;
    let services = backend.services(&args.namespace).await?;
    let traffic = edit::new_traffic(&route, &block.targets, shares, |name| {
        services.iter().any(|service| service == name)
    })
    .context("nothing was changed")?;
    let wanted = checked(&route, &traffic)?;
    if args.dry_run {
        return print_plan(&wanted);
    }
    let rewritten = edit::replace(&text, &block, &traffic);
    write_atomically(file, &rewritten)?;
    eprintln!("rewrote Route {route}'s traffic in {}", file.display());
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last = None;
    loop {
        let view = backend
            .routes()
            .await?
            .into_iter()
            .find(|view| view.namespace == args.namespace && view.name == args.route);
        if let Some(view) = &view
            && view.spec_traffic == wanted
            && condition_is(view.condition("AllTrafficAssigned"), "True")
            && condition_is(view.condition("Ready"), "True")
        {
            return print_route(view);
        }
        last = view.or(last);
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for Route {route} to serve the new traffic: {}",
                args.timeout,
                why_not(last.as_ref(), &wanted)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Patches the Route (or the Knative Service that owns it) on the API server and waits for its
/// status to show the new traffic served.
async fn in_cluster(args: &RolloutArgs, shares: &[(String, i64)]) -> anyhow::Result<()> {
    let route = format!("{}/{}", args.namespace, args.route);
    let client = ClusterOptions {
        kubeconfig: args.target.kubeconfig.clone(),
        context: args.target.context.clone(),
    }
    .client()
    .await
    .context(
        "no local control plane reads this Route from a manifest (is `sluice up` running? pass \
         --admin-addr), and no cluster is reachable",
    )?;
    let routes: Api<RouteResource> = Api::namespaced(client.clone(), &args.namespace);
    let current = routes
        .get_opt(&args.route)
        .await?
        .with_context(|| format!("there is no Route {route}"))?;
    let owner = current
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| {
            owner.controller == Some(true)
                && owner.kind == "Service"
                && owner.api_version.split('/').next() == Some(SERVING_GROUP)
        })
        .cloned();
    let service_api = |version: &str| {
        let resource = ApiResource {
            group: SERVING_GROUP.to_owned(),
            version: version.to_owned(),
            api_version: format!("{SERVING_GROUP}/{version}"),
            kind: "Service".to_owned(),
            plural: "services".to_owned(),
        };
        Api::<DynamicObject>::namespaced_with(client.clone(), &args.namespace, &resource)
    };
    let existing: Vec<RawTarget> = match &owner {
        Some(owner) => {
            let service = service_api("v1").get(&owner.name).await.with_context(|| {
                format!(
                    "Route {route} belongs to Knative Service {}, which cannot be read",
                    owner.name
                )
            })?;
            targets(&service.data["spec"]["traffic"])
        }
        None => targets(&serde_json::to_value(&current.spec.traffic)?),
    };
    let revisions: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &args.namespace,
        &ApiResource {
            group: SERVING_GROUP.to_owned(),
            version: "v1".to_owned(),
            api_version: format!("{SERVING_GROUP}/v1"),
            kind: "Revision".to_owned(),
            plural: "revisions".to_owned(),
        },
    );
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &args.namespace);
    let mut known_revisions = Vec::new();
    for (name, _) in shares {
        let exists = matches!(revisions.get_opt(name).await, Ok(Some(_)))
            || matches!(services.get_opt(name).await, Ok(Some(_)));
        if exists {
            known_revisions.push(name.clone());
        }
    }
    let traffic = edit::new_traffic(&route, &existing, shares, |name| {
        known_revisions.iter().any(|known| known == name)
    })
    .context("nothing was changed")?;
    let wanted = checked(&route, &traffic)?;
    if args.dry_run {
        return print_plan(&wanted);
    }
    let patch = Patch::Merge(serde_json::json!({ "spec": { "traffic": traffic } }));
    let params = PatchParams::default();
    let generation = match &owner {
        Some(owner) => {
            service_api("v1")
                .patch(&owner.name, &params, &patch)
                .await?;
            eprintln!(
                "patched Knative Service {}/{}'s traffic",
                args.namespace, owner.name
            );
            None
        }
        None => {
            let patched = routes.patch(&args.route, &params, &patch).await?;
            eprintln!("patched Route {route}'s traffic");
            patched.metadata.generation
        }
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let latest = routes.get(&args.route).await?;
        let view = RouteView::from_resource(&latest);
        let observed = latest
            .status
            .as_ref()
            .and_then(|status| status.observed_generation);
        let current = observed == latest.metadata.generation
            && generation.is_none_or(|generation| latest.metadata.generation >= Some(generation));
        if current && view.spec_traffic == wanted && condition_is(view.condition("Ready"), "True") {
            return print_route(&view);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for Route {route} to serve the new traffic: {}",
                args.timeout,
                why_not(Some(&view), &wanted)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The targets of a JSON list of traffic targets.
fn targets(value: &Value) -> Vec<RawTarget> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|target| target.as_object().cloned())
        .collect()
}

/// The new traffic, defaulted, if Knative would accept it.
fn checked(route: &str, traffic: &[RawTarget]) -> anyhow::Result<Vec<TrafficTarget>> {
    let spec: RouteSpec = serde_json::from_value(serde_json::json!({ "traffic": traffic }))
        .with_context(|| format!("Route {route}'s traffic does not read as Knative's"))?;
    let mut candidate = Route {
        metadata: Default::default(),
        spec,
        status: None,
        origin: None,
    };
    candidate.set_defaults();
    if let Err(errors) = candidate.validate() {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!(
            "the new traffic of Route {route} would be invalid: {}; nothing was changed",
            errors.join("; ")
        );
    }
    Ok(candidate.spec.traffic)
}

fn print_plan(traffic: &[TrafficTarget]) -> anyhow::Result<()> {
    let mut lines = String::from("would set the traffic to:\n");
    for target in traffic {
        let name = if target.revision_name.is_empty() {
            format!("@latest ({})", target.configuration_name)
        } else {
            target.revision_name.clone()
        };
        let tag = if target.tag.is_empty() {
            String::new()
        } else {
            format!(" #{}", target.tag)
        };
        lines.push_str(&format!(
            "  {}% -> {name}{tag}\n",
            target.percent.unwrap_or(0)
        ));
    }
    write_stdout(lines.as_bytes())
}

fn print_route(view: &RouteView) -> anyhow::Result<()> {
    write_stdout(table(std::slice::from_ref(view), false, jiff::Timestamp::now()).as_bytes())
}

fn condition_is(condition: Option<&Condition>, status: &str) -> bool {
    condition.is_some_and(|c| c.status == status)
}

/// Why a Route does not serve `wanted` yet, for the timeout message.
fn why_not(view: Option<&RouteView>, wanted: &[TrafficTarget]) -> String {
    let Some(view) = view else {
        return "the control plane no longer lists it".to_owned();
    };
    if view.spec_traffic != wanted {
        return "the new traffic has not been read yet".to_owned();
    }
    let failing = ["AllTrafficAssigned", "Ready"]
        .into_iter()
        .filter_map(|kind| view.condition(kind))
        .find(|c| c.status != "True");
    match failing {
        Some(c) => format!(
            "{} is {} ({}: {}); serving now: {}",
            c.kind,
            c.status,
            c.reason,
            c.message,
            traffic(&view.traffic)
        ),
        None => "it is not Ready yet".to_owned(),
    }
}

/// Replaces `file` with `text` in one step: a hidden temporary file beside it (which the file
/// source ignores), synced, with the same permissions, renamed over it.
fn write_atomically(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.sluice-rollout-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::set_permissions(&temporary, std::fs::metadata(file)?.permissions())?;
        std::fs::rename(&temporary, file)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| {
            format!(
                "cannot write {} (through {}); nothing was changed",
                file.display(),
                temporary.display()
            )
        });
    }
    Ok(())
}
