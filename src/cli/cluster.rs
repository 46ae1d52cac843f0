//! The cluster backend: sluice in Kubernetes mode, as `sluice install knative` lays it out.
//! Ingresses and their status, the proxies' Services and Deployments come from the API
//! server; what Envoys are connected, and what they are served, from every sluice replica's
//! admin API (each knows only its own streams), found through the EndpointSlices of Service
//! `sluice` and reached through port-forwards or at their pod IPs ([`ReplicaAccess`]). Envoy's
//! own admin interface listens on its pod's loopback, so it is always port-forwarded.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use futures::future::{join_all, try_join_all};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::core::Selector;

use sluice::install::knative::{ADMIN_PORT_NAME, ENVOY_ADMIN_PORT};
use sluice::knative::{
    self, ClusterIngressResource, INGRESS_CLASS_ANNOTATION, IngressResource,
    LEGACY_INGRESS_CLASS_ANNOTATION, RouteResource,
};
use sluice::routes::status::RouteView;
use sluice::status::{self, IngressView, RuleView};

use super::admin_api::{self, AdminApi};
use super::dial::{Dialer, PodPort, kube_error};
use super::local::PROXIES;
use super::model::{Envoy, Health, Proxy, ProxyPort, ServedConfig, ServedTarget};
use super::proxy::Endpoint;
use super::{ReplicaAccess, bracket, envoys_of};

/// sluice's own Service, whose EndpointSlices list the replicas.
const SLUICE_SERVICE: &str = "sluice";

pub struct Cluster {
    client: kube::Client,
    /// The API server's URL, for messages.
    server: String,
    /// The namespace of sluice and its proxies.
    namespace: String,
    ingress_class: String,
    via: ReplicaAccess,
}

/// One sluice replica: its pod (or address) and how to reach its admin port.
struct Replica {
    name: String,
    dialer: Dialer,
}

impl Cluster {
    pub fn new(
        config: kube::Config,
        namespace: &str,
        ingress_class: &str,
        via: ReplicaAccess,
    ) -> Result<Cluster, kube::Error> {
        let server = config.cluster_url.to_string();
        Ok(Cluster {
            client: kube::Client::try_from(config)?,
            server,
            namespace: namespace.to_owned(),
            ingress_class: ingress_class.to_owned(),
            via,
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Every Knative Route, with the status its writer gave it.
    pub async fn routes(&self) -> anyhow::Result<Vec<RouteView>> {
        let routes: Api<RouteResource> = Api::all(self.client.clone());
        let listed = match routes.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) if status.code == 404 => bail!(
                "the API server at {} does not serve Knative's Route (serving.knative.dev/v1): \
                 install Knative Serving, or the CRDs alone with `sluice install crds`",
                self.server
            ),
            other => other.map_err(kube_error).with_context(|| {
                format!(
                    "cannot list Knative Routes from the API server at {}",
                    self.server
                )
            })?,
        };
        Ok(listed.items.iter().map(RouteView::from_resource).collect())
    }

    /// The names of the Services of `namespace`.
    pub async fn services(&self, namespace: &str) -> anyhow::Result<Vec<String>> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let listed = services
            .list_metadata(&ListParams::default())
            .await
            .map_err(kube_error)
            .with_context(|| format!("cannot list the Services of namespace {namespace}"))?;
        Ok(listed
            .items
            .into_iter()
            .filter_map(|service| service.metadata.name)
            .collect())
    }

