//! A fleet of ADS clients against one `sluice serve --dir`: the time from a file change to every
//! stream having ACKed it, and sluice's memory per stream.
//!
//! `cargo bench --bench fleet -- [--sizes 1,1000,5000] [--streams 1000] [--rounds 10] [--delta]
//! [--concurrent-syncs N]` (the last is passed to `sluice serve`)
//!
//! Each client opens its own connection and subscribes the way Envoy does: CDS and LDS by
//! wildcard, SRDS by wildcard once listeners arrive, then EDS for the EDS clusters CDS names and
//! RDS for the route configurations the scopes name. It ACKs every response at once (never a
//! NACK). Half the streams have the external proxy's role, half the internal one's.
//!
//! Per size it writes N ingresses (an ExternalIP and a ClusterLocal host, each with its own
//! Service and Endpoints), starts sluice (the release build), reads its RSS, connects the
//! streams, waits until every stream holds every host's route configuration, reads the RSS
//! again, then alternates two kinds of change `--rounds` times each: a new ingress file renamed
//! into the directory, and a new split of an existing ingress (its two route configurations
//! change), and reads the RSS a last time 1.5 s after the last change. A change is converged
//! on a stream when that stream has ACKed the route configuration carrying it;
//! make-before-break means its cluster and endpoints were ACKed before. Clients share one
//! process and the machine's cores with sluice, so each change's times include the clients'
//! work; "sluice CPU" is the CPU time sluice itself used per change, from /proc.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{Extension, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use prost::Message;
use sluice::xds::TypeUrl;
use tokio::sync::{mpsc, watch};

// The load client must not be what the measurement measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLASS: &str = "sluice.ingress.networking.knative.dev";
const EXTERNAL: &str = "gloo-system~knative-external-proxy";
const INTERNAL: &str = "gloo-system~knative-internal-proxy";

