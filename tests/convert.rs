//! `reconfd convert`: confd configuration directories turned into reconfd ones, and the
//! translated templates rendered by reconfd to the bytes Go's text/template writes.
//!
//! The corpus (`tests/convert/corpus/<entry>/`) holds real confd templates, each with the
//! repository and path it comes from (`SOURCE`), store data that exercises it (`data.yaml`,
//! read by the file store) and the output Go writes from that data (`expected`). An entry with
//! an `untranslated` file lists the constructs the converter is to leave marked, one
//! `line: text` per line.

mod common;

use std::path::Path;
use std::process::Command;

use common::Fixture;

/// The binary with no `RECONFD_*` variable inherited and a fixed `HOSTNAME` and `NODENAME`,
/// which templates read with `getenv` (Calico's name their node by `NODENAME`).
fn reconfd(args: &[&str]) -> common::Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reconfd"));
    for (name, _) in std::env::vars() {
        if name.starts_with("RECONFD_") {
            command.env_remove(name);
        }
    }
    command.env("HOSTNAME", "confd-host");
    command.env("NODENAME", "node1");
    common::Run::from(command.args(args).output().expect("run reconfd"))
}

/// What converting and rendering one corpus entry gave.
struct Outcome {
    /// The lines the converter reported as untranslated, as `line: text`.
    untranslated: Vec<String>,
    /// The rendered file, when it was rendered.
    rendered: Option<String>,
    /// The translated template, for messages.
    tera: String,
}

