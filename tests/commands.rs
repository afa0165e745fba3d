//! What check and reload commands are given: the exact paths of `{{.src}}` and `{{.dest}}`
//! however the command quotes them; driven through the real binary with the file store.

mod common;

use common::Fixture;

const ONETIME: &[&str] = &["--onetime", "--backend", "file", "--file", "data.yaml"];

/// A directory name with spaces, both quotes, `$`, backquotes and command substitutions that
/// would create `pwned` in the confdir if the shell ran them.
const HOSTILE_DIR: &str = "my dir 'a' \"b\" $HOME `touch pwned` $(touch pwned) ${IFS}x";

/// `text` as a TOML basic string's content.
fn toml_escaped(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[test]
fn placeholders_give_the_exact_path_bare_or_in_either_quotes_and_run_nothing_of_it() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    fixture.write(&format!("{HOSTILE_DIR}/.keep"), "");
    // Each command prints the path it sees three times: bare, in double and in single quotes;
    // confd's `test -s "{{.src}}"` must pass too.
    let check =
        "test -s \"{{.src}}\" && printf '%s\\n' {{.src}} \"{{ .src }}\" '{{src}}' > seen-check";
    let reload = "printf '%s\\n' {{.dest}} \"{{ .dest }}\" '{{dest}}' > seen-reload";
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"{}/app.conf\"\nkeys = [\"/app\"]\n\
             check_cmd = \"{}\"\nreload_cmd = \"{}\"\n",
            toml_escaped(HOSTILE_DIR),
            toml_escaped(check),
            toml_escaped(reload)
        ),
    );
    // confd's usual form, alone.
    fixture.resource(
        "usual",
        &format!(
            "src = \"app.tmpl\"\ndest = \"{}/usual.conf\"\nkeys = [\"/app\"]\n\
             check_cmd = \"test -s \\\"{{{{.src}}}}\\\"\"\n",
            toml_escaped(HOSTILE_DIR)
        ),
    );
    let run = fixture.run(ONETIME);
    assert!(
        !fixture.path("pwned").exists() && !fixture.path(HOSTILE_DIR).join("pwned").exists(),
        "nothing of the path ran: {run:?}"
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    for name in ["app.conf", "usual.conf"] {
        assert_eq!(fixture.read(&format!("{HOSTILE_DIR}/{name}")), "port 80\n");
    }

    let dest = fixture.path(&format!("{HOSTILE_DIR}/app.conf"));
    let seen_check = fixture.read("seen-check");
    let seen: Vec<&str> = seen_check.lines().collect();
    assert_eq!(seen.len(), 3, "{seen_check}");
    let stage_prefix = format!("{}/.app.conf.reconfd-", fixture.path(HOSTILE_DIR).display());
    assert!(seen[0].starts_with(&stage_prefix), "{seen_check}");
    assert!(seen.iter().all(|path| *path == seen[0]), "{seen_check}");
    let expected = format!("{0}\n{0}\n{0}\n", dest.display());
    assert_eq!(fixture.read("seen-reload"), expected);
}
