//! The repository's example confdir (`conf.d/`, `templates/`, `examples/haproxy.yaml`) renders
//! with the file store, and HAProxy accepts the result.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Fixture, Run};

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn example_confdir_renders_a_config_haproxy_accepts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = Fixture::new();
    copy_tree(&repo.join("conf.d"), &fixture.path("conf.d"));
    copy_tree(&repo.join("templates"), &fixture.path("templates"));
    std::fs::create_dir_all(fixture.path("examples/out")).expect("out dir");
    std::fs::copy(
        repo.join("examples/haproxy.yaml"),
        fixture.path("examples/haproxy.yaml"),
    )
    .expect("copy data");

    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "file",
        "--file",
        "examples/haproxy.yaml",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let config = fixture.read("examples/out/haproxy.cfg");
    assert!(
        config.contains("server web1 127.0.0.1:9001 check"),
        "{config}"
    );
    assert!(
        config.contains("server web2 127.0.0.1:9002 check"),
        "{config}"
    );
    assert!(config.contains("bind *:8080"), "{config}");

    let check = Run::from(
        Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(fixture.path("examples/out/haproxy.cfg"))
            .output()
            .expect("haproxy is installed by scripts/test.sh"),
    );
    assert_eq!(
        check.code,
        Some(0),
        "haproxy -c rejected the config: {check:?}"
    );
}
