//! The ADS service on the wire: gRPC's framing of Envoy's `AggregatedDiscoveryService`.
//!
//! tonic's generated server would do this, but at a fleet's scale it costs too much per stream:
//! its encoder keeps a buffer as large as the largest batch a stream ever sent (176 KB a stream
//! at 1,000 ingresses), its decoder one as large as the largest request (66 KB), and every
//! response is copied into that buffer, a SotW full-state answer's resources included although
//! the snapshot encoded them once for the whole group. Here a response is written into a buffer
//! of exactly its size, its resources, already encoded (a SotW full-state answer's once for the
//! whole group), go to HTTP/2 as they are, and a stream holds no buffer between messages.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::xds::request::SotwRequest;
use crate::xds::server::{AdsService, ResponseStream};
use crate::xds::stream::WireResponse;

/// gRPC's default 4 MiB limit is hit by large delta requests and full responses.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// A gRPC message's prefix: a compression flag and the message's length.
const PREFIX_BYTES: usize = 5;

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

impl Service<http::Request<tonic::body::Body>> for AdsServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let response = match request.uri().path() {
            SOTW_PATH => respond(self.service.sotw(Requests::new(request.into_body()))),
            DELTA_PATH => respond(self.service.delta(Requests::new(request.into_body()))),
            _ => Status::unimplemented("").into_http(),
        };
        Box::pin(async move { Ok(response) })
    }
}

fn respond<M: prost::Message + 'static>(
    responses: ResponseStream<WireResponse<M>>,
) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(Responses {
        messages: responses,
        resources_next: None,
        ended: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A request message as a stream decodes it, from the message's own bytes: a field decoded as
/// `Bytes` is a slice of them, not a copy.
pub(super) trait Request: Sized {
    fn decode(message: Bytes) -> Result<Self, String>;
}

impl Request for SotwRequest {
    fn decode(message: Bytes) -> Result<Self, String> {
        SotwRequest::decode(message).map_err(|error| error.to_string())
    }
}

impl Request for DeltaDiscoveryRequest {
    fn decode(message: Bytes) -> Result<Self, String> {
        prost::Message::decode(message).map_err(|error| error.to_string())
    }
}

/// A stream's requests, decoded from its HTTP/2 body. Holds the bytes of at most one message
/// being assembled, and no buffer once it is decoded.
pub(super) struct Requests<M> {
    body: tonic::body::Body,
    received: BytesMut,
    message: PhantomData<fn() -> M>,
}

impl<M: Request> Requests<M> {
    fn new(body: tonic::body::Body) -> Self {
        Requests {
            body,
            received: BytesMut::new(),
            message: PhantomData,
        }
    }

    /// The next request; `None` once the Envoy closed its side.
    pub(super) async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(message) = self.decode_received()? {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.received.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => return Err(status),
                None if self.received.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the xDS stream ended in the middle of a request",
                    ));
                }
            }
        }
    }

    fn decode_received(&mut self) -> Result<Option<M>, Status> {
        let Some(prefix) = self.received.get(..PREFIX_BYTES) else {
            return Ok(None);
        };
        if prefix[0] != 0 {
            return Err(Status::unimplemented(
                "sluice does not take compressed xDS requests: turn off gRPC compression for the xDS cluster",
            ));
        }
        let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if length > MAX_MESSAGE_BYTES {
            return Err(Status::resource_exhausted(format!(
                "an xDS request of {length} bytes is over sluice's limit of {MAX_MESSAGE_BYTES}"
            )));
        }
        let missing = (PREFIX_BYTES + length).saturating_sub(self.received.len());
        if missing > 0 {
            self.received.reserve(missing);
            return Ok(None);
        }
        self.received.advance(PREFIX_BYTES);
        let message = M::decode(self.received.split_to(length).freeze()).map_err(|error| {
            Status::invalid_argument(format!("decoding an xDS request: {error}"))
        })?;
        if self.received.is_empty() {
            self.received = BytesMut::new();
        }
        Ok(Some(message))
    }
}

/// A response written with its gRPC prefix into a buffer of exactly its size, and its encoded
/// resources, which follow it uncopied as the rest of the message.
fn frame<M: prost::Message>(response: &WireResponse<M>) -> Result<(Bytes, Option<Bytes>), Status> {
    let own = response.message.encoded_len();
    let length = own + response.encoded_resources.as_ref().map_or(0, Bytes::len);
    let length = u32::try_from(length)
        .ok()
        .filter(|&length| length as usize <= MAX_MESSAGE_BYTES)
        .ok_or_else(|| {
            Status::resource_exhausted(format!(
                "an xDS response of {length} bytes is over sluice's limit of {MAX_MESSAGE_BYTES}"
            ))
        })?;
    let mut buf = BytesMut::with_capacity(PREFIX_BYTES + own);
    buf.put_u8(0);
    buf.put_u32(length);
    response
        .message
        .encode(&mut buf)
        .map_err(|error| Status::internal(format!("encoding an xDS response: {error}")))?;
    Ok((buf.freeze(), response.encoded_resources.clone()))
}

