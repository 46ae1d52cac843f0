//! A SotW request as sluice decodes it: its resource names left as slices of the received message.

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status;
use prost::Message;

/// Envoy's `envoy.service.discovery.v3.DiscoveryRequest`, the SotW request, decoded with its
/// resource names as slices of the received message instead of a `String` each: a SotW Envoy
/// names every cluster or route configuration it subscribes to in each EDS or RDS request,
/// thousands a request, and copying them was a quarter of sluice's CPU in a fleet. Only made by
/// [`SotwRequest::decode`], which checks that the names are UTF-8, as proto3 strings are.
#[derive(Debug, Clone, PartialEq)]
pub struct SotwRequest(Wire);

/// DiscoveryRequest's fields that sluice reads, with its tags; prost skips the others
/// (`resource_locators`). `string` and `bytes` are alike on the wire, and a name decoded as
/// `Bytes` from a `Bytes` buffer shares that buffer.
#[derive(Clone, PartialEq, prost::Message)]
struct Wire {
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
    #[prost(message, optional, tag = "6")]
    error_detail: Option<Status>,
}

/// Why bytes are not a [`SotwRequest`].
#[derive(Debug, thiserror::Error)]
pub enum SotwRequestError {
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
    #[error("resource name {0} of the DiscoveryRequest is not UTF-8")]
    NameNotUtf8(usize),
}

impl SotwRequest {
    /// Decodes a request; a resource name that is not UTF-8 makes it invalid.
    pub fn decode(message: Bytes) -> Result<SotwRequest, SotwRequestError> {
        let wire = Wire::decode(message)?;
        if let Some(n) = wire
            .resource_names
            .iter()
            .position(|name| !name.is_ascii() && std::str::from_utf8(name).is_err())
        {
            return Err(SotwRequestError::NameNotUtf8(n));
        }
        Ok(SotwRequest(wire))
    }

    pub fn version_info(&self) -> &str {
        &self.0.version_info
    }

    pub fn node(&self) -> Option<&Node> {
        self.0.node.as_ref()
    }

    /// The resource names, in the order the client gave them.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + Clone {
        self.0
            .resource_names
            .iter()
            .map(|name| std::str::from_utf8(name).expect("checked when decoded"))
    }

    /// The resource names as their bytes, which compare and order as the names do: an ACK's
    /// thousands are compared with what is held without converting each again.
    pub fn names_utf8(&self) -> impl ExactSizeIterator<Item = &[u8]> + Clone {
        self.0.resource_names.iter().map(|name| &name[..])
    }

    pub fn type_url(&self) -> &str {
        &self.0.type_url
    }

    pub fn response_nonce(&self) -> &str {
        &self.0.response_nonce
    }

    pub fn error_detail(&self) -> Option<&Status> {
        self.0.error_detail.as_ref()
    }
}

/// Tests write requests as Envoy's own type; this sends one through sluice's decoding.
#[cfg(test)]
impl From<envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest> for SotwRequest {
    fn from(request: envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest) -> Self {
        SotwRequest::decode(request.encode_to_vec().into()).expect("a valid request")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    #[test]
    fn the_fields_sluice_reads_are_envoys() {
        let request = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "envoy-1".into(),
                ..Default::default()
            }),
            resource_names: vec!["b".into(), "a".into(), "ü".into(), String::new()],
            type_url: "type".into(),
            response_nonce: "n".into(),
            error_detail: Some(Status {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            resource_locators: vec![Default::default()],
        };
        let decoded = SotwRequest::from(request.clone());
        assert_eq!(decoded.version_info(), request.version_info);
        assert_eq!(decoded.node(), request.node.as_ref());
        assert!(
            decoded
                .names()
                .eq(request.resource_names.iter().map(String::as_str))
        );
        assert_eq!(decoded.type_url(), request.type_url);
        assert_eq!(decoded.response_nonce(), request.response_nonce);
        assert_eq!(decoded.error_detail(), request.error_detail.as_ref());
    }

    #[test]
    fn the_names_are_slices_of_the_message() {
        let message = Bytes::from(
            DiscoveryRequest {
                resource_names: (0..100).map(|n| format!("cluster-{n}")).collect(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let within = message.as_ptr_range();
        let decoded = SotwRequest::decode(message.clone()).unwrap();
        assert_eq!(decoded.names().len(), 100);
        assert!(decoded.names().all(|name| within.contains(&name.as_ptr())));
    }

    #[test]
    fn a_name_that_is_not_utf8_makes_the_request_invalid() {
        let wire = Wire {
            resource_names: vec![Bytes::from_static(b"a"), Bytes::from_static(b"\xff")],
            ..Default::default()
        };
        let error = SotwRequest::decode(wire.encode_to_vec().into()).unwrap_err();
        assert!(error.to_string().contains("resource name 1"), "{error}");
    }
}
