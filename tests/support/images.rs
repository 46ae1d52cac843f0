//! In-process stand-ins for the container images Knative's ingress conformance suite deploys
//! behind its Services (knative.dev/networking `test/test_images/`): `runtime`, `timeout`,
//! `retry`, `wsserver`, `grpc-ping` and `httpproxy`. Each is an [`Image`]: one server on a
//! fresh port of the given address (its "Pod IP": 127.0.0.1 in file mode, the test address in
//! Kubernetes mode, where EndpointSlices refuse loopback) speaking HTTP/1.1 and h2c (prior
//! knowledge), stopped (with all its connections) when dropped.
//!
//! Like the real images, every one of them sits behind Knative's probe handler
//! (`pkg/http/probe`): a request carrying `K-Network-Probe: probe` is answered right there with
//! 200 and the request's `K-Network-Hash` echoed in the response (400 if that header is empty),
//! and any other request has its `K-Network-Hash` removed before the image sees it.
//!
//! Behaviours (as the images have them):
//! - [`Image::runtime`]: `/healthz` answers 200 only to `User-Agent: kube-probe/…` (else 400);
//!   every other path answers 200 with a JSON [`RuntimeInfo`] describing the request (URI,
//!   host, method, headers with Go-canonical names, protocol version), plus Knative's no-cache
//!   headers.
//! - [`Image::timeout`]: waits `?initialTimeout=<ms>` before sending the response headers, sends
//!   (and flushes) a 200 head, waits `?timeout=<ms>`, then sends the body
//!   `Slept for <ms> milliseconds`.
//! - [`Image::retry`]: 503 the first time, 200 after; body `Retry <n>`.
//! - [`Image::wsserver`]: upgrades to a WebSocket and echoes every message as
//!   `<message> <suffix>`; a kubelet probe gets 200; anything else 400.
//! - [`Image::grpc_ping`]: the `ping.PingService` gRPC service (`Ping` and the bidirectional
//!   `PingStream`), answering each request message `msg` with `msg + suffix`. Non-gRPC
//!   requests get an empty 200, as the image's HTTP wrapper does.
//! - [`Image::httpproxy`]: a reverse proxy sending every request to `gateway` with
//!   `Host: target_host`.
//!
//! Every wait is capped at [`MAX_SLEEP`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Endpoint;
use tonic_prost::ProstCodec;

/// The longest any image waits when asked to (`timeout`'s delays).
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Knative's probe headers (`pkg/http/header`).
pub const PROBE_HEADER: &str = "K-Network-Probe";
pub const PROBE_VALUE: &str = "probe";
pub const HASH_HEADER: &str = "K-Network-Hash";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body every image answers with.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type BoxFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type Handler = Arc<dyn Fn(Request<Incoming>, Ctx) -> BoxFuture + Send + Sync>;

/// What a handler gets besides the request.
#[derive(Clone)]
struct Ctx {
    /// Resolves when the image is dropped (for tasks that outlive the request, e.g. WebSockets).
    shutdown: watch::Receiver<()>,
}

/// One running image. Dropping it stops the server and closes its connections.
pub struct Image {
    name: String,
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    _shutdown: watch::Sender<()>,
}

impl Image {
    /// Knative's `runtime` image: every path answers with a JSON [`RuntimeInfo`].
    pub fn runtime(ip: IpAddr, name: &str) -> Image {
        Image::serve(ip, name, Arc::new(|req, _ctx| Box::pin(runtime(req))))
    }

    /// Knative's `timeout` image: `?initialTimeout=<ms>` before the head, `?timeout=<ms>`
    /// between the head and the body.
    pub fn timeout(ip: IpAddr, name: &str) -> Image {
        Image::serve(ip, name, Arc::new(|req, _ctx| Box::pin(timeout(req))))
    }

    /// Knative's `retry` image: 503 on the first request, 200 on every later one.
    pub fn retry(ip: IpAddr, name: &str) -> Image {
        let served = Arc::new(AtomicUsize::new(0));
        Image::serve(
            ip,
            name,
            Arc::new(move |_req, _ctx| {
                let n = served.fetch_add(1, Ordering::SeqCst);
                let status = if n == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                Box::pin(async move { text(status, format!("Retry {n}")) })
            }),
        )
    }

    /// Knative's `wsserver` image with `SUFFIX=suffix`: echoes `<message> <suffix>`.
    pub fn wsserver(ip: IpAddr, name: &str, suffix: &str) -> Image {
        let suffix: Arc<str> = Arc::from(suffix);
        Image::serve(
            ip,
            name,
            Arc::new(move |req, ctx| Box::pin(wsserver(req, ctx, suffix.clone()))),
        )
    }

