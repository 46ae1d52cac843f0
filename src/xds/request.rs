//! A SotW request as sluice decodes it: its resource names left where they are in the received
//! message.

use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::sync::OnceLock;

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_key, decode_varint, skip_field,
};

/// DiscoveryRequest's `resource_names`.
const RESOURCE_NAMES_FIELD: u32 = 3;

/// Envoy's `envoy.service.discovery.v3.DiscoveryRequest`, the SotW request, decoded with its
/// resource names left in the received message: a SotW Envoy names every cluster or route
/// configuration it subscribes to in each EDS or RDS request, thousands a request, and
/// decoding each into its own `String` (and then its own `Bytes`) was the largest part of
/// sluice's CPU in a fleet. Only made by [`SotwRequest::decode`], which checks that the names
/// are UTF-8, as proto3 strings are.
#[derive(Debug, Clone, PartialEq)]
pub struct SotwRequest {
    fields: Wire,
    message: Bytes,
    names: Names,
}

/// DiscoveryRequest's fields that sluice reads apart from the names, with their tags; prost
/// skips the others (`resource_names`, `resource_locators`).
#[derive(Clone, PartialEq, prost::Message)]
struct Wire {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, optional, tag = "2")]
    node: Option<Node>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    response_nonce: String,
    #[prost(message, optional, tag = "6")]
    error_detail: Option<Status>,
}

/// Where a request's resource names are in its message.
#[derive(Debug, Clone, Default, PartialEq)]
struct Names {
    /// From the first name's field to the last one's end.
    span: Range<usize>,
    /// No other field comes between two names: the span is the names' encoding alone.
    contiguous: bool,
    digest: NamesDigest,
}

/// A set of names summed up, whatever their order: requests naming the same names have equal
/// digests, and a request whose digest equals that of a snapshot's map names exactly its keys
/// (short of a collision of 64-bit keyed hashes, as unlikely as one of the content hashes
/// sluice versions resources by). Envoy names a type's subscribed resources in an order of its
/// own, not sorted, so a SotW request's thousands of names cannot be compared with a map's
/// keys as they come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamesDigest {
    count: usize,
    sum: u64,
}

impl NamesDigest {
    /// How many names were summed up.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn add(&mut self, name: &[u8]) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(name_hash(name));
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.count -= 1;
        self.sum = self.sum.wrapping_sub(name_hash(name));
    }
}

/// A hash keyed at random once per process, so that no client can choose names that collide.
fn name_hash(name: &[u8]) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(name)
}

/// Why bytes are not a [`SotwRequest`].
#[derive(Debug, thiserror::Error)]
pub enum SotwRequestError {
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
    #[error("resource name {0} of the DiscoveryRequest is not UTF-8")]
    NameNotUtf8(usize),
    #[error("resource name {0} of the DiscoveryRequest runs past the end of the request")]
    NameTruncated(usize),
}

impl SotwRequest {
    /// Decodes a request; a resource name that is not UTF-8 makes it invalid.
    pub fn decode(message: Bytes) -> Result<SotwRequest, SotwRequestError> {
        let names = find_names(&message)?;
        // prost need not step over thousands of names again: it decodes what is around them.
        let fields = if names.contiguous {
            let before = message.slice(..names.span.start);
            Wire::decode(before.chain(message.slice(names.span.end..)))?
        } else {
            Wire::decode(message.clone())?
        };
        Ok(SotwRequest {
            fields,
            message,
            names,
        })
    }

    pub fn version_info(&self) -> &str {
        &self.fields.version_info
    }

    pub fn node(&self) -> Option<&Node> {
        self.fields.node.as_ref()
    }

    /// The resource names, in the order the client gave them.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + Clone {
        self.names_utf8()
            .map(|name| std::str::from_utf8(name).expect("checked when decoded"))
    }

    /// The resource names as their bytes, which compare and order as the names do: an ACK's
    /// thousands are compared with what is held without converting each again.
    pub fn names_utf8(&self) -> impl ExactSizeIterator<Item = &[u8]> + Clone {
        NameValues {
            rest: &self.message[self.names.span.clone()],
            left: self.names.digest.count(),
        }
    }

    /// The names, summed up whatever their order.
    pub fn names_digest(&self) -> NamesDigest {
        self.names.digest
    }

    pub fn type_url(&self) -> &str {
        &self.fields.type_url
    }

    pub fn response_nonce(&self) -> &str {
        &self.fields.response_nonce
    }

    pub fn error_detail(&self) -> Option<&Status> {
        self.fields.error_detail.as_ref()
    }
}

