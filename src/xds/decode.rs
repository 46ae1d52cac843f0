//! Served resources as JSON, for `/debug/config`: decoded with the descriptors of Envoy's API
//! (the set envoy-types ships, copied in by build.rs), with private keys redacted.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::xds::Resource;

static ENVOY_DESCRIPTORS: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin")).as_slice(),
    )
    .map_err(|error| format!("Envoy's descriptors do not load: {error}"))
});

/// Field names whose values are secret key material.
const SECRET_FIELDS: [&str; 2] = ["private_key", "privateKey"];

/// The resource as Envoy's JSON form, or a description of why it cannot be shown.
pub fn to_json(resource: &Resource) -> Value {
    let decoded = ENVOY_DESCRIPTORS
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|pool| {
            let type_name = resource
                .body
                .type_url
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let descriptor = pool
                .get_message_by_name(type_name)
                .ok_or_else(|| format!("no descriptor for {type_name}"))?;
            let message = DynamicMessage::decode(descriptor, resource.body.value.as_slice())
                .map_err(|error| format!("cannot decode {type_name}: {error}"))?;
            message
                .serialize_with_options(
                    serde_json::value::Serializer,
                    &SerializeOptions::new().use_proto_field_name(true),
                )
                .map_err(|error| format!("cannot render {type_name}: {error}"))
        });
    match decoded {
        Ok(mut json) => {
            redact(&mut json);
            json
        }
        Err(error) => Value::String(error),
    }
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                if SECRET_FIELDS.contains(&name.as_str()) {
                    *field = Value::String("[redacted]".to_owned());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::TypeUrl;
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        Secret, TlsCertificate, secret,
    };

    #[test]
    fn a_route_configuration_decodes_to_envoy_json() {
        let route = RouteConfiguration {
            name: "hello.example.com".into(),
            virtual_hosts: vec![VirtualHost {
                name: "hello.example.com".into(),
                domains: vec!["hello.example.com".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&Resource::new(
            TypeUrl::RouteConfiguration,
            "r",
            &route,
            vec![],
        ));
        assert_eq!(json["name"], "hello.example.com");
        assert_eq!(json["virtual_hosts"][0]["domains"][0], "hello.example.com");
    }

    #[test]
    fn private_keys_are_redacted() {
        let key = DataSource {
            specifier: Some(Specifier::InlineString(
                "-----BEGIN PRIVATE KEY-----".into(),
            )),
            ..Default::default()
        };
        let secret = Secret {
            name: "tls".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                private_key: Some(key),
                ..Default::default()
            })),
        };
        let json = to_json(&Resource::new(TypeUrl::Secret, "tls", &secret, vec![]));
        assert_eq!(json["tls_certificate"]["private_key"], "[redacted]");
        assert!(!json.to_string().contains("BEGIN PRIVATE KEY"));
    }
}