    /// Knative's `grpc-ping` image with `SUFFIX=suffix`.
    pub fn grpc_ping(ip: IpAddr, name: &str, suffix: &str) -> Image {
        let suffix: Arc<str> = Arc::from(suffix);
        Image::serve(
            ip,
            name,
            Arc::new(move |req, _ctx| Box::pin(grpc_ping(req, suffix.clone()))),
        )
    }

    /// Knative's `httpproxy` image with `TARGET_HOST=target_host` and the gateway
    /// (`GATEWAY_HOST`) at `gateway`: every request goes to `gateway` with `Host: target_host`.
    pub fn httpproxy(ip: IpAddr, name: &str, target_host: &str, gateway: SocketAddr) -> Image {
        let target: Arc<str> = Arc::from(target_host);
        let client: LegacyClient<HttpConnector, Incoming> =
            LegacyClient::builder(TokioExecutor::new()).build_http();
        Image::serve(
            ip,
            name,
            Arc::new(move |req, _ctx| {
                Box::pin(httpproxy(req, client.clone(), target.clone(), gateway))
            }),
        )
    }

    /// Serves `handler` (behind the probe handler) on a fresh port of `ip`. Needs a Tokio
    /// runtime.
    fn serve(ip: IpAddr, name: &str, handler: Handler) -> Image {
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("bind image {name}'s listener on {ip}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("set image listener non-blocking");
        let listener = TcpListener::from_std(listener).expect("register image listener");
        let addr = listener.local_addr().expect("image local_addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let (shutdown, shutdown_rx) = watch::channel(());
        tokio::spawn(accept_loop(
            listener,
            handler,
            requests.clone(),
            shutdown_rx,
        ));
        Image {
            name: name.to_string(),
            addr,
            requests,
            _shutdown: shutdown,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests reached the image itself (Knative probes answered by the probe
    /// handler are not counted).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Resolves once the owner is dropped (the sender half is gone).
async fn stopped(mut shutdown: watch::Receiver<()>) {
    while shutdown.changed().await.is_ok() {}
}

async fn accept_loop(
    listener: TcpListener,
    handler: Handler,
    requests: Arc<AtomicUsize>,
    shutdown: watch::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(shutdown.clone()) => return,
        };
        let Ok((stream, _peer)) = accepted else {
            // Transient accept errors (e.g. too many open files): back off briefly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let requests = requests.clone();
        let conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let ctx = Ctx {
                shutdown: conn_shutdown.clone(),
            };
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                let requests = requests.clone();
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(probe_handler(req, ctx, handler, requests).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stopped(conn_shutdown) => {}
            }
        });
    }
}

/// Knative's `probe.NewHandler`: probes are answered here, everything else loses its
/// `K-Network-Hash` and goes on to the image.
async fn probe_handler(
    mut req: Request<Incoming>,
    ctx: Ctx,
    handler: Handler,
    requests: Arc<AtomicUsize>,
) -> Response<Body> {
    let probe = req
        .headers()
        .get(PROBE_HEADER)
        .is_some_and(|v| v.as_bytes() == PROBE_VALUE.as_bytes());
    if !probe {
        req.headers_mut().remove(HASH_HEADER);
        requests.fetch_add(1, Ordering::SeqCst);
        return handler(req, ctx).await;
    }
    match req.headers().get(HASH_HEADER).filter(|v| !v.is_empty()) {
        None => text(
            StatusCode::BAD_REQUEST,
            format!("a probe request must contain a non-empty \"{HASH_HEADER}\" header"),
        ),
        Some(hash) => {
            let mut resp = empty(StatusCode::OK);
            resp.headers_mut().insert(HASH_HEADER, hash.clone());
            resp
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    resp
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The value of query parameter `name` as Go's `strconv.Atoi` would read it (0 if absent or
/// not a number), in milliseconds, capped at [`MAX_SLEEP`].
fn query_millis(req: &Request<Incoming>, name: &str) -> Duration {
    let query = req.uri().query().unwrap_or_default();
    let millis = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(millis).min(MAX_SLEEP)
}

fn is_kubelet_probe(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().starts_with(b"kube-probe/"))
        || req.headers().contains_key("k-kubelet-probe")
}

// ---------------------------------------------------------------------------------------------
// runtime

/// Go's `http.CanonicalHeaderKey`: `foo-bar` → `Foo-Bar`.
pub fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// What the runtime image reports about a request (the `request` part of Knative's
/// `types.RuntimeInfo`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestInfo {
    pub uri: String,
    pub host: String,
    pub method: String,
    /// Go-canonical names; `Host` is not among them (it is [`RequestInfo::host`]).
    pub headers: BTreeMap<String, Vec<String>>,
    pub proto_major: u8,
    pub proto_minor: u8,
}

/// The runtime image's answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuntimeInfo {
    pub request: RequestInfo,
}

impl RuntimeInfo {
    /// The first value of request header `name` (any case), as Go's `Header.Get`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request
            .headers
            .get(&canonical_header(name))
            .and_then(|values| values.first())
            .map(String::as_str)
    }

    /// Every value the image received for request header `name` (any case).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.request
            .headers
            .get(&canonical_header(name))
            .cloned()
            .unwrap_or_default()
    }
}

async fn runtime(req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        let status = if is_kubelet_probe(&req) {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        return empty(status);
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        if name == header::HOST {
            continue;
        }
        headers
            .entry(canonical_header(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let (proto_major, proto_minor) = match req.version() {
        Version::HTTP_2 => (2, 0),
        Version::HTTP_10 => (1, 0),
        _ => (1, 1),
    };
    let info = RuntimeInfo {
        request: RequestInfo {
            uri: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "/".to_string()),
            host,
            method: req.method().to_string(),
            headers,
            proto_major,
            proto_minor,
        },
    };
    let json = serde_json::to_string_pretty(&info).expect("runtime info serializes");
    let mut resp = Response::new(full(json));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    resp
}

// ---------------------------------------------------------------------------------------------
// timeout

async fn timeout(req: Request<Incoming>) -> Response<Body> {
    tokio::time::sleep(query_millis(&req, "initialTimeout")).await;
    let delay = query_millis(&req, "timeout");
    // The head goes out as soon as this response is returned (hyper flushes it while the body
    // is pending); the body follows after `delay`.
    let body = futures::stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(Frame::data(Bytes::from(format!(
            "Slept for {} milliseconds",
            delay.as_millis()
        ))))
    });
    Response::new(BodyExt::boxed_unsync(StreamBody::new(body)))
}

// ---------------------------------------------------------------------------------------------
// wsserver

async fn wsserver(mut req: Request<Incoming>, ctx: Ctx, suffix: Arc<str>) -> Response<Body> {
    if is_kubelet_probe(&req) {
        return empty(StatusCode::OK);
    }
    let upgrade = req.headers().get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case("websocket"))
    });
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "Bad Request".to_string());
    };
    if !upgrade {
        return text(StatusCode::BAD_REQUEST, "Bad Request".to_string());
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let echo = async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            echo_with_suffix(ws, &suffix).await;
        };
        tokio::select! {
            () = echo => {}
            () = stopped(ctx.shutdown) => {}
        }
    });
    let mut resp = empty(StatusCode::SWITCHING_PROTOCOLS);
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("accept key is base64"),
    );
    resp
}

