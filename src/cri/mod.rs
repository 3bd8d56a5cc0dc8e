//! The CRI v1 wire types and gRPC services, generated at build time from `proto/cri/api.proto` (the CRI of
//! Kubernetes 1.36, cri-api v0.36). Only `server/` and the spec translators use these types.

/// Package `runtime.v1`: the messages, `runtime_service_server`/`image_service_server` for the daemon and
/// the matching clients for tests and tools.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");

    impl std::fmt::Debug for AuthConfig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let redacted = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
            f.debug_struct("AuthConfig")
                .field("username", &self.username)
                .field("password", &redacted(&self.password))
                .field("auth", &redacted(&self.auth))
                .field("server_address", &self.server_address)
                .field("identity_token", &redacted(&self.identity_token))
                .field("registry_token", &redacted(&self.registry_token))
                .finish()
        }
    }
}

#[cfg(test)]
mod wire_compat;

/// Serde form of `KeyValue.value` in stored records: a string when the bytes are UTF-8 (the form records had
/// when the field was a string), else an array of byte values; both forms read back.
pub(crate) mod env_value {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(value) {
            Ok(text) => s.serialize_str(text),
            Err(_) => value.serialize(s),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Stored::deserialize(d)? {
            Stored::Text(text) => text.into_bytes(),
            Stored::Bytes(bytes) => bytes,
        })
    }

    #[cfg(test)]
    mod tests {
        use crate::cri::v1::KeyValue;

        #[test]
        fn text_values_are_stored_as_strings_and_bytes_as_arrays() {
            let text = KeyValue {
                key: "A".into(),
                value: b"b c".to_vec(),
            };
            let json = serde_json::to_value(&text).unwrap();
            assert_eq!(json, serde_json::json!({"key": "A", "value": "b c"}));
            assert_eq!(serde_json::from_value::<KeyValue>(json).unwrap(), text);

            let raw = KeyValue {
                key: "B".into(),
                value: vec![0xff, 0x00, b'x'],
            };
            let json = serde_json::to_value(&raw).unwrap();
            assert_eq!(
                json,
                serde_json::json!({"key": "B", "value": [255, 0, 120]})
            );
            assert_eq!(serde_json::from_value::<KeyValue>(json).unwrap(), raw);
        }

        #[test]
        fn a_record_without_newer_fields_reads_back_with_defaults() {
            let old = serde_json::json!({"container_path": "/data", "host_path": "/srv"});
            let mount: crate::cri::v1::Mount = serde_json::from_value(old).unwrap();
            assert_eq!(mount.container_path, "/data");
            assert_eq!(mount.image_sub_path, "");
        }
    }
}