    pub async fn ingresses(&self, namespace: Option<&str>) -> anyhow::Result<Vec<IngressView>> {
        let ingresses: Api<IngressResource> = match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let listed = match ingresses.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) if status.code == 404 => bail!(
                "the API server at {} does not serve Knative's Ingress ({}/{}): install \
                 Knative Serving, or the CRDs alone with `sluice install crds`",
                self.server,
                knative::API_GROUP,
                knative::API_VERSION
            ),
            other => other.map_err(kube_error).with_context(|| {
                format!(
                    "cannot list Knative Ingresses from the API server at {}",
                    self.server
                )
            })?,
        };
        let mut views: Vec<IngressView> = listed
            .items
            .into_iter()
            .map(|i| self.view("Ingress", i.metadata, &i.spec, i.status.as_ref()))
            .collect();
        // The legacy kind is listed when its CRD is served.
        match Api::<ClusterIngressResource>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            other => views.extend(
                other
                    .map_err(kube_error)
                    .with_context(|| {
                        format!(
                            "cannot list ClusterIngresses from the API server at {}",
                            self.server
                        )
                    })?
                    .items
                    .into_iter()
                    .map(|i| {
                        self.view(
                            "ClusterIngress",
                            i.metadata,
                            &i.spec.spec,
                            i.status.as_ref(),
                        )
                    }),
            ),
        }
        Ok(views)
    }

    /// An ingress as `get ingress` shows it, with the status the API server holds.
    fn view(
        &self,
        kind: &str,
        metadata: ObjectMeta,
        spec: &knative::IngressSpec,
        status: Option<&knative::IngressStatus>,
    ) -> IngressView {
        let annotations = metadata.annotations.unwrap_or_default();
        let class = annotations
            .get(INGRESS_CLASS_ANNOTATION)
            .or_else(|| annotations.get(LEGACY_INGRESS_CLASS_ANNOTATION));
        let balancers = |balancer: Option<&knative::LoadBalancerStatus>| {
            balancer
                .into_iter()
                .flat_map(|b| &b.ingress)
                .filter(|i| !i.domain_internal.is_empty())
                .map(|i| status::LoadBalancer {
                    domain_internal: i.domain_internal.clone(),
                })
                .collect()
        };
        IngressView {
            namespace: metadata.namespace.unwrap_or_default(),
            name: metadata.name.unwrap_or_default(),
            kind: kind.to_owned(),
            owned: class.is_some_and(|c| *c == self.ingress_class),
            rules: spec
                .rules
                .iter()
                .map(|rule| RuleView {
                    hosts: rule.hosts.clone(),
                    visibility: rule.visibility.unwrap_or_default(),
                })
                .collect(),
            labels: metadata.labels.unwrap_or_default(),
            creation_timestamp: metadata.creation_timestamp.map(|t| t.0.to_string()),
            owner: metadata
                .owner_references
                .iter()
                .flatten()
                .find(|owner| owner.controller == Some(true))
                .map(|owner| format!("{}/{}", owner.kind, owner.name)),
            status: status::IngressStatus {
                conditions: status
                    .into_iter()
                    .flat_map(|s| &s.conditions)
                    .map(|c| status::Condition {
                        kind: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                    })
                    .collect(),
                public_load_balancer: balancers(
                    status.and_then(|s| s.public_load_balancer.as_ref()),
                ),
                private_load_balancer: balancers(
                    status.and_then(|s| s.private_load_balancer.as_ref()),
                ),
            },
        }
    }

    /// The Service of proxy `name`.
    async fn service(&self, name: &str) -> anyhow::Result<Service> {
        self.api::<Service>()
            .get_opt(name)
            .await
            .map_err(kube_error)
            .with_context(|| {
                format!(
                    "cannot read Service {}/{name} from the API server at {}",
                    self.namespace, self.server
                )
            })?
            .with_context(|| {
                format!(
                    "could not find Service {name} in namespace {}: is sluice installed there \
                     (`sluice install knative`)? Pass -n for another namespace",
                    self.namespace
                )
            })
    }

    /// glooctl's rules: a LoadBalancer's first ingress (host name, else IP) and the port; a
    /// NodePort's node (the one of its first scheduled pod) and the node port; a ClusterIP's
    /// cluster IP, with a warning.
    pub async fn endpoint(
        &self,
        name: &str,
        port: &str,
        local_cluster: bool,
    ) -> anyhow::Result<Endpoint> {
        let service = self.service(name).await?;
        let spec = service.spec.clone().unwrap_or_default();
        let chosen = service_port(&spec, name, port)?;
        let port_name = chosen.name.clone().unwrap_or_else(|| port.to_owned());
        let kind = if local_cluster {
            "NodePort"
        } else {
            spec.type_.as_deref().unwrap_or("ClusterIP")
        };
        let address = match kind {
            "LoadBalancer" => format!(
                "{}:{}",
                bracket(&load_balancer_host(&service, name)?),
                chosen.port
            ),
            "NodePort" => {
                let node = self.node_of(&service, name).await?;
                let node_port = chosen.node_port.with_context(|| {
                    format!(
                        "port {port_name} of Service {}/{name} has no node port",
                        self.namespace
                    )
                })?;
                format!(
                    "{}:{node_port}",
                    bracket(&node_address(&node, local_cluster)?)
                )
            }
            "ClusterIP" => {
                let ip = cluster_ip(&spec).with_context(|| {
                    format!(
                        "Service {}/{name} is headless: it has no address",
                        self.namespace
                    )
                })?;
                eprintln!(
                    "warning: Service {}/{name} is of type ClusterIP: {ip} takes connections \
                     only from inside the cluster (or through `kubectl port-forward`); a \
                     LoadBalancer or NodePort Service takes them from outside",
                    self.namespace
                );
                format!("{}:{}", bracket(ip), chosen.port)
            }
            other => bail!(
                "Service {}/{name} is of type {other}: it has no address of its own",
                self.namespace
            ),
        };
        Ok(Endpoint::new(&port_name, address))
    }

    /// The node of the first pod (by name) of `service` that is scheduled, as glooctl picks.
    async fn node_of(&self, service: &Service, name: &str) -> anyhow::Result<Node> {
        let selector: Selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        if selector.selects_all() {
            bail!(
                "Service {}/{name} has no selector, so no pod and no node to reach its node \
                 port on",
                self.namespace
            );
        }
        let mut pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels_from(&selector))
            .await
            .map_err(kube_error)
            .with_context(|| format!("cannot list the pods of Service {}/{name}", self.namespace))?
            .items;
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let node = pods
            .iter()
            .find_map(|pod| pod.spec.as_ref()?.node_name.clone())
            .with_context(|| {
                format!(
                    "no node found for {name}'s pods: none of the {} pods of Service {}/{name} \
                     is scheduled; ensure one is deployed (`kubectl -n {} get pods -l \
                     {selector}`)",
                    pods.len(),
                    self.namespace,
                    self.namespace
                )
            })?;
        Api::<Node>::all(self.client.clone())
            .get(&node)
            .await
            .map_err(kube_error)
            .with_context(|| format!("cannot read node {node}, where a pod of {name} runs"))
    }

    /// Where proxy `service` is reached, as far as the API server says, for `get proxy`.
    async fn addresses(&self, service: &Service, name: &str) -> Vec<String> {
        let spec = service.spec.clone().unwrap_or_default();
        match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "LoadBalancer" => service
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
                .collect(),
            "NodePort" => match self.node_of(service, name).await {
                Ok(node) => node_address(&node, false).into_iter().collect(),
                Err(_) => Vec::new(),
            },
            _ => cluster_ip(&spec).map(str::to_owned).into_iter().collect(),
        }
    }

    pub async fn proxies(&self) -> anyhow::Result<Vec<Proxy>> {
        let replicas = self.connect_replicas().await?;
        let envoys = self.envoys_of_replicas(&replicas).await?;
        let listeners = replicas[0].1.server().await?.listeners;
        let mut proxies = Vec::new();
        for (name, groups) in PROXIES {
            let service = self.service(name).await?;
            let spec = service.spec.clone().unwrap_or_default();
            let node_ports = spec.type_.as_deref() == Some("NodePort");
            let ports = spec
                .ports
                .iter()
                .flatten()
                .map(|port| {
                    let port_name = port.name.clone().unwrap_or_default();
                    let listener = listeners
                        .iter()
                        .find(|l| l.proxy == name && l.port_name == port_name);
                    ProxyPort {
                        port: if node_ports {
                            port.node_port
                        } else {
                            Some(port.port)
                        }
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or_default(),
                        name: port_name,
                        listener: listener.map(|l| l.name.clone()).unwrap_or_default(),
                        served: listener.is_some_and(|l| l.served),
                    }
                })
                .collect();
            proxies.push(Proxy {
                name: name.to_owned(),
                namespace: self.namespace.clone(),
                addresses: self.addresses(&service, name).await,
                ports,
                envoys: envoys_of(&envoys, groups),
            });
        }
        Ok(proxies)
    }

    /// Every replica of sluice, from the EndpointSlices of its Service.
    async fn replicas(&self) -> anyhow::Result<Vec<Replica>> {
        let slices = self
            .api::<EndpointSlice>()
            .list(
                &ListParams::default()
                    .labels(&format!("kubernetes.io/service-name={SLUICE_SERVICE}")),
            )
            .await
            .map_err(kube_error)
            .with_context(|| {
                format!(
                    "cannot list the EndpointSlices of Service {}/{SLUICE_SERVICE} from the API \
                     server at {}",
                    self.namespace, self.server
                )
            })?;
        let mut replicas = BTreeMap::new();
        for slice in slices.items {
            let Some(port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
                .and_then(|p| u16::try_from(p.port?).ok())
            else {
                continue;
            };
            for endpoint in slice.endpoints {
                let Some(address) = endpoint.addresses.first() else {
                    continue;
                };
                let pod = endpoint
                    .target_ref
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name);
                let at = format!("{}:{port}", bracket(address));
                let name = pod.clone().unwrap_or_else(|| at.clone());
                let dialer = match (self.via, pod) {
                    (ReplicaAccess::PodIp, _) => Dialer::Tcp(at),
                    (ReplicaAccess::PortForward, Some(pod)) => self.port_forward(pod, port),
                    (ReplicaAccess::PortForward, None) => bail!(
                        "endpoint {address} of Service {}/{SLUICE_SERVICE} names no pod, so it \
                         cannot be port-forwarded; pass --replicas-via pod-ip to dial it",
                        self.namespace
                    ),
                };
                replicas.insert(name.clone(), Replica { name, dialer });
            }
        }
        if replicas.is_empty() {
            bail!(
                "no replica of sluice found: Service {ns}/{SLUICE_SERVICE} has no endpoint with \
                 a port named {ADMIN_PORT_NAME}; is sluice running in namespace {ns} (`kubectl \
                 -n {ns} get pods -l app.kubernetes.io/name=sluice`)? Pass -n if it runs \
                 elsewhere, or --admin-addr for a local control plane",
                ns = self.namespace
            );
        }
        Ok(replicas.into_values().collect())
    }

    /// Every replica's admin API, connected.
    async fn connect_replicas(&self) -> anyhow::Result<Vec<(Replica, AdminApi)>> {
        let replicas = self.replicas().await?;
        let hint = match self.via {
            ReplicaAccess::PortForward => {
                "is that replica running? (--replicas-via pod-ip dials its pod IP instead)"
            }
            ReplicaAccess::PodIp => {
                "is that replica running, and is its pod IP reachable from here? (the default \
                 --replicas-via port-forward goes through the API server)"
            }
        };
        try_join_all(replicas.into_iter().map(async |replica| {
            let api = AdminApi::connect(replica.dialer.clone(), hint)
                .await
                .with_context(|| {
                    format!(
                        "cannot reach sluice replica {} at {}; {hint}",
                        replica.name,
                        replica.dialer.describe()
                    )
                })?;
            anyhow::Ok((replica, api))
        }))
        .await
    }

    async fn envoys_of_replicas(
        &self,
        replicas: &[(Replica, AdminApi)],
    ) -> anyhow::Result<Vec<Envoy>> {
        let per_replica = try_join_all(replicas.iter().map(|(_, api)| api.envoys())).await?;
        let mut envoys: Vec<Envoy> = per_replica.into_iter().flatten().collect();
        envoys.sort_by(|a, b| (&a.node, &a.replica).cmp(&(&b.node, &b.replica)));
        Ok(envoys)
    }

    /// The Envoys of every replica, merged.
    pub async fn envoys(&self) -> anyhow::Result<Vec<Envoy>> {
        let replicas = self.connect_replicas().await?;
        self.envoys_of_replicas(&replicas).await
    }

    /// A node's config from the replica it is connected to; a role's from any replica (they
    /// serve the same snapshot once they converge).
    pub async fn served_config(&self, target: &ServedTarget) -> anyhow::Result<ServedConfig> {
        let replicas = self.connect_replicas().await?;
        for (_, api) in &replicas {
            if let Some(config) = api.served_config(target).await? {
                return Ok(config);
            }
        }
        let names: Vec<&str> = replicas.iter().map(|(r, _)| r.name.as_str()).collect();
        let whom = match target {
            ServedTarget::Node(node) | ServedTarget::Role(node) => node,
        };
        bail!(
            "no Envoy with node id {whom:?} is connected to any replica of sluice ({}); `sluice \
             proxy status` lists the connected Envoys",
            names.join(", ")
        )
    }

    /// `/healthz` and `/readyz` of every replica.
    pub async fn health(&self) -> anyhow::Result<Vec<Health>> {
        let replicas = self.replicas().await?;
        Ok(join_all(replicas.iter().map(|replica| {
            admin_api::health(
                &replica.dialer,
                format!("{} ({})", replica.name, replica.dialer.describe()),
            )
        }))
        .await)
    }

    async fn deployment(&self, name: &str) -> anyhow::Result<Deployment> {
        self.api::<Deployment>()
            .get_opt(name)
            .await
            .map_err(kube_error)
            .with_context(|| {
                format!(
                    "cannot read Deployment {}/{name} from the API server at {}",
                    self.namespace, self.server
                )
            })?
            .with_context(|| {
                format!(
                    "Deployment {name} not found in namespace {}: is sluice installed there \
                     (`sluice install knative`)? Pass -n for another namespace",
                    self.namespace
                )
            })
    }

    /// Whether both proxy Deployments have every replica they ask for available.
    pub async fn proxy_deployments(&self) -> Result<String, String> {
        let mut available = Vec::new();
        let mut problems = Vec::new();
        for (name, _) in PROXIES {
            match self.deployment(name).await {
                Err(error) => problems.push(format!("{error:#}")),
                Ok(deployment) => {
                    let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
                    let ready = deployment
                        .status
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0);
                    if wanted == 0 {
                        problems.push(format!("{name} is scaled to 0 replicas"));
                    } else if ready < wanted {
                        problems.push(format!(
                            "{name}: {ready} of {wanted} replicas available (`kubectl -n {} \
                             describe deployment {name}`)",
                            self.namespace
                        ));
                    } else {
                        available.push(format!("{name} {ready}/{wanted}"));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(format!("{} available", available.join(", ")))
        } else {
            Err(problems.join("; "))
        }
    }

    /// The running pods of proxy Deployment `name`, by name.
    async fn proxy_pods(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let deployment = self.deployment(name).await?;
        let selector: Selector = deployment
            .spec
            .map(|s| s.selector)
            .unwrap_or_default()
            .try_into()
            .with_context(|| format!("the selector of Deployment {name} is not valid"))?;
        let mut pods: Vec<String> = self
            .api::<Pod>()
            .list(&ListParams::default().labels_from(&selector))
            .await
            .map_err(kube_error)
            .with_context(|| {
                format!(
                    "cannot list the pods of Deployment {}/{name}",
                    self.namespace
                )
            })?
            .items
            .into_iter()
            .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|pod| pod.metadata.name)
            .collect();
        pods.sort();
        Ok(pods)
    }

    fn port_forward(&self, pod: String, port: u16) -> Dialer {
        Dialer::PortForward(Box::new(PodPort {
            pods: self.api(),
            namespace: self.namespace.clone(),
            pod,
            port,
        }))
    }

    /// `explicit`, else the Envoy admin of the first running pod of proxy `name`.
    pub async fn envoy_admin(&self, name: &str, explicit: Option<&str>) -> anyhow::Result<Dialer> {
        if let Some(explicit) = explicit {
            return Ok(Dialer::Tcp(explicit.to_owned()));
        }
        let pod = self
            .proxy_pods(name)
            .await?
            .into_iter()
            .next()
            .with_context(|| {
                format!(
                    "no pod of Deployment {ns}/{name} is running, so there is no Envoy to ask \
                 (`kubectl -n {ns} get pods -l app.kubernetes.io/name={name}`)",
                    ns = self.namespace
                )
            })?;
        Ok(self.port_forward(pod, ENVOY_ADMIN_PORT))
    }

    /// `explicit`, else the Envoy admin of every running pod of both proxies.
    pub async fn envoy_admins(&self, explicit: Option<&str>) -> anyhow::Result<Vec<Dialer>> {
        if let Some(explicit) = explicit {
            return Ok(vec![Dialer::Tcp(explicit.to_owned())]);
        }
        let mut dialers = Vec::new();
        for (name, _) in PROXIES {
            dialers.extend(
                self.proxy_pods(name)
                    .await?
                    .into_iter()
                    .map(|pod| self.port_forward(pod, ENVOY_ADMIN_PORT)),
            );
        }
        Ok(dialers)
    }
}

