//! In-process backends: an HTTP/1.1 + h2c + WebSocket echo server, and a gRPC health server.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

pub use tonic_health::pb::health_check_response::ServingStatus;

/// Longest `/sleep/<ms>` honoured, to keep every test bounded.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The response header every [`Backend`] response carries, naming the backend.
pub const BACKEND_HEADER: &str = "x-backend";

/// An HTTP server on 127.0.0.1 speaking HTTP/1.1 and h2c (prior knowledge) on one port.
///
/// Behaviour is chosen by the request path's trailing segments, so it works under any prefix
/// (`/a/b/headers` behaves like `/headers`):
/// - `.../headers`: 200, a JSON object of the request headers, `{"name": ["v1", "v2"]}` with
///   lowercase names and one array entry per header line received, plus `:authority`,
///   `:path` (with query) and `:method`.
/// - `.../sleep/<ms>`: waits that long (at most [`MAX_SLEEP`]), then 200 with the name.
/// - `.../fail-once/<token>`: 503 the first time a token is seen, 200 with the name after.
/// - `.../status/<code>`: answers with that status code, body the name.
/// - `.../proto`: 200, body `HTTP/1.1` or `HTTP/2` per the request's version.
/// - anything with `Upgrade: websocket`: a WebSocket echo (text and binary frames).
/// - anything else: 200, body the name.
///
/// Every response carries `x-backend: <name>`. Dropping the backend stops it and all its
/// connections.
pub struct Backend {
    name: String,
    addr: SocketAddr,
    state: Arc<State>,
    _shutdown: watch::Sender<()>,
}

struct State {
    name: String,
    requests: AtomicUsize,
    seen_tokens: Mutex<HashSet<String>>,
}

impl Backend {
    /// Starts a backend named `name` on a fresh port. Needs a Tokio runtime.
    pub async fn start(name: &str) -> Backend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend listener");
        Backend::start_on(name, listener)
    }

    /// Starts a backend named `name` on an already-bound listener. Needs a Tokio runtime.
    pub fn start_on(name: &str, listener: std::net::TcpListener) -> Backend {
        listener
            .set_nonblocking(true)
            .expect("set backend listener non-blocking");
        let listener = TcpListener::from_std(listener).expect("register backend listener");
        let addr = listener.local_addr().expect("backend local_addr");
        let state = Arc::new(State {
            name: name.to_string(),
            requests: AtomicUsize::new(0),
            seen_tokens: Mutex::new(HashSet::new()),
        });
        let (shutdown, shutdown_rx) = watch::channel(());
        tokio::spawn(accept_loop(listener, state.clone(), shutdown_rx));
        Backend {
            name: name.to_string(),
            addr,
            state,
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

    /// How many requests (including WebSocket upgrades) this backend has received.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

/// Resolves once the owner is dropped (the sender half is gone).
async fn stopped(mut shutdown: watch::Receiver<()>) {
    while shutdown.changed().await.is_ok() {}
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, shutdown: watch::Receiver<()>) {
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
        let state = state.clone();
        let conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let ws_shutdown = conn_shutdown.clone();
            let service = hyper::service::service_fn(move |req| {
                handle(state.clone(), ws_shutdown.clone(), req)
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

type Resp = Response<Full<Bytes>>;

fn respond(state: &State, status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        BACKEND_HEADER,
        HeaderValue::from_str(&state.name).expect("backend name is a valid header value"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("valid content type"),
    );
    resp
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    let upgrade = req.headers().get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case("websocket"))
    });
    upgrade && req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
}

async fn handle(
    state: Arc<State>,
    shutdown: watch::Receiver<()>,
    mut req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);

    if is_websocket_upgrade(&req) {
        let key = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .expect("checked above")
            .as_bytes()
            .to_vec();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let echo = async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                websocket_echo(ws).await;
            };
            tokio::select! {
                () = echo => {}
                () = stopped(shutdown) => {}
            }
        });
        let mut resp = respond(&state, StatusCode::SWITCHING_PROTOCOLS, "text/plain", "");
        let headers = resp.headers_mut();
        headers.remove(header::CONTENT_TYPE);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&derive_accept_key(&key)).expect("accept key is base64"),
        );
        return Ok(resp);
    }

    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let last = segments.last().copied().unwrap_or("");
    let second_last = segments
        .len()
        .checked_sub(2)
        .map(|i| segments[i])
        .unwrap_or("");

    let resp = match (second_last, last) {
        (_, "headers") => {
            let json = headers_json(&req);
            respond(&state, StatusCode::OK, "application/json", json)
        }
        (_, "proto") => {
            let proto = match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            };
            respond(&state, StatusCode::OK, "text/plain", proto)
        }
        ("sleep", ms) if ms.parse::<u64>().is_ok() => {
            let ms = ms.parse::<u64>().expect("checked above");
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLEEP)).await;
            respond(&state, StatusCode::OK, "text/plain", state.name.clone())
        }
        ("fail-once", token) => {
            let first = state
                .seen_tokens
                .lock()
                .expect("token set lock")
                .insert(token.to_string());
            let status = if first {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            respond(&state, status, "text/plain", state.name.clone())
        }
        ("status", code) if code.parse::<u16>().is_ok() => {
            let status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            respond(&state, status, "text/plain", state.name.clone())
        }
        _ => respond(&state, StatusCode::OK, "text/plain", state.name.clone()),
    };
    Ok(resp)
}

