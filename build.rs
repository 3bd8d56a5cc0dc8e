//! Compiles the CRI schema owned by this repository (proto/cri/api.proto) into Rust types and tonic services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri/api.proto");
    tonic_prost_build::configure()
        // Pod and container records keep the CRI config kubelet sent as JSON; the field names are the Rust
        // ones, and a field added to the schema later must read back as its default from an older record.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        // Env values are bytes on the wire but were strings in older records: store text as text.
        .field_attribute(
            ".runtime.v1.KeyValue.value",
            "#[serde(with = \"crate::cri::env_value\")]",
        )
        // Credentials must never reach a log line through `{:?}`.
        .skip_debug([".runtime.v1.AuthConfig"])
        .compile_protos(&["proto/cri/api.proto"], &["proto/cri"])?;
    Ok(())
}