/// The Service's port to use, as glooctl picks it: its only port whatever its name, else the
/// one named `port`.
fn service_port<'a>(
    spec: &'a ServiceSpec,
    service: &str,
    port: &str,
) -> anyhow::Result<&'a ServicePort> {
    let ports = spec.ports.as_deref().unwrap_or_default();
    match ports {
        [] => bail!("Service {service} has no ports"),
        [only] => Ok(only),
        _ => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(port))
            .with_context(|| {
                let names: Vec<&str> = ports.iter().filter_map(|p| p.name.as_deref()).collect();
                format!(
                    "named port {port} not found on service {service}; its ports are {} (--port)",
                    names.join(", ")
                )
            }),
    }
}

/// A LoadBalancer Service's first ingress: its host name, else its IP.
fn load_balancer_host(service: &Service, name: &str) -> anyhow::Result<String> {
    let first = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|ingress| ingress.first());
    let host = first.and_then(|i| {
        i.hostname
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| i.ip.clone().filter(|ip| !ip.is_empty()))
    });
    host.with_context(|| {
        format!(
            "load balancer ingress not found on service {name}: no load balancer has taken it \
             yet (`kubectl get service {name} -o wide` shows EXTERNAL-IP pending); on a cluster \
             without one (minikube, kind) pass --local-cluster to use a node's address"
        )
    })
}

