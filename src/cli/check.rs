//! `sluice check`: one line per check, and a non-zero exit when any fails.

use clap::Args;
use serde::Serialize;

use sluice::status::IngressView;

use super::output::{self, Output};
use super::{Backend, Dialer, Envoy, Health, SYSTEM_NAMESPACE, Target, proxy};

/// Check that everything serves: one line per check, non-zero exit if any fails.
///
/// Checks, in order: the control plane is healthy and ready; (in a cluster) both proxy
/// Deployments have their replicas available; some Envoy is connected; every connected Envoy
/// has every xDS type SYNCED (no update pending, no NACK); Envoy's `update_rejected` counters
/// are zero; every ingress this control plane owns is Ready (each one that is not is named,
/// with its reason); the newest `config-sluice` ConfigMap is in force (each problem is named,
/// by key).
///
/// Locally the counters come from the Envoy that `sluice up` started, or the one at
/// --envoy-admin-addr; with neither, that check is skipped. In a cluster, health and Envoys
/// come from every sluice replica (see `sluice proxy status`), the counters from every running
/// proxy pod through port-forwards (or --envoy-admin-addr), and the ingresses' readiness from
/// the status the API server holds.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    target: Target,
    /// In a cluster: the namespace of sluice and its proxies.
    #[arg(short, long, default_value = SYSTEM_NAMESPACE)]
    namespace: String,
    /// The admin address of an Envoy whose counters to check, when the control plane does not
    /// know it; in a cluster, instead of port-forwards to the proxy pods.
    #[arg(long, value_name = "HOST:PORT")]
    envoy_admin_addr: Option<String>,
    /// Only the ingresses of this namespace (repeatable), as for a sluice that watches only
    /// some (`serve --namespace`); ClusterIngresses always count. Every namespace by default.
    #[arg(long, value_name = "NS")]
    ingress_namespace: Vec<String>,
    /// table for people; json or yaml for programs (shapes: docs/cli.md).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Ok,
    Fail,
    Skip,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: Verdict,
    message: String,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    checks: Vec<Check>,
}

fn check(name: &'static str, result: Result<String, String>) -> Check {
    let (status, message) = match result {
        Ok(message) => (Verdict::Ok, message),
        Err(message) => (Verdict::Fail, message),
    };
    Check {
        name,
        status,
        message,
    }
}

fn skip(name: &'static str, message: &str) -> Check {
    Check {
        name,
        status: Verdict::Skip,
        message: message.to_owned(),
    }
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let checks = match args.target.connect(&args.namespace).await {
        Ok(backend) => run_checks(&backend, &args).await,
        Err(error) => vec![check("control plane healthy", Err(format!("{error:#}")))],
    };
    let failed = checks.iter().filter(|c| c.status == Verdict::Fail).count();
    let report = Report {
        ok: failed == 0,
        checks,
    };
    output::print(args.output, &report, || {
        report
            .checks
            .iter()
            .map(|c| {
                let status = match c.status {
                    Verdict::Ok => "OK",
                    Verdict::Fail => "FAIL",
                    Verdict::Skip => "SKIP",
                };
                format!("{status:<5} {}: {}\n", c.name, c.message.replace('\n', " "))
            })
            .collect()
    })?;
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", report.checks.len());
    }
    Ok(())
}

/// `problems` as a check's failure, else `ok`.
fn verdict(problems: Vec<String>, ok: String) -> Result<String, String> {
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems.join("; "))
    }
}

async fn run_checks(backend: &Backend, args: &CheckArgs) -> Vec<Check> {
    let health = backend.health().await;
    let mut checks = match &health {
        Err(error) => {
            let error = format!("{error:#}");
            vec![
                check("control plane healthy", Err(error.clone())),
                check("control plane ready", Err(error)),
            ]
        }
        Ok(health) => health_checks(health),
    };
    if let Some(deployments) = backend.proxy_deployments().await {
        checks.push(check("proxy Deployments available", deployments));
    }
    match backend.envoys().await {
        Err(error) => {
            let error = format!("{error:#}");
            checks.push(check("Envoys connected", Err(error.clone())));
            checks.push(check("Envoys in sync", Err(error)));
        }
        Ok(envoys) => checks.extend(envoy_checks(&envoys)),
    }
    const COUNTERS: &str = "Envoy update_rejected counters";
    checks.push(
        match backend.envoy_admins(args.envoy_admin_addr.as_deref()).await {
            Err(error) => check(COUNTERS, Err(format!("{error:#}"))),
            Ok(admins) if admins.is_empty() => skip(
                COUNTERS,
                "no Envoy admin address known; pass --envoy-admin-addr, or use `sluice up` (in a \
             cluster: no proxy pod is running)",
            ),
            Ok(admins) => check(COUNTERS, rejected_counters(&admins).await),
        },
    );
    checks.push(check(
        "ingresses Ready",
        match backend.ingresses(None).await {
            Err(error) => Err(format!("{error:#}")),
            Ok(mut ingresses) => {
                let namespaces = &args.ingress_namespace;
                ingresses.retain(|i| {
                    namespaces.is_empty()
                        || i.namespace.is_empty()
                        || namespaces.contains(&i.namespace)
                });
                ingresses_ready(&ingresses)
            }
        },
    ));
    checks.push(match &health {
        Err(error) => check("gateway options", Err(format!("{error:#}"))),
        Ok(health) => options_check(health),
    });
    checks
}