/// A stream's responses as an HTTP/2 body: each message its own data, ended by gRPC's status.
struct Responses<M> {
    messages: ResponseStream<M>,
    /// The encoded resources of the message last framed, sent next.
    resources_next: Option<Bytes>,
    ended: bool,
}

impl<M: prost::Message + 'static> hyper::body::Body for Responses<WireResponse<M>> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(resources) = self.resources_next.take() {
            return Poll::Ready(Some(Ok(Frame::data(resources))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(self.messages.as_mut().poll_next(cx)) {
            Some(Ok(message)) => match frame(&message) {
                Ok((message, resources)) => {
                    self.resources_next = resources;
                    return Poll::Ready(Some(Ok(Frame::data(message))));
                }
                Err(status) => status,
            },
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        match status.add_header(&mut trailers) {
            Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.resources_next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::stream::SotwResponse;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use prost::Message;

    impl Request for DiscoveryRequest {
        fn decode(message: Bytes) -> Result<Self, String> {
            Message::decode(message).map_err(|error| error.to_string())
        }
    }

    fn body(chunks: Vec<Vec<u8>>) -> tonic::body::Body {
        let frames = chunks
            .into_iter()
            .map(|chunk| Ok::<_, Status>(Frame::data(Bytes::from(chunk))));
        tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
        message.encode(&mut bytes).unwrap();
        bytes
    }

    fn request(version: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            resource_names: (0..200).map(|n| format!("cluster-{n}")).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn requests_are_decoded_however_the_body_splits_them_and_no_buffer_is_kept() {
        let wire: Vec<u8> = [request("1"), request("2"), request("3")]
            .iter()
            .flat_map(framed)
            .collect();
        for chunk in [1, 4, 5, 7, 1000, wire.len()] {
            let mut requests = Requests::<DiscoveryRequest>::new(body(
                wire.chunks(chunk).map(<[u8]>::to_vec).collect(),
            ));
            for version in ["1", "2", "3"] {
                let decoded = requests.message().await.unwrap().unwrap();
                assert_eq!(decoded, request(version), "chunks of {chunk}");
            }
            assert_eq!(
                requests.received.capacity(),
                0,
                "chunks of {chunk}: a buffer kept"
            );
            assert_eq!(requests.message().await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn a_sotw_request_decodes_the_names_prost_does() {
        let wire: Vec<u8> = [request("1"), request("2")]
            .iter()
            .flat_map(framed)
            .collect();
        for chunk in [3, 1000, wire.len()] {
            let mut requests = Requests::<SotwRequest>::new(body(
                wire.chunks(chunk).map(<[u8]>::to_vec).collect(),
            ));
            for version in ["1", "2"] {
                let decoded = requests.message().await.unwrap().unwrap();
                let expected = <DiscoveryRequest as Message>::decode(
                    &framed(&request(version))[PREFIX_BYTES..],
                )
                .unwrap();
                assert_eq!(decoded.version_info(), expected.version_info);
                assert!(
                    decoded
                        .names()
                        .eq(expected.resource_names.iter().map(String::as_str)),
                    "chunks of {chunk}"
                );
            }
            assert_eq!(
                requests.received.capacity(),
                0,
                "chunks of {chunk}: a buffer kept"
            );
            assert!(requests.message().await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_sotw_request_naming_something_not_utf8_is_an_error() {
        let mut request = framed(&request("1"));
        let name = request
            .windows(b"cluster-7".len())
            .position(|window| window == b"cluster-7")
            .unwrap();
        request[name] = 0xff;
        let mut requests = Requests::<SotwRequest>::new(body(vec![request]));
        let status = requests.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("UTF-8"), "{status}");
    }

    #[tokio::test]
    async fn a_truncated_or_compressed_request_is_an_error() {
        let mut truncated = framed(&request("1"));
        truncated.pop();
        let mut requests = Requests::<DiscoveryRequest>::new(body(vec![truncated]));
        let status = requests.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        let mut compressed = framed(&request("1"));
        compressed[0] = 1;
        let mut requests = Requests::<DiscoveryRequest>::new(body(vec![compressed]));
        let status = requests.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("compression"), "{status}");
    }

    #[test]
    fn a_response_and_its_shared_resources_make_one_message() {
        let shared = DiscoveryResponse {
            resources: (0..3)
                .map(|n| envoy_types::pb::google::protobuf::Any {
                    type_url: "type".into(),
                    value: vec![n; 10],
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec();
        let response = SotwResponse {
            message: DiscoveryResponse {
                version_info: "7".into(),
                nonce: "n".into(),
                ..Default::default()
            },
            encoded_resources: Some(Bytes::from(shared.clone())),
        };
        let (own, rest) = frame(&response).unwrap();
        let rest = rest.unwrap();
        assert_eq!(rest, shared, "the shared bytes are sent as they are");
        assert_eq!(own.len(), PREFIX_BYTES + response.message.encoded_len());
        let length = u32::from_be_bytes(own[1..PREFIX_BYTES].try_into().unwrap()) as usize;
        assert_eq!(length, own.len() - PREFIX_BYTES + rest.len());
        let message = [&own[PREFIX_BYTES..], &rest[..]].concat();
        assert_eq!(
            DiscoveryResponse::decode(message.as_slice()).unwrap(),
            response.decoded()
        );
    }
}