/// A node's ExternalIP, else its InternalIP; with `local_cluster` the InternalIP first.
fn node_address(node: &Node, local_cluster: bool) -> anyhow::Result<String> {
    let order = if local_cluster {
        ["InternalIP", "ExternalIP"]
    } else {
        ["ExternalIP", "InternalIP"]
    };
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    order
        .iter()
        .find_map(|kind| addresses.iter().find(|a| a.type_ == *kind))
        .map(|a| a.address.clone())
        .with_context(|| {
            format!(
                "node {} has no ExternalIP or InternalIP address",
                node.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

fn cluster_ip(spec: &ServiceSpec) -> Option<&str> {
    spec.cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn node(addresses: serde_json::Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": "n1"}, "status": {"addresses": addresses}}),
        )
        .unwrap()
    }

    #[test]
    fn one_port_is_used_whatever_its_name_and_several_are_chosen_by_name() {
        let one = service(json!({"spec": {"ports": [{"name": "web", "port": 80}]}}));
        let spec = one.spec.unwrap();
        assert_eq!(service_port(&spec, "p", "https").unwrap().port, 80);
        let two = service(json!({"spec": {"ports": [
            {"name": "http", "port": 80}, {"name": "https", "port": 443}
        ]}}));
        let spec = two.spec.unwrap();
        assert_eq!(service_port(&spec, "p", "https").unwrap().port, 443);
        let error = service_port(&spec, "p", "grpc").unwrap_err().to_string();
        assert!(
            error.starts_with("named port grpc not found on service p"),
            "{error}"
        );
        assert!(error.contains("http, https"), "{error}");
    }

    #[test]
    fn a_load_balancer_gives_its_host_name_else_its_ip() {
        let both = service(json!({"status": {"loadBalancer": {"ingress": [
            {"hostname": "lb.example.com", "ip": "203.0.113.7"}
        ]}}}));
        assert_eq!(load_balancer_host(&both, "p").unwrap(), "lb.example.com");
        let ip = service(json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}));
        assert_eq!(load_balancer_host(&ip, "p").unwrap(), "203.0.113.7");
        let pending = service(json!({"status": {"loadBalancer": {}}}));
        let error = load_balancer_host(&pending, "p").unwrap_err().to_string();
        assert!(
            error.starts_with("load balancer ingress not found on service p"),
            "{error}"
        );
    }

    #[test]
    fn nodes_give_their_external_ip_unless_the_cluster_is_local() {
        let both = node(json!([
            {"type": "Hostname", "address": "n1"},
            {"type": "InternalIP", "address": "10.0.0.5"},
            {"type": "ExternalIP", "address": "198.51.100.5"}
        ]));
        assert_eq!(node_address(&both, false).unwrap(), "198.51.100.5");
        assert_eq!(node_address(&both, true).unwrap(), "10.0.0.5");
        let internal = node(json!([{"type": "InternalIP", "address": "10.0.0.5"}]));
        assert_eq!(node_address(&internal, false).unwrap(), "10.0.0.5");
        let external = node(json!([{"type": "ExternalIP", "address": "198.51.100.5"}]));
        assert_eq!(node_address(&external, true).unwrap(), "198.51.100.5");
        let neither = node(json!([{"type": "Hostname", "address": "n1"}]));
        assert!(node_address(&neither, false).is_err());
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(bracket("fd00::1"), "[fd00::1]");
        assert_eq!(bracket("lb.example.com"), "lb.example.com");
    }
}
