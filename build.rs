//! Compiles the schemas owned by this repository into Rust types: the CRI (proto/cri/api.proto) with its tonic
//! services, and NRI's plugin API (proto/nri/api.proto) with ttrpc's envelopes (proto/ttrpc/ttrpc.proto) as plain
//! messages: NRI speaks ttrpc, not gRPC, and src/nri/ carries them itself.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri/api.proto");
    println!("cargo:rerun-if-changed=proto/nri/api.proto");
    println!("cargo:rerun-if-changed=proto/ttrpc/ttrpc.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(
            &["proto/nri/api.proto", "proto/ttrpc/ttrpc.proto"],
            &["proto/nri", "proto/ttrpc"],
        )?;
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