fn health_checks(health: &[Health]) -> Vec<Check> {
    let mut unhealthy = Vec::new();
    let mut unready = Vec::new();
    for one in health {
        if let Err(error) = &one.healthy {
            unhealthy.push(format!("{}: {error}", one.at));
        }
        if let Err(error) = &one.ready {
            unready.push(format!("{}: {error}", one.at));
        }
    }
    let answering = match health {
        [one] => format!("sluice at {} answers", one.at),
        many => {
            let names: Vec<&str> = many.iter().map(|h| h.at.as_str()).collect();
            format!("{} replicas answer: {}", many.len(), names.join(", "))
        }
    };
    let ready = match health {
        [_] => "the first full load of the source is translated and served".to_owned(),
        many => format!(
            "{} replicas translated and serve the first full load",
            many.len()
        ),
    };
    vec![
        check("control plane healthy", verdict(unhealthy, answering)),
        check("control plane ready", verdict(unready, ready)),
    ]
}

/// Whether every replica has its newest `config-sluice` in force, with any notes on it.
fn options_check(health: &[Health]) -> Check {
    let mut bad_options = Vec::new();
    let mut notes = Vec::new();
    for one in health {
        match &one.options {
            Ok(found) => notes.extend(found.iter().map(|note| format!("{}: {note}", one.at))),
            Err(problems) => bad_options.push(format!("{}: {problems}", one.at)),
        }
    }
    let options = if notes.is_empty() {
        "ConfigMap config-sluice is in force (or absent: the defaults)".to_owned()
    } else {
        format!("in force; note: {}", notes.join("; "))
    };
    check(
        "gateway options",
        verdict(bad_options, options).map_err(|problems| {
            format!("{problems}; the last good options stay in force until it is fixed")
        }),
    )
}

fn envoy_checks(envoys: &[Envoy]) -> [Check; 2] {
    let connected = check(
        "Envoys connected",
        if envoys.is_empty() {
            Err(
                "no Envoy is connected; start one with `sluice up`, or point one at the xDS \
                 address with a `sluice bootstrap` config"
                    .to_owned(),
            )
        } else {
            Ok(format!("{} connected", envoys.len()))
        },
    );
    let unsynced: Vec<String> = envoys
        .iter()
        .flat_map(|envoy| {
            envoy.unsynced().map(|(name, sync)| {
                let why = sync
                    .last_nack
                    .as_ref()
                    .filter(|_| sync.status == "NACKED")
                    .map(|nack| format!(": {}", nack.message.trim()))
                    .unwrap_or_default();
                format!("{} {name} {}{why}", envoy.node, sync.status)
            })
        })
        .collect();
    let in_sync = check(
        "Envoys in sync",
        if unsynced.is_empty() {
            Ok(format!(
                "every type SYNCED on {} Envoy(s), no NACK",
                envoys.len()
            ))
        } else {
            Err(format!(
                "{}; `sluice proxy status` shows each type",
                unsynced.join("; ")
            ))
        },
    );
    [connected, in_sync]
}

/// Whether every `update_rejected` counter of every Envoy admin is zero.
async fn rejected_counters(admins: &[Dialer]) -> Result<String, String> {
    let mut problems = Vec::new();
    let mut zero = Vec::new();
    for admin in admins {
        let address = admin.describe();
        match proxy::envoy_counters(admin, "update_rejected$").await {
            Err(error) => problems.push(format!("{error:#}")),
            Ok(counters) => {
                let rejected: Vec<String> = counters
                    .iter()
                    .filter(|(_, value)| *value > 0)
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect();
                if rejected.is_empty() {
                    zero.push(format!("all {} zero at {address}", counters.len()));
                } else {
                    problems.push(format!("{} at {address}", rejected.join(", ")));
                }
            }
        }
    }
    verdict(problems, zero.join("; "))
}

fn ingresses_ready(ingresses: &[IngressView]) -> Result<String, String> {
    let owned: Vec<_> = ingresses.iter().filter(|i| i.owned).collect();
    let not_ready: Vec<String> = owned
        .iter()
        .filter_map(|ingress| {
            let ready = ingress.condition("Ready");
            if ready.is_some_and(|c| c.status == "True") {
                return None;
            }
            let name = if ingress.namespace.is_empty() {
                format!("clusteringress/{}", ingress.name)
            } else {
                format!("{}/{}", ingress.namespace, ingress.name)
            };
            Some(match ready {
                Some(c) if !c.message.is_empty() => {
                    format!("{name} ({} {}: {})", c.status, c.reason, c.message)
                }
                Some(c) => format!("{name} ({} {})", c.status, c.reason),
                None => format!("{name} (no Ready condition)"),
            })
        })
        .collect();
    if not_ready.is_empty() {
        Ok(format!("{} owned ingress(es) Ready", owned.len()))
    } else {
        Err(format!(
            "{} of {} not Ready: {}",
            not_ready.len(),
            owned.len(),
            not_ready.join("; ")
        ))
    }
}