fn convert_and_render(entry: &Path) -> Outcome {
    let work = tempfile::tempdir().expect("temp dir");
    let from = work.path().join("confd");
    let to = work.path().join("reconfd");
    let out = work.path().join("out");
    std::fs::create_dir_all(from.join("conf.d")).unwrap();
    std::fs::create_dir_all(from.join("templates")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        entry.join("template.tmpl"),
        from.join("templates/template.tmpl"),
    )
    .unwrap();
    let dest = out.join("rendered");
    std::fs::write(
        from.join("conf.d/template.toml"),
        format!(
            "[template]\nsrc = \"template.tmpl\"\ndest = \"{}\"\nkeys = [\"/\"]\n",
            dest.display()
        ),
    )
    .unwrap();
    let convert = reconfd(&["convert", from.to_str().unwrap(), to.to_str().unwrap()]);
    let untranslated: Vec<String> = convert
        .stderr
        .lines()
        .filter_map(|line| line.split_once("template.tmpl:").map(|(_, rest)| rest))
        .map(|rest| {
            let (line, message) = rest.split_once(": not translated: ").unwrap_or((rest, ""));
            format!("{line}: {message}")
        })
        .collect();
    assert_eq!(
        convert.code,
        Some(if untranslated.is_empty() { 0 } else { 1 }),
        "{}: {convert:?}",
        entry.display()
    );
    let tera = std::fs::read_to_string(to.join("templates/template.tmpl")).unwrap_or_default();
    let data = entry.join("data.yaml");
    let render = reconfd(&[
        "--onetime",
        "--confdir",
        to.to_str().unwrap(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
    ]);
    let rendered = std::fs::read_to_string(&dest).ok();
    if rendered.is_none() {
        eprintln!("{}: not rendered: {render:?}", entry.display());
    }
    Outcome {
        untranslated,
        rendered,
        tera,
    }
}

#[test]
fn every_corpus_template_is_converted_and_renders_as_go_does() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/convert/corpus");
    let mut entries: Vec<_> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    entries.sort();
    assert!(entries.len() >= 79, "{} corpus entries", entries.len());
    let mut failures = Vec::new();
    let mut untranslated_total = 0;
    for entry in &entries {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(entry.join("SOURCE")).unwrap_or_default();
        assert!(
            source.contains("repository:") && source.contains("path:"),
            "{name}: SOURCE names no repository and path"
        );
        let expected = std::fs::read_to_string(entry.join("expected")).expect("expected");
        let listed: Vec<String> = std::fs::read_to_string(entry.join("untranslated"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let outcome = convert_and_render(entry);
        for line in &outcome.untranslated {
            // The corpus test's output lists every construct left untranslated.
            println!("{name}: untranslated: {line}");
        }
        untranslated_total += outcome.untranslated.len();
        if outcome.untranslated != listed {
            failures.push(format!(
                "{name}: untranslated {:?}, listed {listed:?}",
                outcome.untranslated
            ));
        }
        match &outcome.rendered {
            Some(rendered) if *rendered == expected => {}
            Some(rendered) => failures.push(format!(
                "{name}: rendered\n{rendered:?}\nexpected\n{expected:?}\nTera\n{}",
                outcome.tera
            )),
            None => failures.push(format!("{name}: not rendered; Tera\n{}", outcome.tera)),
        }
    }
    println!(
        "{} corpus templates converted and rendered; {untranslated_total} constructs left untranslated",
        entries.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn an_untranslatable_construct_is_marked_listed_and_exits_1_with_the_rest_written() {
    let from = Fixture::new();
    from.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"/tmp/app.conf\"\nkeys = [\"/app\"]\n",
    );
    from.template(
        "app.tmpl",
        "name {{getv \"/app/name\"}}\n{{call .Hook}}\nport {{getv \"/app/port\"}}\n",
    );
    from.template("plain.tmpl", "{{range getvs \"/app/*\"}}{{.}}\n{{end}}");
    let to = tempfile::tempdir().unwrap();
    let run = reconfd(&[
        "convert",
        from.root().to_str().unwrap(),
        to.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("templates/app.tmpl:2: not translated: {{call .Hook}}"),
        "{run:?}"
    );
    let app = std::fs::read_to_string(to.path().join("templates/app.tmpl")).unwrap();
    assert!(
        app.starts_with(
            "name {{ getv(key=\"/app/name\") }}\n{# reconfd convert: not translated: {{call .Hook}}"
        ),
        "{app}"
    );
    assert!(
        app.ends_with("#}\nport {{ getv(key=\"/app/port\") }}\n"),
        "{app}"
    );
    assert!(to.path().join("templates/plain.tmpl").is_file());
    assert_eq!(
        std::fs::read_to_string(to.path().join("conf.d/app.toml")).unwrap(),
        from.read("conf.d/app.toml")
    );
}

/// A link in conf.d or templates/ that leads nowhere is said to be one, and is not counted
/// as written.
#[test]
fn a_link_that_leads_nowhere_is_named_and_not_counted() {
    let from = Fixture::new();
    from.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"/tmp/app.conf\"\nkeys = [\"/app\"]\n",
    );
    from.template("app.tmpl", "name {{getv \"/app/name\"}}\n");
    std::os::unix::fs::symlink(
        "/nonexistent/gone.toml",
        from.root().join("conf.d/gone.toml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/nonexistent/gone.tmpl",
        from.root().join("templates/gone.tmpl"),
    )
    .unwrap();
    let to = tempfile::tempdir().unwrap();
    let run = reconfd(&[
        "convert",
        from.root().to_str().unwrap(),
        to.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(
            "conf.d/gone.toml: cannot read: a symbolic link to /nonexistent/gone.toml, which \
             does not exist"
        ),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(
            "templates/gone.tmpl: cannot read: a symbolic link to /nonexistent/gone.tmpl, \
             which does not exist"
        ),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("1 resource files and 1 templates written to")
            && run.stdout.contains("; 2 problems, listed above"),
        "{run:?}"
    );
    assert!(!to.path().join("conf.d/gone.toml").exists());
}

#[test]
fn a_fully_translated_directory_exits_0_and_renders_the_seed_haproxy_template() {
    // The template of the "Scaling HA-Proxy with Docker, ConfD, Serf, ETCD" article.
    let from = Fixture::new();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("haproxy.cfg");
    from.resource(
        "myconfig",
        &format!(
            "src = \"haproxy.cfg.tmpl\"\ndest = \"{}\"\nkeys = [\n  \"/proxy/frontend\",\n]\n",
            dest.display()
        ),
    );
    from.template(
        "haproxy.cfg.tmpl",
        "backend nodes\n    mode http\n{{range gets \"/proxy/frontend/*\"}}\n    server {{base .Key}} {{.Value}} check\n{{end}}\n",
    );
    from.write(
        "data.yaml",
        "proxy:\n  frontend:\n    web2: 172.17.0.3:80\n    web1: 172.17.0.2:80\n",
    );
    let to = tempfile::tempdir().unwrap();
    let run = reconfd(&[
        "convert",
        from.root().to_str().unwrap(),
        to.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("everything translated"), "{run:?}");
    let render = reconfd(&[
        "--onetime",
        "--confdir",
        to.path().to_str().unwrap(),
        "--file",
        from.path("data.yaml").to_str().unwrap(),
    ]);
    assert_eq!(render.code, Some(0), "{render:?}");
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "backend nodes\n    mode http\n\n    server web1 172.17.0.2:80 check\n\n    server web2 172.17.0.3:80 check\n\n"
    );
}

#[test]
fn converting_a_directory_into_itself_or_a_non_confd_one_is_refused() {
    let from = Fixture::new();
    let dir = from.root().to_str().unwrap();
    let run = reconfd(&["convert", dir, dir]);
    assert_eq!(run.code, Some(2), "{run:?}");
    let empty = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    let run = reconfd(&[
        "convert",
        empty.path().to_str().unwrap(),
        to.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("neither conf.d/ nor templates/"),
        "{run:?}"
    );
}
