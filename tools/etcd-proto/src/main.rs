//! Regenerates `src/store/etcd/proto.rs`, the Rust types and gRPC clients for etcd's API, from
//! the `.proto` files in `proto/etcd/`.
//!
//! protox compiles the `.proto` files in Rust, so neither building reconfd nor regenerating
//! its etcd code needs `protoc`. Run from anywhere:
//!
//! ```sh
//! cargo run --manifest-path tools/etcd-proto/Cargo.toml
//! ```

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The protobuf packages of `rpc.proto` and its imports, in the order they are written out.
const PACKAGES: [&str; 3] = ["authpb", "etcdserverpb", "mvccpb"];

fn main() -> Result<(), Box<dyn Error>> {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let protos = repository.join("proto/etcd");
    let destination = repository.join("src/store/etcd/proto.rs");

    let descriptors = protox::compile(["rpc.proto"], [&protos])?;
    let generated = std::env::temp_dir().join(format!("etcd-proto-{}", std::process::id()));
    std::fs::create_dir_all(&generated)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(&generated)
        .compile_fds(descriptors)?;

    let code = one_file(&generated)?;
    std::fs::remove_dir_all(&generated)?;
    std::fs::write(&destination, code)?;
    println!("wrote {}", destination.canonicalize()?.display());
    Ok(())
}

/// prost writes one file per package, and the packages refer to each other as sibling modules
/// (`super::mvccpb::KeyValue`), so each becomes a module of the one file.
fn one_file(generated: &Path) -> Result<String, Box<dyn Error>> {
    let mut code = String::from(
        "//! etcd's gRPC API (v3.4): message types and clients, generated from `proto/etcd/` by\n\
         //! `cargo run --manifest-path tools/etcd-proto/Cargo.toml`. Do not edit by hand.\n\
         // @generated\n",
    );
    for package in PACKAGES {
        let path: PathBuf = generated.join(format!("{package}.rs"));
        let body = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        write!(
            code,
            "\n/// Protobuf package `{package}`.\n\
             #[rustfmt::skip]\n\
             #[allow(clippy::all, clippy::pedantic, dead_code, missing_docs, unreachable_pub)]\n\
             pub(crate) mod {package} {{\n{body}}}\n"
        )?;
    }
    Ok(code)
}