/// Finds the resource names in a message prost has decoded, and checks that each is UTF-8.
fn find_names(message: &[u8]) -> Result<Names, SotwRequestError> {
    let mut names = Names {
        contiguous: true,
        ..Names::default()
    };
    let mut rest = message;
    while rest.has_remaining() {
        let start = message.len() - rest.len();
        let (tag, wire_type) = decode_key(&mut rest)?;
        if tag != RESOURCE_NAMES_FIELD {
            skip_field(wire_type, tag, &mut rest, DecodeContext::default())?;
            continue;
        }
        check_wire_type(WireType::LengthDelimited, wire_type)?;
        let index = names.digest.count();
        let name = length_delimited(&mut rest)?.ok_or(SotwRequestError::NameTruncated(index))?;
        if !name.is_ascii() && std::str::from_utf8(name).is_err() {
            return Err(SotwRequestError::NameNotUtf8(index));
        }
        let end = message.len() - rest.len();
        if index == 0 {
            names.span = start..end;
        } else {
            names.contiguous &= names.span.end == start;
            names.span.end = end;
        }
        names.digest.add(name);
    }
    Ok(names)
}

/// A length-delimited value; `None` when it runs past the end.
fn length_delimited<'a>(rest: &mut &'a [u8]) -> Result<Option<&'a [u8]>, prost::DecodeError> {
    let length = decode_varint(rest)?;
    let Some(length) = usize::try_from(length).ok().filter(|&l| l <= rest.len()) else {
        return Ok(None);
    };
    let (value, after) = rest.split_at(length);
    *rest = after;
    Ok(Some(value))
}

/// The names in a span [`find_names`] found, in order.
#[derive(Clone)]
struct NameValues<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for NameValues<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.left > 0 {
            let (tag, wire_type) = decode_key(&mut self.rest).expect("checked when decoded");
            if tag == RESOURCE_NAMES_FIELD {
                self.left -= 1;
                let name = length_delimited(&mut self.rest).ok().flatten();
                return Some(name.expect("checked when decoded"));
            }
            skip_field(wire_type, tag, &mut self.rest, DecodeContext::default())
                .expect("checked when decoded");
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for NameValues<'_> {}

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

    fn encode_names(names: &[String]) -> Vec<u8> {
        DiscoveryRequest {
            resource_names: names.to_vec(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_name_that_is_not_utf8_makes_the_request_invalid() {
        let mut message = encode_names(&[String::from("a"), String::from("b")]);
        *message.last_mut().unwrap() = 0xff;
        let error = SotwRequest::decode(message.into()).unwrap_err();
        assert!(error.to_string().contains("resource name 1"), "{error}");
    }

    #[test]
    fn the_names_digest_is_the_set_of_names_in_any_order() {
        let names: Vec<String> = (0..50).map(|n| format!("cluster-{n}")).collect();
        let mut expected = NamesDigest::default();
        for name in &names {
            expected.add(name.as_bytes());
        }
        let mut reversed = names.clone();
        reversed.reverse();
        let decoded = SotwRequest::decode(encode_names(&reversed).into()).unwrap();
        assert_eq!(decoded.names_digest(), expected);

        let mut fewer = expected;
        fewer.remove(b"cluster-7");
        let decoded = SotwRequest::decode(encode_names(&names[..49]).into()).unwrap();
        assert_ne!(decoded.names_digest(), expected);
        assert_eq!(decoded.names_digest(), {
            let mut digest = expected;
            digest.remove(b"cluster-49");
            digest
        });
        assert_ne!(fewer, decoded.names_digest());
        let mut twice = names.clone();
        twice.push(names[0].clone());
        let decoded = SotwRequest::decode(encode_names(&twice).into()).unwrap();
        assert_ne!(
            decoded.names_digest(),
            expected,
            "a name given twice counts twice"
        );
    }

    #[test]
    fn names_between_other_fields_are_read_all_the_same() {
        let names: Vec<String> = (0..50).map(|n| format!("cluster-{n}")).collect();
        let mut interleaved = encode_names(&names[..1]);
        prost::encoding::string::encode(4, &"type".to_owned(), &mut interleaved);
        interleaved.extend_from_slice(&encode_names(&names[1..]));
        prost::encoding::string::encode(1, &"v1".to_owned(), &mut interleaved);
        let decoded = SotwRequest::decode(interleaved.into()).unwrap();
        assert!(decoded.names().eq(names.iter().map(String::as_str)));
        assert_eq!(decoded.type_url(), "type");
        assert_eq!(decoded.version_info(), "v1");
    }
}