async fn echo_with_suffix<S>(mut ws: WebSocketStream<S>, suffix: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(text) if !suffix.is_empty() => {
                Message::text(format!("{} {suffix}", text.as_str()))
            }
            Message::Binary(data) if !suffix.is_empty() => {
                let mut out = data.to_vec();
                out.push(b' ');
                out.extend_from_slice(suffix.as_bytes());
                Message::binary(out)
            }
            msg @ (Message::Text(_) | Message::Binary(_)) => msg,
            Message::Close(_) => return,
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// grpc-ping

/// `ping.Request` of grpc-ping's `ping.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingRequest {
    #[prost(string, tag = "1")]
    pub msg: String,
}

/// `ping.Response` of grpc-ping's `ping.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingResponse {
    #[prost(string, tag = "1")]
    pub msg: String,
}

const PING_PATH: &str = "/ping.PingService/Ping";
const PING_STREAM_PATH: &str = "/ping.PingService/PingStream";

type PingStreamResponses =
    Pin<Box<dyn futures::Stream<Item = Result<PingResponse, tonic::Status>> + Send>>;

/// `PingService.PingStream`: one response per request message, until the client half-closes.
struct PingStreamService {
    suffix: Arc<str>,
}

impl tonic::server::StreamingService<PingRequest> for PingStreamService {
    type Response = PingResponse;
    type ResponseStream = PingStreamResponses;
    type Future =
        futures::future::Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<PingRequest>>) -> Self::Future {
        let suffix = self.suffix.clone();
        let responses = request.into_inner().map(move |received| {
            received.map(|req| PingResponse {
                msg: format!("{}{suffix}", req.msg),
            })
        });
        futures::future::ready(Ok(tonic::Response::new(Box::pin(responses))))
    }
}

/// `PingService.Ping`.
struct PingService {
    suffix: Arc<str>,
}

impl tonic::server::UnaryService<PingRequest> for PingService {
    type Response = PingResponse;
    type Future = futures::future::Ready<Result<tonic::Response<PingResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<PingRequest>) -> Self::Future {
        let msg = format!("{}{}", request.into_inner().msg, self.suffix);
        futures::future::ready(Ok(tonic::Response::new(PingResponse { msg })))
    }
}

fn grpc_body(resp: Response<tonic::body::Body>) -> Response<Body> {
    resp.map(|body| {
        body.map_err(|status| Box::new(status) as BoxError)
            .boxed_unsync()
    })
}

