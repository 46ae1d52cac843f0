//! `sluice install crds|knative`: print the manifests (`--dry-run`), or apply them to the
//! cluster with server-side apply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use sluice::install::{self, certs, knative};

use super::ClusterArgs;

#[derive(Debug, Subcommand)]
pub enum InstallCommand {
    /// The Knative `Ingress` and legacy `ClusterIngress` CRDs, and Serving's `Route` and
    /// `Configuration` (for `serve --serve-routes`), for clusters without Knative Serving. A CRD
    /// that is already installed by someone else (Knative Serving) is left alone.
    Crds(CrdArgs),
    /// sluice beside its two Envoy proxies in a Knative cluster: the namespace, sluice's
    /// Deployment (2 replicas) and Service, the Deployments, Services and bootstraps of
    /// knative-external-proxy and knative-internal-proxy, least-privilege RBAC, and Knative
    /// Serving's config-network selecting sluice's ingress class. xDS is mutual TLS with the
    /// certificates of the Secrets sluice-xds-server and sluice-xds-client: without --dry-run
    /// it makes them as `install xds-certs` does, applies the rest and waits until the
    /// Deployments are available. The --dry-run manifests name the Secrets and hold no key.
    Knative(KnativeArgs),
    /// The certificates of xDS over mutual TLS: a new CA, and the Secrets sluice-xds-server
    /// (sluice's certificate for its Service's names, with its key and the CA) and
    /// sluice-xds-client (the proxies' client certificate, key and CA), made only when neither
    /// exists: Secrets already there, e.g. from cert-manager, are never changed.
    XdsCerts(XdsCertArgs),
}

#[derive(Debug, Args)]
pub struct XdsCertArgs {
    /// Print the Secrets, private keys included, instead of creating them.
    #[arg(long)]
    dry_run: bool,
    /// The namespace of sluice and its proxies.
    #[arg(long, short = 'n', default_value = "gloo-system")]
    namespace: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Print the manifests instead of applying them.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct KnativeArgs {
    /// Print the manifests instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: write one file per part, and a kustomization.yaml, into this directory
    /// instead of printing.
    #[arg(long, value_name = "DIR", requires = "dry_run")]
    output_dir: Option<PathBuf>,
    /// The namespace of sluice and its proxies.
    #[arg(long, short = 'n', default_value = "gloo-system")]
    namespace: String,
    /// sluice's container image (build it with the repository's Dockerfile).
    #[arg(long)]
    image: Option<String>,
    /// Run sluice with `--serve-routes` (Knative Routes without Knative Serving), with the
    /// permissions that needs and Knative's namespace for config-domain.
    #[arg(long)]
    serve_routes: bool,
    /// How long to wait for the Deployments to become available.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    timeout: u64,
    #[command(flatten)]
    cluster: ClusterArgs,
}

pub async fn run(command: InstallCommand) -> anyhow::Result<()> {
    match command {
        InstallCommand::Crds(args) => {
            let crds = install::crds();
            if args.dry_run {
                print!("{}", install::to_yaml(&crds));
                return Ok(());
            }
            let client = args.cluster.client().await?;
            let (ours, foreign) = install::crds_to_apply(&client).await?;
            for name in &foreign {
                eprintln!(
                    "note: {name} was installed by someone else (Knative Serving?); left as it is"
                );
            }
            install::apply(&client, &ours).await?;
            println!("applied {} CRDs", ours.len());
            Ok(())
        }
        InstallCommand::Knative(args) => knative(args).await,
        InstallCommand::XdsCerts(args) => xds_certs(args).await,
    }
}

fn today() -> jiff::civil::Date {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
}

async fn xds_certs(args: XdsCertArgs) -> anyhow::Result<()> {
    if args.dry_run {
        eprintln!(
            "note: these Secrets hold private keys; keep the output where only the cluster's \
             administrators can read it"
        );
        print!(
            "{}",
            install::to_yaml(&certs::generate(&args.namespace, today())?)
        );
        return Ok(());
    }
    let client = args.cluster.client().await?;
    let options = knative::KnativeInstall {
        namespace: args.namespace.clone(),
        ..knative::KnativeInstall::default()
    };
    install::apply(&client, &[knative::namespace(&options)]).await?;
    ensure_xds_certs(&client, &args.namespace).await
}

async fn ensure_xds_certs(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let secrets = format!("{} and {}", certs::SERVER_SECRET, certs::CLIENT_SECRET);
    match certs::ensure(client, namespace, today()).await? {
        certs::Ensured::Created { until } => println!(
            "created the Secrets {secrets} in namespace {namespace}: a new CA, valid until \
             {until}"
        ),
        certs::Ensured::Existing => {
            println!("the Secrets {secrets} exist in namespace {namespace}; left as they are")
        }
    }
    Ok(())
}

async fn knative(args: KnativeArgs) -> anyhow::Result<()> {
    let mut options = knative::KnativeInstall {
        namespace: args.namespace.clone(),
        serve_routes: args.serve_routes,
        ..knative::KnativeInstall::default()
    };
    if let Some(image) = args.image {
        options.image = image;
    }
    let parts = knative::manifests(&options);
    if args.dry_run {
        eprintln!(
            "note: sluice and its proxies mount the Secrets {} and {}; make them with \
             `sluice install xds-certs -n {}` or cert-manager (docs/security.md)",
            certs::SERVER_SECRET,
            certs::CLIENT_SECRET,
            args.namespace
        );
        match args.output_dir {
            Some(dir) => write_parts(&dir, &parts)?,
            None => {
                let all: Vec<_> = parts.into_iter().flat_map(|(_, objects)| objects).collect();
                print!("{}", install::to_yaml(&all));
            }
        }
        return Ok(());
    }
    let client = args.cluster.client().await?;
    let has_serving = install::has_namespace(&client, "knative-serving").await?;
    let mut objects = Vec::new();
    for (_, part) in parts {
        for object in part {
            if knative::is_serving_config(&object) && !has_serving {
                eprintln!(
                    "note: namespace knative-serving does not exist, so Knative Serving's \
                     config-network was not set; once Serving is installed, set its \
                     ingress-class to {}",
                    knative::INGRESS_CLASS
                );
                continue;
            }
            objects.push(object);
        }
    }
    // The namespace first, then the Secrets, so that no pod starts without its certificates.
    let (namespaces, rest): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|object| object["kind"] == "Namespace");
    install::apply(&client, &namespaces).await?;
    ensure_xds_certs(&client, &args.namespace).await?;
    install::apply(&client, &rest).await?;
    println!(
        "applied {} objects in namespace {}",
        namespaces.len() + rest.len(),
        args.namespace
    );
    let deployments = ["sluice", knative::EXTERNAL_PROXY, knative::INTERNAL_PROXY];
    println!(
        "waiting for the Deployments {} to be available",
        deployments.join(", ")
    );
    install::wait_available(
        &client,
        &args.namespace,
        &deployments,
        Duration::from_secs(args.timeout),
    )
    .await?;
    println!("sluice is installed");
    Ok(())
}

/// One YAML file per part, and a kustomization listing them in order.
fn write_parts(dir: &Path, parts: &[(&str, Vec<serde_json::Value>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut kustomization = String::from(
        "# Made by `sluice install knative --dry-run --output-dir`; edit the flags, not the files.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for (file, objects) in parts {
        let path = dir.join(file);
        std::fs::write(&path, install::to_yaml(objects))
            .with_context(|| format!("cannot write {}", path.display()))?;
        kustomization.push_str(&format!("- {file}\n"));
    }
    let path = dir.join("kustomization.yaml");
    std::fs::write(&path, kustomization)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
