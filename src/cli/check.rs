//! `sluice check`: one line per check, and a non-zero exit when any fails.

use clap::Args;
use serde::Serialize;

use super::output::{self, Output};
use super::{Backend, Target, proxy};

/// Check that everything serves: one line per check, non-zero exit if any fails.
///
/// Checks, in order: the control plane is healthy and ready; some Envoy is connected; every
/// connected Envoy has every xDS type SYNCED (no update pending, no NACK); Envoy's
/// `update_rejected` counters are zero; every ingress this control plane owns is Ready (each
/// one that is not is named, with its reason).
///
/// Locally the counters come from the Envoy that `sluice up` started, or the one at
/// --envoy-admin-addr; with neither, that check is skipped.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    target: Target,
    /// The admin address of an Envoy whose counters to check, when the control plane does not
    /// know it.
    #[arg(long, value_name = "HOST:PORT")]
    envoy_admin_addr: Option<String>,
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

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let checks = match args.target.connect().await {
        Ok(backend) => run_checks(&backend, args.envoy_admin_addr.as_deref()).await?,
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

async fn run_checks(backend: &Backend, envoy_admin: Option<&str>) -> anyhow::Result<Vec<Check>> {
    let health = backend.health().await?;
    let mut checks = vec![
        check(
            "control plane healthy",
            health
                .healthy
                .map(|()| format!("sluice at {} answers", health.at)),
        ),
        check(
            "control plane ready",
            health
                .ready
                .map(|()| "the first full load of the source is translated and served".to_owned()),
        ),
    ];
    let envoys = backend.envoys().await?;
    checks.push(check(
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
    ));
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
    checks.push(check(
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
    ));
    checks.push(match backend.envoy_admin("", envoy_admin).await? {
        None => Check {
            name: "Envoy update_rejected counters",
            status: Verdict::Skip,
            message: "no Envoy admin address known; pass --envoy-admin-addr, or use `sluice up`"
                .to_owned(),
        },
        Some(address) => check(
            "Envoy update_rejected counters",
            match proxy::envoy_counters(&address, "update_rejected$").await {
                Err(error) => Err(format!("{error:#}")),
                Ok(counters) => {
                    let rejected: Vec<String> = counters
                        .iter()
                        .filter(|(_, value)| *value > 0)
                        .map(|(name, value)| format!("{name}={value}"))
                        .collect();
                    if rejected.is_empty() {
                        Ok(format!("all {} zero at {address}", counters.len()))
                    } else {
                        Err(format!("{} at {address}", rejected.join(", ")))
                    }
                }
            },
        ),
    });
    let ingresses = backend.ingresses().await?;
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
    checks.push(check(
        "ingresses Ready",
        if not_ready.is_empty() {
            Ok(format!("{} owned ingress(es) Ready", owned.len()))
        } else {
            Err(format!(
                "{} of {} not Ready: {}",
                not_ready.len(),
                owned.len(),
                not_ready.join("; ")
            ))
        },
    ));
    Ok(checks)
}