async fn grpc_ping(req: Request<Incoming>, suffix: Arc<str>) -> Response<Body> {
    let is_grpc = req.version() == Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes() == b"application/grpc");
    if !is_grpc {
        // The image's HTTP wrapper writes nothing for anything but gRPC.
        return empty(StatusCode::OK);
    }
    let codec = ProstCodec::<PingResponse, PingRequest>::default();
    let mut grpc = tonic::server::Grpc::new(codec);
    match req.uri().path() {
        PING_STREAM_PATH => grpc_body(grpc.streaming(PingStreamService { suffix }, req).await),
        PING_PATH => grpc_body(grpc.unary(PingService { suffix }, req).await),
        _ => {
            let mut resp = empty(StatusCode::OK);
            let headers = resp.headers_mut();
            headers.insert(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from(tonic::Code::Unimplemented as i32),
            );
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            resp
        }
    }
}

/// A client of `ping.PingService` over h2c to `addr`, sending `authority` as `:authority` (so
/// it can go through Envoy to a virtual host), like Knative's tests' `grpc.NewClient` with a
/// custom dialer.
pub struct PingClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

/// The longest a connection, a stream opening or one round trip may take.
pub const GRPC_TIMEOUT: Duration = Duration::from_secs(20);

impl PingClient {
    pub async fn connect(addr: SocketAddr, authority: &str) -> Result<PingClient, String> {
        let origin: hyper::Uri = format!("http://{authority}")
            .parse()
            .map_err(|e| format!("bad authority {authority}: {e}"))?;
        // The endpoint says where to connect; `origin` replaces scheme and authority in every
        // request URI, which is what h2 sends as `:authority`.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("endpoint {addr}: {e}"))?
            .origin(origin)
            .connect_timeout(Duration::from_secs(5));
        let channel = tokio::time::timeout(GRPC_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connect {addr}: {}", super::error_chain(&e)))?;
        Ok(PingClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// Opens a `PingStream` (a new HTTP/2 stream on the same connection).
    pub async fn ping_stream(&mut self) -> Result<PingStream, String> {
        let open = async {
            self.grpc
                .ready()
                .await
                .map_err(|e| format!("channel not ready: {}", super::error_chain(&e)))?;
            let (tx, rx) = mpsc::channel::<PingRequest>(16);
            let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
            let codec = ProstCodec::<PingRequest, PingResponse>::default();
            let response = self
                .grpc
                .streaming(
                    tonic::Request::new(requests),
                    PathAndQuery::from_static(PING_STREAM_PATH),
                    codec,
                )
                .await
                .map_err(|status| format!("PingStream() = {status:?}"))?;
            Ok(PingStream {
                tx,
                rx: response.into_inner(),
            })
        };
        tokio::time::timeout(GRPC_TIMEOUT, open)
            .await
            .map_err(|_| "opening PingStream timed out".to_string())?
    }
}

/// An open bidirectional `PingStream`. Dropping it half-closes the request side.
pub struct PingStream {
    tx: mpsc::Sender<PingRequest>,
    rx: tonic::Streaming<PingResponse>,
}

impl PingStream {
    /// Sends `msg` and returns the next message received.
    pub async fn round_trip(&mut self, msg: &str) -> Result<String, String> {
        let exchange = async {
            self.tx
                .send(PingRequest {
                    msg: msg.to_string(),
                })
                .await
                .map_err(|_| "Send(): the stream's request side is closed".to_string())?;
            match self.rx.message().await {
                Ok(Some(resp)) => Ok(resp.msg),
                Ok(None) => Err("Recv(): the stream ended".to_string()),
                Err(status) => Err(format!("Recv() = {status:?}")),
            }
        };
        tokio::time::timeout(GRPC_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("round trip of {msg:?} timed out after {GRPC_TIMEOUT:?}"))?
    }
}

// ---------------------------------------------------------------------------------------------
// httpproxy

/// Hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

async fn httpproxy(
    req: Request<Incoming>,
    client: LegacyClient<HttpConnector, Incoming>,
    target: Arc<str>,
    gateway: SocketAddr,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".to_string());
    let uri: hyper::Uri = match format!("http://{gateway}{path}").parse() {
        Ok(uri) => uri,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("bad URI: {e}")),
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&target).expect("target host is a valid header value"),
    );
    let forwarded = Request::from_parts(parts, body);
    match tokio::time::timeout(MAX_SLEEP, client.request(forwarded)).await {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(
                parts,
                body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
            )
        }
        Ok(Err(e)) => text(
            StatusCode::BAD_GATEWAY,
            format!("proxying to {gateway}: {}", super::error_chain(&e)),
        ),
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("proxying to {gateway} timed out"),
        ),
    }
}
