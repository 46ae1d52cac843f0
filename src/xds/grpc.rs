//! The ADS service on the wire. tonic's generated server encodes each response with prost,
//! which for a SotW full-state answer meant every stream copying and encoding every resource of
//! the type on every change. This service is the generated one's routing with a codec that
//! also writes a response's resources as the snapshot encoded them once for the whole group.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::{Body, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};
use tonic_prost::{ProstCodec, ProstDecoder};

use crate::xds::server::{AdsService, ResponseStream};
use crate::xds::stream::SotwResponse;

/// gRPC's default 4 MiB limit is hit by large delta requests and full responses.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Envoy's `AggregatedDiscoveryService`, SotW and delta, served by an [`AdsService`].
#[derive(Clone)]
pub struct AdsServer {
    service: AdsService,
}

impl AdsServer {
    pub fn new(service: AdsService) -> Self {
        AdsServer { service }
    }
}

impl NamedService for AdsServer {
    const NAME: &'static str = SERVICE;
}

/// One streaming method: the service and how it opens a stream of that method.
struct Rpc<Req, Resp>(
    AdsService,
    fn(&AdsService, Streaming<Req>) -> ResponseStream<Resp>,
);

impl<Req, Resp> StreamingService<Req> for Rpc<Req, Resp>
where
    Resp: Send + 'static,
{
    type Response = Resp;
    type ResponseStream = ResponseStream<Resp>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<Req>>) -> Self::Future {
        let stream = (self.1)(&self.0, request.into_inner());
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

impl<B> Service<http::Request<B>> for AdsServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.service.clone();
        match request.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let mut grpc = limited(SotwCodec);
                Ok(grpc
                    .streaming(Rpc(service, AdsService::sotw), request)
                    .await)
            }),
            DELTA_PATH => Box::pin(async move {
                let mut grpc = limited(ProstCodec::default());
                Ok(grpc
                    .streaming(Rpc(service, AdsService::delta), request)
                    .await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

fn limited<C: Codec>(codec: C) -> Grpc<C> {
    Grpc::new(codec).apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES))
}

/// Decodes SotW requests with prost; encodes [`SotwResponse`]s, shared resources included.
struct SotwCodec;

impl Codec for SotwCodec {
    type Encode = SotwResponse;
    type Decode = DiscoveryRequest;
    type Encoder = SotwEncoder;
    type Decoder = ProstDecoder<DiscoveryRequest>;

    fn encoder(&mut self) -> SotwEncoder {
        SotwEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<(), DiscoveryRequest>::raw_decoder(BufferSettings::default())
    }
}

struct SotwEncoder;

impl Encoder for SotwEncoder {
    type Item = SotwResponse;
    type Error = Status;

    fn encode(&mut self, item: SotwResponse, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|error| Status::internal(format!("encoding a SotW response: {error}")))
    }
}
