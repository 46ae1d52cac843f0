//! A tiny demo backend for the README: answers every request (HTTP/1.1 or h2c) with a fixed
//! message and a newline.
//!
//! `cargo run --example backend -- --port 9101 --message "Hello Go Sample v1!"`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
#[command(about = "Answers every HTTP request with a fixed message")]
struct Args {
    /// Port to listen on.
    #[arg(long, default_value_t = 9101)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    /// The response body (a newline is added).
    #[arg(long, default_value = "Hello from sluice!")]
    message: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr = SocketAddr::new(args.address, args.port);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("backend listening on http://{addr}");
    let body = Bytes::from(format!("{}\n", args.message));
    loop {
        let (stream, _) = listener.accept().await?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}
