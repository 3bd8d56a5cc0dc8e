//! Compiles the schemas owned by this repository into Rust types: the CRI (proto/cri/api.proto) with its tonic
//! services, and NRI's plugin API (proto/nri/api.proto) with ttrpc's envelopes (proto/ttrpc/ttrpc.proto) as plain
//! messages: NRI speaks ttrpc, not gRPC, and src/nri/ carries them itself.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri/api.proto");
    println!("cargo:rerun-if-changed=proto/nri/api.proto");
    println!("cargo:rerun-if-changed=proto/ttrpc/ttrpc.proto");
    envexec()?;
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

/// Builds `ferrio-envexec` (src/envexec/), the helper that runs first in a container whose env holds bytes that are
/// not UTF-8. It runs inside containers whatever their libc, so it must be static; a cargo `[[bin]]` cannot get
/// `-C target-feature=+crt-static` on its own (the flag would apply to every target), so rustc builds it here from
/// std alone (glibc's libc.a), and it is placed next to the ferrio binaries, where the daemon looks for it.
fn envexec() -> Result<(), Box<dyn std::error::Error>> {
    use std::path::PathBuf;
    println!("cargo:rerun-if-changed=src/envexec");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET")?;
    let built = out_dir.join("ferrio-envexec");
    let status = std::process::Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "ferrio_envexec",
            "--crate-type",
            "bin",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "target-feature=+crt-static",
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
        ])
        .args(["-C", "strip=symbols", "-C", "debuginfo=0"])
        // A plain static executable: a static PIE has no interpreter and no DT_NEEDED, which tools
        // (lintian, file) take for a broken shared library.
        .args(["-C", "relocation-model=static"])
        .arg("src/envexec/main.rs")
        .arg("-o")
        .arg(&built)
        .status()?;
    if !status.success() {
        return Err(format!("building ferrio-envexec failed: {status}").into());
    }
    // OUT_DIR is <profile dir>/build/<pkg>-<hash>/out; the binaries live in <profile dir>.
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        let dest = profile_dir.join("ferrio-envexec");
        let tmp = profile_dir.join(".ferrio-envexec.tmp");
        std::fs::copy(&built, &tmp)?;
        std::fs::rename(&tmp, &dest)?;
    }
    println!("cargo:rustc-env=FERRIO_ENVEXEC_BUILT={}", built.display());
    Ok(())
}
