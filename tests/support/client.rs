//! A small HTTP client for tests: one fresh connection per request (no pooling, so listener
//! changes in Envoy never surface as stale-connection errors), HTTP/1.1 or h2c, a chosen
//! `Host`/`:authority`, and a bounded time per request.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::error_chain;

/// The longest any single request (connect, send, read the whole body) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    /// The first value of response header `name`, if any (and valid UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of response header `name`.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The `x-backend` header a [`super::Backend`] sets: which backend answered.
    pub fn backend(&self) -> Option<&str> {
        self.header(super::backend::BACKEND_HEADER)
    }

    /// The body as JSON; panics (showing the response) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }

    /// For a response from a backend's `/headers`: the values the backend received for request
    /// header `name` (lowercase; also `:authority`, `:path`, `:method`), one per header line.
    pub fn seen_header(&self, name: &str) -> Vec<String> {
        let json = self.json();
        match json.get(name) {
            None => Vec::new(),
            Some(values) => values
                .as_array()
                .unwrap_or_else(|| panic!("`{name}` is not an array in {json}"))
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
        }
    }
}

/// Which protocol the client speaks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// `GET http://{host}{path}` over HTTP/1.1 to `addr`.
pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    send(addr, Proto::Http1, "GET", host, path, headers, Bytes::new()).await
}

/// `GET http://{host}{path}` over h2c to `addr`, with `:authority` = `host`.
pub async fn get_h2(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    send(addr, Proto::H2c, "GET", host, path, headers, Bytes::new()).await
}

/// Sends one request on a fresh connection to `addr`. `host` becomes the `Host` header
/// (HTTP/1.1; a `host` entry in `headers` overrides it) or `:authority` (h2c). Headers are
/// appended in order, so a name given twice is sent twice.
pub async fn send(
    addr: SocketAddr,
    proto: Proto,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response, String> {
    let what = format!("{method} http://{host}{path} via {addr} ({proto:?})");
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        send_inner(addr, proto, method, host, path, headers, body),
    )
    .await
    {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out after {REQUEST_TIMEOUT:?}")),
    }
}

async fn send_inner(
    addr: SocketAddr,
    proto: Proto,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response, String> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("method: {e}"))?;
    let uri = match proto {
        Proto::Http1 => path.to_string(),
        Proto::H2c => format!("http://{host}{path}"),
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| format!("building request: {e}"))?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("{name}: {e}"))?;
        req.headers_mut().append(name, value);
    }
    if proto == Proto::Http1 && !req.headers().contains_key(HOST) {
        let host = HeaderValue::from_str(host).map_err(|e| format!("host: {e}"))?;
        req.headers_mut().insert(HOST, host);
    }

    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);

    let (resp, conn_task) = match proto {
        Proto::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {}", error_chain(&e)))?;
            let task = tokio::spawn(conn);
            let resp = sender.send_request(req).await;
            (resp, task)
        }
        Proto::H2c => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2c handshake: {}", error_chain(&e)))?;
            let task = tokio::spawn(conn);
            let resp = sender.send_request(req).await;
            (resp, task)
        }
    };
    let result = async {
        let resp = resp.map_err(|e| error_chain(&e))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {}", error_chain(&e)))?
            .to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
    .await;
    conn_task.abort();
    result
}

/// A client WebSocket over plain TCP.
pub type WebSocket = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `ws://{host}{path}` through `addr` (HTTP/1.1 Upgrade; `Host: host`).
/// Returns the socket and the `101` response's headers.
pub async fn websocket(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(WebSocket, HeaderMap), String> {
    let url = format!("ws://{host}{path}");
    let connect = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (ws, resp) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .map_err(|e| format!("handshake: {}", error_chain(&e)))?;
        Ok::<_, String>((ws, resp.headers().clone()))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, connect).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(format!("WebSocket {url} via {addr}: {e}")),
        Err(_) => Err(format!("WebSocket {url} via {addr}: timed out")),
    }
}

/// Opens a WebSocket, sends `text`, and returns the first text message that comes back (then
/// closes the socket). Against a [`super::Backend`] the reply is `text` itself.
pub async fn websocket_echo(
    addr: SocketAddr,
    host: &str,
    path: &str,
    text: &str,
) -> Result<String, String> {
    let (mut ws, _headers) = websocket(addr, host, path).await?;
    let exchange = async {
        ws.send(Message::text(text))
            .await
            .map_err(|e| format!("send: {e}"))?;
        // Skip control frames; bounded by the timeout around this block.
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(reply))) => return Ok(reply.to_string()),
                Some(Ok(Message::Binary(reply))) => {
                    return Ok(String::from_utf8_lossy(&reply).into_owned());
                }
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("receive: {e}")),
                None => return Err("stream ended".to_string()),
            }
        }
    };
    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(reply) => reply,
        Err(_) => Err("timed out waiting for the echo".to_string()),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    reply.map_err(|e| format!("WebSocket ws://{host}{path} via {addr}: {e}"))
}