struct Options {
    sizes: Vec<usize>,
    streams: usize,
    rounds: usize,
    delta: bool,
    concurrent_syncs: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        sizes: vec![1, 1000, 5000],
        streams: 1000,
        rounds: 10,
        delta: false,
        concurrent_syncs: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().unwrap_or_else(|| panic!("{arg} {what}"));
        match arg.as_str() {
            "--sizes" => {
                options.sizes = value("N,N,...")
                    .split(',')
                    .map(|n| n.parse().expect("a size"))
                    .collect();
            }
            "--streams" => options.streams = value("N").parse().expect("a count"),
            "--rounds" => options.rounds = value("N").parse().expect("a count"),
            "--delta" => options.delta = true,
            "--concurrent-syncs" => options.concurrent_syncs = Some(value("N")),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    options
}

/// Ingress `name` with its ExternalIP and ClusterLocal hosts, split over `splits` (service,
/// percent), and Service and Endpoints `name`.
fn manifest(name: &str, splits: &[(&str, u32)]) -> String {
    let splits: String = splits
        .iter()
        .map(|(service, percent)| {
            format!("        - {{serviceName: {service}, servicePort: 80, percent: {percent}}}\n")
        })
        .collect();
    format!(
        "apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  annotations: {{networking.knative.dev/ingress.class: {CLASS}}}
spec:
  rules:
  - hosts: [{name}.default.example.com]
    visibility: ExternalIP
    http:
      paths:
      - splits:
{splits}  - hosts: [{name}.default.svc.cluster.local]
    visibility: ClusterLocal
    http:
      paths:
      - splits:
{splits}---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: default}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: 8080}}]
"
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The CPU time a process has used, all threads, in seconds (at Linux's 100 ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command, which may hold spaces, from the state on: utime and stime
    // are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Full-state responses decoded once for every stream, by type and version (the same version is
/// the same set).
#[derive(Default)]
struct Decoded {
    sets: HashMap<(TypeUrl, String), Arc<DecodedSet>>,
}

/// A full-state set of a feeding type: the names its resources make a client subscribe to, in
/// order, as the bytes every stream's requests share.
struct DecodedSet {
    wants: Arc<Vec<Bytes>>,
}

/// What the client needs of one resource: its name, a content key, and what it makes the
/// client subscribe to (an EDS cluster's endpoints, a scope's route configuration).
#[derive(Clone)]
struct Item {
    name: String,
    content: u64,
    wants: Option<String>,
}

fn content_key(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn decode(type_url: TypeUrl, any: &Any) -> Item {
    let bytes = any.value.as_slice();
    let (name, wants) = match type_url {
        TypeUrl::Cluster => {
            let cluster = Cluster::decode(bytes).expect("a Cluster");
            let eds = cluster.cluster_discovery_type
                == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            let wants = eds.then(|| cluster.name.clone());
            (cluster.name, wants)
        }
        TypeUrl::ScopedRouteConfiguration => {
            let scope = ScopedRouteConfiguration::decode(bytes).expect("a scope");
            (scope.name, Some(scope.route_configuration_name))
        }
        TypeUrl::ClusterLoadAssignment => (
            ClusterLoadAssignment::decode(bytes)
                .expect("endpoints")
                .cluster_name,
            None,
        ),
        TypeUrl::RouteConfiguration => (
            RouteConfiguration::decode(bytes).expect("routes").name,
            None,
        ),
        TypeUrl::Listener | TypeUrl::Secret => (String::new(), None),
    };
    Item {
        name,
        content: content_key(bytes),
        wants,
    }
}

/// The change a round waits for, and the streams' times of reaching it.
#[derive(Clone)]
struct Round {
    id: usize,
    goal: Goal,
}

#[derive(Clone)]
enum Goal {
    /// The route configurations of this ingress's hosts are held (any version).
    Holds(String),
    /// The route configurations of this ingress's hosts have each been held in this many
    /// distinct versions.
    Versions(String, usize),
}

/// What every stream reports to the coordinator.
struct Board {
    /// Per stream: the round it last converged on, and when.
    converged: Mutex<Vec<(usize, Instant)>>,
}

/// The route configurations one client holds, by name: content key and how many distinct
/// versions it has held.
struct Routes {
    role: &'static str,
    held: HashMap<String, (u64, usize)>,
}

impl Routes {
    /// The route configurations held for an ingress's host: named by the host, or by the
    /// listener kind and the host when the host's external and internal routes differ.
    fn of(&self, ingress: &str) -> Vec<&(u64, usize)> {
        let host = if self.role == EXTERNAL {
            format!("{ingress}.default.example.com")
        } else {
            format!("{ingress}.default.svc.cluster.local")
        };
        [format!("external/{host}"), host]
            .iter()
            .filter_map(|name| self.held.get(name))
            .collect()
    }

    fn reached(&self, goal: &Goal) -> bool {
        let routes = match goal {
            Goal::Holds(ingress) | Goal::Versions(ingress, _) => self.of(ingress),
        };
        match goal {
            Goal::Holds(_) => !routes.is_empty(),
            Goal::Versions(_, count) => {
                !routes.is_empty() && routes.iter().all(|(_, versions)| versions >= count)
            }
        }
    }

    fn apply(&mut self, items: &[Item], removed: &[String]) {
        for name in removed {
            self.held.remove(name);
        }
        for item in items {
            let entry = self
                .held
                .entry(item.name.clone())
                .or_insert((item.content, 0));
            if entry.1 == 0 || entry.0 != item.content {
                *entry = (item.content, entry.1 + 1);
            }
        }
    }

    /// Forgets the route configurations named before and not now (both in order).
    fn unsubscribed(&mut self, before: &[Bytes], now: &[Bytes]) {
        let mut now = now.iter().peekable();
        for name in before {
            while now.next_if(|n| *n < name).is_some() {}
            if now.peek() != Some(&name) {
                self.held
                    .remove(std::str::from_utf8(name).expect("a UTF-8 name"));
            }
        }
    }
}

fn node(index: usize, role: &str) -> Node {
    Node {
        id: format!("fleet-{index}"),
        cluster: "fleet".to_owned(),
        metadata: Some(Struct {
            fields: [(
                "role".to_owned(),
                Value {
                    kind: Some(Kind::StringValue(role.to_owned())),
                },
            )]
            .into(),
        }),
        user_agent_name: "envoy".to_owned(),
        extensions: envoy_extensions(),
        ..Default::default()
    }
}

/// As many extensions as Envoy 1.40 lists in its node (516, 428 type URLs, about 100 KB in
/// its admin's JSON), so that a stream's first request is the size of a real Envoy's.
fn envoy_extensions() -> Vec<Extension> {
    (0..516)
        .map(|i| Extension {
            name: format!("envoy.filters.synthetic.extension_{i:03}"),
            category: format!("envoy.synthetic.category_{:03}", i % 108),
            type_urls: (i < 428)
                .then(|| format!("envoy.extensions.synthetic.v3.ExtensionNumber{i:03}"))
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .collect()
}

/// How often a client starts its stream again before it gives up.
const RECONNECTS: usize = 20;

struct Shared {
    reconnects: AtomicUsize,
    decoded: Mutex<Decoded>,
    board: Board,
    round: watch::Receiver<Option<Round>>,
}

impl Shared {
    fn report(&self, index: usize, routes: &Routes) {
        let Some(round) = self.round.borrow().clone() else {
            return;
        };
        if routes.reached(&round.goal) {
            let mut converged = self.board.converged.lock().unwrap();
            if converged[index].0 != round.id {
                converged[index] = (round.id, Instant::now());
            }
        }
    }

    /// A full-state set, and the names it makes a client subscribe to, decoded once for every
    /// stream that gets the same version.
    fn decode_set(&self, type_url: TypeUrl, version: &str, resources: &[Bytes]) -> Arc<DecodedSet> {
        let key = (type_url, version.to_owned());
        if let Some(set) = self.decoded.lock().unwrap().sets.get(&key) {
            return set.clone();
        }
        let wants: BTreeSet<String> = resources
            .iter()
            .filter_map(|r| decode(type_url, &any(r)).wants)
            .collect();
        let set = Arc::new(DecodedSet {
            wants: Arc::new(wants.into_iter().map(Bytes::from).collect()),
        });
        self.decoded
            .lock()
            .unwrap()
            .sets
            .insert(key, Arc::clone(&set));
        set
    }
}

fn any(encoded: &Bytes) -> Any {
    Any::decode(encoded.clone()).expect("an Any")
}

/// Envoy's `DiscoveryRequest` as the SotW clients send it, with the names as bytes the clients
/// share: a thousand clients each naming a thousand clusters in every EDS ACK made the load
/// client, not sluice, most of what a change cost. Same fields, same wire format.
#[derive(Clone, PartialEq, prost::Message)]
struct SharedNamesRequest {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, optional, tag = "2")]
    node: Option<Node>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    resource_names: Vec<Bytes>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    response_nonce: String,
}

/// Envoy's `DiscoveryResponse` with its resources left encoded (slices of the received
/// message): a client decodes a full-state set only for the first stream that gets it.
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// The type whose resources name those of another: CDS names EDS, SRDS names RDS.
fn feeds(type_url: TypeUrl) -> Option<TypeUrl> {
    match type_url {
        TypeUrl::Cluster => Some(TypeUrl::ClusterLoadAssignment),
        TypeUrl::ScopedRouteConfiguration => Some(TypeUrl::RouteConfiguration),
        _ => None,
    }
}

async fn connect(addr: String) -> Result<tonic::transport::Channel, tonic::Status> {
    tonic::transport::Endpoint::from_shared(addr)
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

async fn sotw_client(
    index: usize,
    role: &'static str,
    addr: String,
    shared: Arc<Shared>,
) -> Result<(), tonic::Status> {
    let mut client = tonic::client::Grpc::new(connect(addr).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel::<SharedNamesRequest>();
    let request =
        |type_url: TypeUrl, names: Vec<Bytes>, version: String, nonce: String| SharedNamesRequest {
            type_url: type_url.as_str().to_owned(),
            resource_names: names,
            version_info: version,
            response_nonce: nonce,
            node: None,
        };
    let mut first = request(TypeUrl::Cluster, vec![], String::new(), String::new());
    first.node = Some(node(index, role));
    tx.send(first).ok();
    tx.send(request(
        TypeUrl::Listener,
        vec![],
        String::new(),
        String::new(),
    ))
    .ok();
    let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut inbound = client
        .streaming(
            tonic::Request::new(outbound),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            ),
            tonic_prost::ProstCodec::<SharedNamesRequest, EncodedResponse>::default(),
        )
        .await?
        .into_inner();
    let mut routes = Routes {
        role,
        held: HashMap::new(),
    };
    // Per type: the subscribed names, the last accepted version and nonce.
    let mut subscribed: BTreeMap<TypeUrl, (Arc<Vec<Bytes>>, String, String)> = BTreeMap::new();
    // Envoy names a type's resources in an order of its own, not sorted (newest first, with
    // Envoy 1.40); names in reverse order stand for it.
    let names_of = |names: &Arc<Vec<Bytes>>| names.iter().rev().cloned().collect();
    while let Some(response) = inbound.message().await? {
        let response: EncodedResponse = response;
        let type_url = TypeUrl::parse(&response.type_url).expect("a served type");
        let entry = subscribed.entry(type_url).or_default();
        entry.1 = response.version_info.clone();
        entry.2 = response.nonce.clone();
        let ack = request(
            type_url,
            names_of(&entry.0),
            response.version_info.clone(),
            response.nonce.clone(),
        );
        if type_url == TypeUrl::RouteConfiguration {
            let items: Vec<Item> = response
                .resources
                .iter()
                .map(|r| decode(type_url, &any(r)))
                .collect();
            routes.apply(&items, &[]);
        }
        tx.send(ack).ok();
        if type_url == TypeUrl::Listener
            && !subscribed.contains_key(&TypeUrl::ScopedRouteConfiguration)
        {
            subscribed.insert(TypeUrl::ScopedRouteConfiguration, Default::default());
            tx.send(request(
                TypeUrl::ScopedRouteConfiguration,
                vec![],
                String::new(),
                String::new(),
            ))
            .ok();
        }
        if let Some(fed) = feeds(type_url) {
            let set = shared.decode_set(type_url, &response.version_info, &response.resources);
            let entry = subscribed.entry(fed).or_default();
            if !Arc::ptr_eq(&entry.0, &set.wants) && entry.0 != set.wants {
                let before = std::mem::replace(&mut entry.0, set.wants.clone());
                tx.send(request(
                    fed,
                    names_of(&entry.0),
                    entry.1.clone(),
                    entry.2.clone(),
                ))
                .ok();
                if fed == TypeUrl::RouteConfiguration {
                    routes.unsubscribed(&before, &entry.0);
                }
            }
        }
        if type_url == TypeUrl::RouteConfiguration {
            shared.report(index, &routes);
        }
    }
    Ok(())
}

async fn delta_client(
    index: usize,
    role: &'static str,
    addr: String,
    shared: Arc<Shared>,
) -> Result<(), tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(connect(addr).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let request = |type_url: TypeUrl| DeltaDiscoveryRequest {
        type_url: type_url.as_str().to_owned(),
        ..Default::default()
    };
    let mut first = request(TypeUrl::Cluster);
    first.node = Some(node(index, role));
    tx.send(first).ok();
    tx.send(request(TypeUrl::Listener)).ok();
    let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let mut inbound = client
        .delta_aggregated_resources(outbound)
        .await?
        .into_inner();
    let mut routes = Routes {
        role,
        held: HashMap::new(),
    };
    // Per feeding type: what each of its resources makes the client subscribe to.
    let mut wants: BTreeMap<TypeUrl, HashMap<String, String>> = BTreeMap::new();
    let mut srds_subscribed = false;
    while let Some(response) = inbound.message().await? {
        let response: DeltaDiscoveryResponse = response;
        let type_url = TypeUrl::parse(&response.type_url).expect("a served type");
        let mut ack = request(type_url);
        ack.response_nonce = response.nonce.clone();
        tx.send(ack).ok();
        if type_url == TypeUrl::Listener && !srds_subscribed {
            srds_subscribed = true;
            tx.send(request(TypeUrl::ScopedRouteConfiguration)).ok();
        }
        let items = || {
            response.resources.iter().filter_map(|r| {
                let mut item = decode(type_url, r.resource.as_ref()?);
                item.name = r.name.clone();
                Some(item)
            })
        };
        if type_url == TypeUrl::RouteConfiguration {
            routes.apply(&items().collect::<Vec<_>>(), &response.removed_resources);
            shared.report(index, &routes);
        }
        let Some(fed) = feeds(type_url) else {
            continue;
        };
        let wanted = wants.entry(type_url).or_default();
        let mut gone: BTreeSet<String> = response
            .removed_resources
            .iter()
            .filter_map(|name| wanted.remove(name))
            .collect();
        let mut added = BTreeSet::new();
        for item in items() {
            let previous = wanted.remove(&item.name);
            if let Some(want) = item.wants {
                if previous.as_ref() != Some(&want) {
                    added.insert(want.clone());
                }
                wanted.insert(item.name, want);
            }
            gone.extend(previous);
        }
        // A name another resource still wants stays subscribed.
        gone.retain(|name| !added.contains(name) && !wanted.values().any(|w| w == name));
        if added.is_empty() && gone.is_empty() {
            continue;
        }
        if fed == TypeUrl::RouteConfiguration {
            for name in &gone {
                routes.held.remove(name);
            }
        }
        let mut change = request(fed);
        change.resource_names_subscribe = added.into_iter().collect();
        change.resource_names_unsubscribe = gone.into_iter().collect();
        tx.send(change).ok();
    }
    Ok(())
}

struct Sluice {
    child: Child,
    xds: u16,
    admin: u16,
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sluice(dir: &Path, log: &Path, concurrent_syncs: Option<&str>) -> Sluice {
    let (xds, admin) = (free_port(), free_port());
    let log = std::fs::File::create(log).expect("a log file");
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--dir"])
        .arg(dir)
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--listen-address", "127.0.0.1"])
        .args(
            concurrent_syncs
                .map(|n| ["--concurrent-syncs", n])
                .into_iter()
                .flatten(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sluice starts");
    Sluice { child, xds, admin }
}

async fn ready(admin: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let answer = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await;
        if let Ok(mut stream) = answer {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut body = String::new();
            let _ = stream.read_to_string(&mut body).await;
            if body.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Waits until every stream reported the current round, or `limit` passes; returns when each
/// converged.
/// When the last of `streams` streams converged on round `id`, or an error if some did not
/// within `limit`.
async fn wait_round(
    shared: &Shared,
    id: usize,
    streams: usize,
    limit: Duration,
) -> Result<Instant, String> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let converged = shared.board.converged.lock().unwrap();
            let done: Vec<Instant> = converged
                .iter()
                .filter(|(round, _)| *round == id)
                .map(|(_, at)| *at)
                .collect();
            if done.len() == streams {
                return done
                    .into_iter()
                    .max()
                    .ok_or_else(|| "no streams to wait for".to_owned());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "round {id}: only {} of {streams} streams converged within {limit:?}",
                    done.len()
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct Measured {
    reconnects: usize,
    size: usize,
    streams: usize,
    connect_to_synced: Duration,
    rss_before: f64,
    rss_synced: f64,
    rss_after_changes: f64,
    new_ingress: Vec<f64>,
    split: Vec<f64>,
    /// sluice's CPU seconds over the changes of each kind, summed.
    cpu_new_ingress: f64,
    cpu_split: f64,
}

fn write_atomically(dir: &Path, staging: &Path, name: &str, content: &str) {
    let path = staging.join(name);
    std::fs::write(&path, content).expect("a staged manifest");
    std::fs::rename(&path, dir.join(name)).expect("the manifest renamed in");
}

async fn run(size: usize, options: &Options) -> Result<Measured, String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = work.path().join("manifests");
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
    for i in 0..size {
        let name = format!("svc-{i}");
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            manifest(&name, &[(&name, 100)]),
        )
        .map_err(|e| e.to_string())?;
    }
    // The split change needs a second Service beside the first ingress's.
    write_atomically(
        &dir,
        &staging,
        "split-target.yaml",
        &manifest("split-target", &[("split-target", 100)]),
    );
    let log: PathBuf = work.path().join("sluice.log");
    let sluice = start_sluice(&dir, &log, options.concurrent_syncs.as_deref());
    if !ready(sluice.admin, Duration::from_secs(120)).await {
        return Err(format!(
            "sluice was not ready within 120 s; see {}",
            log.display()
        ));
    }
    // Let the first load's garbage settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_mib(sluice.child.id());

    let (round_tx, round_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        reconnects: AtomicUsize::new(0),
        decoded: Mutex::default(),
        board: Board {
            converged: Mutex::new(vec![(usize::MAX, Instant::now()); options.streams]),
        },
        round: round_rx,
    });
    let addr = format!("http://127.0.0.1:{}", sluice.xds);
    // Round 0: the initial sync, every stream holding the last ingress's routes.
    let mut round_id = 0;
    round_tx.send_replace(Some(Round {
        id: round_id,
        goal: Goal::Holds(format!("svc-{}", size - 1)),
    }));
    let connecting = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..options.streams {
        let role = if index % 2 == 0 { EXTERNAL } else { INTERNAL };
        let (addr, shared) = (addr.clone(), shared.clone());
        let delta = options.delta;
        clients.spawn(async move {
            // Like Envoy, a client whose stream fails (1,000 connecting at once can overflow
            // the listen queue) starts again, holding nothing, after a bounded back-off.
            for attempt in 1..=RECONNECTS {
                let outcome = if delta {
                    delta_client(index, role, addr.clone(), shared.clone()).await
                } else {
                    sotw_client(index, role, addr.clone(), shared.clone()).await
                };
                let Err(status) = outcome else { return };
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                if attempt == RECONNECTS {
                    eprintln!("stream {index} gave up: {status}");
                }
                tokio::time::sleep(Duration::from_millis(100 * attempt.min(10) as u64)).await;
            }
        });
    }
    let connect_to_synced =
        wait_round(&shared, round_id, options.streams, Duration::from_secs(300)).await?
            - connecting;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_synced = rss_mib(sluice.child.id());

    let mut new_ingress = Vec::new();
    let mut split = Vec::new();
    let (mut cpu_new_ingress, mut cpu_split) = (0.0, 0.0);
    for r in 0..options.rounds {
        for kind in 0..2 {
            round_id += 1;
            let (goal, file, content) = if kind == 0 {
                let name = format!("new-{r}");
                let content = manifest(&name, &[(&name, 100)]);
                (Goal::Holds(name.clone()), format!("{name}.yaml"), content)
            } else {
                // Each round a split not used before, so each is a new version of the routes.
                let first = 90 - r as u32;
                let content = manifest("svc-0", &[("svc-0", first), ("split-target", 100 - first)]);
                (
                    Goal::Versions("svc-0".to_owned(), r + 2),
                    "svc-0.yaml".to_owned(),
                    content,
                )
            };
            round_tx.send_replace(Some(Round { id: round_id, goal }));
            let cpu_before = cpu_seconds(sluice.child.id());
            let begin = Instant::now();
            write_atomically(&dir, &staging, &file, &content);
            let last = (wait_round(&shared, round_id, options.streams, Duration::from_secs(60))
                .await?
                - begin)
                .as_secs_f64()
                * 1000.0;
            let cpu = cpu_seconds(sluice.child.id()) - cpu_before;
            if kind == 0 {
                new_ingress.push(last);
                cpu_new_ingress += cpu;
            } else {
                split.push(last);
                cpu_split += cpu;
            }
            // Let the fleet and sluice come to rest between changes.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Past mimalloc's purge delay (1 s), so pages freed since are counted as given back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_after_changes = rss_mib(sluice.child.id());
    clients.shutdown().await;
    drop(sluice);
    Ok(Measured {
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        size,
        streams: options.streams,
        connect_to_synced,
        rss_before,
        rss_synced,
        rss_after_changes,
        new_ingress,
        split,
        cpu_new_ingress,
        cpu_split,
    })
}

fn summary(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "{:.0} ms | {:.0} ms | {:.0} ms",
        percentile(samples, 0.5),
        percentile(samples, 0.9),
        samples.last().copied().unwrap_or(f64::NAN)
    )
}

fn main() -> ExitCode {
    let options = options();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mode = if options.delta { "delta" } else { "SotW" };
    println!(
        "| ingresses | mode | streams | connect → all synced | sluice RSS before | synced | per stream | after the changes | per stream | new ingress → all ACKed p50 | p90 | max | sluice CPU | split change → all ACKed p50 | p90 | max | sluice CPU |"
    );
    println!(
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &size in &options.sizes {
        match runtime.block_on(run(size.max(1), &options)) {
            Ok(mut result) => {
                let per_stream_kib =
                    |rss: f64| (rss - result.rss_before) * 1024.0 / result.streams as f64;
                let per_change = |cpu: f64| cpu * 1000.0 / options.rounds.max(1) as f64;
                println!(
                    "| {} | {mode} | {} | {:.2} s | {:.0} MiB | {:.0} MiB | {:.0} KiB | {:.0} MiB | {:.0} KiB | {} | {:.0} ms | {} | {:.0} ms |",
                    result.size,
                    result.streams,
                    result.connect_to_synced.as_secs_f64(),
                    result.rss_before,
                    result.rss_synced,
                    per_stream_kib(result.rss_synced),
                    result.rss_after_changes,
                    per_stream_kib(result.rss_after_changes),
                    summary(&mut result.new_ingress),
                    per_change(result.cpu_new_ingress),
                    summary(&mut result.split),
                    per_change(result.cpu_split),
                );
                if result.reconnects > 0 {
                    eprintln!(
                        "size {}: {} stream failures while connecting, each started again",
                        result.size, result.reconnects
                    );
                }
            }
            Err(error) => {
                eprintln!("size {size}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
