//! With the `agones` feature: server stubs of Agones' SDK (sdk.proto and
//! its alpha), for the tests' fake SDK sidecar — built from the very proto
//! files the `agones` crate ships, found through `cargo metadata`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "agones")]
    agones_stubs();
}

#[cfg(feature = "agones")]
fn agones_stubs() {
    use std::path::PathBuf;
    use std::process::Command;

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let target = std::env::var("TARGET").expect("set by cargo");
    // This platform's packages only: they are the ones already fetched.
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--all-features",
        ])
        .arg("--filter-platform")
        .arg(target)
        .arg("--manifest-path")
        .arg(PathBuf::from(&manifest).join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let agones = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "agones"))
        .and_then(|p| p["manifest_path"].as_str())
        .map(PathBuf::from)
        .expect("the agones crate among the dependencies");
    let proto = agones.parent().expect("a crate directory").join("proto");
    let includes = [
        proto.join("googleapis"),
        proto.join("grpc-gateway"),
        proto.join("sdk"),
        proto.join("sdk/alpha"),
    ];
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(
            &[
                proto.join("sdk/sdk.proto"),
                proto.join("sdk/alpha/alpha.proto"),
            ],
            &includes,
        )
        .expect("Agones' sdk.proto compiles");
}
