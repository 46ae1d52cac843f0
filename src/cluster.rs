//! Reaching the API server: the client every Kubernetes-mode part shares, configured the way
//! kubectl finds a cluster.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Where to find the cluster: `--kubeconfig` and `--context`, as kubectl spells them.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot find a Kubernetes cluster: {tried}; pass --kubeconfig FILE (and --context NAME), \
         set KUBECONFIG, or run sluice in a pod"
    )]
    NotFound { tried: String },
    #[error("cannot read the kubeconfig {}: {source}", .path.display())]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot use context {context:?} of the kubeconfig: {source}")]
    Context {
        context: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

impl ClusterOptions {
    /// The client configuration: an explicit `--kubeconfig`/`--context` wins; else the pod's
    /// service account when running in a cluster; else `$KUBECONFIG` or `~/.kube/config`.
    pub async fn config(&self) -> Result<Config, ClusterError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        if let Some(path) = &self.kubeconfig {
            return from_file(path, &options).await;
        }
        let mut tried = Vec::new();
        if self.context.is_none() {
            match Config::incluster() {
                Ok(config) => return Ok(config),
                Err(error) => tried.push(format!("in-cluster configuration ({error})")),
            }
        }
        match Config::from_kubeconfig(&options).await {
            Ok(config) => Ok(config),
            Err(error) => {
                let where_ = std::env::var("KUBECONFIG")
                    .map(|k| format!("KUBECONFIG={k}"))
                    .unwrap_or_else(|_| "~/.kube/config".to_owned());
                tried.push(format!("{where_} ({error})"));
                Err(ClusterError::NotFound {
                    tried: tried.join("; "),
                })
            }
        }
    }

    pub async fn client(&self) -> Result<Client, ClusterError> {
        Ok(Client::try_from(self.config().await?)?)
    }
}

async fn from_file(path: &Path, options: &KubeConfigOptions) -> Result<Config, ClusterError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| ClusterError::Kubeconfig {
        path: path.to_owned(),
        source,
    })?;
    Config::from_custom_kubeconfig(kubeconfig, options)
        .await
        .map_err(|source| ClusterError::Context {
            context: options.context.clone().unwrap_or_default(),
            source,
        })
}