fn headers_json(req: &Request<Incoming>) -> String {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        map.entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".to_string());
    map.insert(":authority".into(), vec![authority]);
    map.insert(":path".into(), vec![path]);
    map.insert(":method".into(), vec![req.method().to_string()]);
    serde_json::to_string(&map).expect("headers serialize to JSON")
}

async fn websocket_echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// A gRPC server on 127.0.0.1 (h2c) with the standard health service, reporting SERVING for
/// the overall service (`""`). Dropping it stops the server.
pub struct GrpcBackend {
    addr: SocketAddr,
    reporter: tonic_health::server::HealthReporter,
    requests: Arc<AtomicUsize>,
    _shutdown: watch::Sender<()>,
}

impl GrpcBackend {
    /// Starts the server on a fresh port. Needs a Tokio runtime.
    pub async fn start() -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gRPC backend listener");
        let addr = listener.local_addr().expect("gRPC backend local_addr");
        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let counted = tonic::service::interceptor::InterceptedService::new(
            health_service,
            move |req: tonic::Request<()>| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(req)
            },
        );
        let (shutdown, shutdown_rx) = watch::channel(());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(counted)
                .serve_with_incoming_shutdown(incoming, stopped(shutdown_rx))
                .await;
        });
        GrpcBackend {
            addr,
            reporter,
            requests,
            _shutdown: shutdown,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many gRPC requests this server has received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Changes the status reported for `service` (`""` is the overall server).
    pub async fn set_status(&self, service: &str, status: tonic_health::ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }
}

/// Calls `grpc.health.v1.Health/Check` (service `""`) on `addr` over h2c, sending `authority`
/// as the HTTP/2 `:authority` (so it can go through Envoy to a virtual host). Connection
/// failures come back as `Status::unavailable`; each call is bounded by 10 s.
pub async fn grpc_health_check(
    addr: SocketAddr,
    authority: &str,
) -> Result<ServingStatus, tonic::Status> {
    let unavailable = |what: &str, e: &(dyn std::error::Error + 'static)| {
        tonic::Status::unavailable(format!("{what}: {}", super::error_chain(e)))
    };
    let origin: hyper::Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| tonic::Status::invalid_argument(format!("bad authority {authority}: {e}")))?;
    // The endpoint says where to connect; `origin` replaces scheme and authority in every
    // request URI, which is what h2 sends as `:authority`.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unavailable("endpoint", &e))?
        .origin(origin)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unavailable(&format!("connect {addr}"), &e))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    ServingStatus::try_from(reply.into_inner().status)
        .map_err(|e| tonic::Status::internal(format!("unknown serving status: {e}")))
}
