//! `reconfd convert FROM TO`: a confd configuration directory turned into a reconfd one.
//!
//! `conf.d/*.toml` are copied as they are (reconfd reads confd's resource format) and checked
//! the way reconfd will read them; every file under `templates/` is translated from Go's
//! `text/template` with confd's functions into Tera with reconfd's ([`parse`] reads the Go
//! template into a small tree, [`emit`] writes the Tera). What cannot be translated is marked
//! in the output with a Tera comment, listed as `file:line: reason`, and makes the command
//! exit 1; everything else is still written.

mod emit;
mod parse;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use emit::Untranslated;

/// One problem found while converting, located in the source directory.
#[derive(Debug)]
struct Problem {
    /// The file, relative to the source directory.
    file: PathBuf,
    /// 1-based line, when known.
    line: Option<usize>,
    /// What is wrong.
    message: String,
}

/// Translates one Go template into Tera; the constructs left untranslated are marked in the
/// text and returned. A template Go could not parse is an error naming its line.
pub fn translate(source: &str) -> Result<(String, Vec<Untranslated>), parse::ParseError> {
    let parsed = parse::parse(source)?;
    Ok(emit::emit(&parsed))
}

/// Runs the conversion from confdir `from` into confdir `to`, reporting on standard error;
/// 0 when everything was translated, 1 when something was not (the rest is written), 2 when
/// the directories cannot be used.
pub fn run(from: &Path, to: &Path) -> ExitCode {
    if same_directory(from, to) {
        eprintln!(
            "reconfd convert: {} and {} are the same directory; give a new one to write to",
            from.display(),
            to.display()
        );
        return ExitCode::from(2);
    }
    if !from.join("conf.d").is_dir() && !from.join("templates").is_dir() {
        eprintln!(
            "reconfd convert: {} holds neither conf.d/ nor templates/, so it is no confd \
             configuration directory",
            from.display()
        );
        return ExitCode::from(2);
    }
    let mut problems = Vec::new();
    let mut templates = 0;
    let mut resources = 0;
    for relative in files_under(from, "templates") {
        if convert_template(from, to, &relative, &mut problems) {
            templates += 1;
        }
    }
    for relative in files_under(from, "conf.d") {
        if copy_resource(from, to, &relative, &mut problems)
            && relative.extension().is_some_and(|ext| ext == "toml")
        {
            resources += 1;
        }
    }
    for problem in &problems {
        match problem.line {
            Some(line) => eprintln!(
                "{}:{line}: {}",
                from.join(&problem.file).display(),
                problem.message
            ),
            None => eprintln!(
                "{}: {}",
                from.join(&problem.file).display(),
                problem.message
            ),
        }
    }
    crate::stdout::print_line(&format!(
        "reconfd convert: {resources} resource files and {templates} templates written to {}; {}",
        to.display(),
        match problems.len() {
            0 => "everything translated".to_string(),
            1 => "1 problem, listed above (a construct left untranslated is marked in the output)"
                .to_string(),
            n => format!(
                "{n} problems, listed above (constructs left untranslated are marked in the output)"
            ),
        }
    ));
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn same_directory(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The files under `<root>/<dir>`, recursively, relative to `root`, in name order.
fn files_under(root: &Path, dir: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.join(dir)];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                found.push(relative.to_path_buf());
            }
        }
    }
    found.sort();
    found
}

fn write(to: &Path, relative: &Path, content: &str) -> Result<(), String> {
    let path = to.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(&path, content).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Translates one template into `to`; false when nothing was written.
fn convert_template(from: &Path, to: &Path, relative: &Path, problems: &mut Vec<Problem>) -> bool {
    let mut problem = |line, message| {
        problems.push(Problem {
            file: relative.to_path_buf(),
            line,
            message,
        })
    };
    let source = match crate::resource::read_text(&from.join(relative)) {
        Ok(source) => source,
        Err(message) => {
            problem(None, message);
            return false;
        }
    };
    let output = match translate(&source) {
        Ok((text, untranslated)) => {
            for item in untranslated {
                problem(
                    Some(item.line),
                    format!("not translated: {}: {}", item.source, item.reason),
                );
            }
            text
        }
        Err(e) => {
            problem(
                Some(e.line),
                format!("not a valid Go template: {}", e.message),
            );
            // Kept whole, visibly, for the user to translate by hand.
            format!(
                "{{# reconfd convert: not translated: line {}: {} #}}{{% raw %}}{source}{{% endraw %}}",
                e.line,
                e.message.replace("#}", "# }")
            )
        }
    };
    match write(to, relative, &output) {
        Ok(()) => true,
        Err(message) => {
            problem(None, message);
            false
        }
    }
}

/// Copies a resource file and checks it as reconfd will read it; false when nothing was
/// written.
fn copy_resource(from: &Path, to: &Path, relative: &Path, problems: &mut Vec<Problem>) -> bool {
    let result = crate::resource::read_text(&from.join(relative))
        .and_then(|text| write(to, relative, &text));
    if let Err(message) = result {
        problems.push(Problem {
            file: relative.to_path_buf(),
            line: None,
            message,
        });
        return false;
    }
    if relative.extension().is_some_and(|ext| ext == "toml")
        && let Err(e) = crate::resource::load(&to.join(relative), &to.join("templates"), "")
    {
        problems.push(Problem {
            file: relative.to_path_buf(),
            line: None,
            message: format!("copied, but reconfd refuses it: {}", e.message),
        });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What reconfd writes from the translation of the Go template `source` over `entries`.
    fn rendered(source: &str, entries: &[(&str, &str)]) -> String {
        let (tera, untranslated) = translate(source).unwrap();
        assert!(untranslated.is_empty(), "{source}: {untranslated:?}");
        crate::template::tests::render(&tera, entries)
            .unwrap_or_else(|e| panic!("{source}\n{tera}\n{e}"))
    }

    const SERVERS: &[(&str, &str)] = &[("/s/1", "a"), ("/s/2", "b"), ("/h", "web"), ("/p", "80")];

    /// Each Go construct, rendered by reconfd, against what Go's text/template writes.
    #[test]
    fn translated_constructs_render_as_go_does() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{{if eq (getv "/h") "x" "web"}}A{{else if not (exists "/b")}}B{{else}}C{{end}}"#,
                "A",
            ),
            (
                r#"{{if exists "/h"}}{{else if not (exists "/b")}}B{{end}}"#,
                "",
            ),
            (
                r#"{{if eq (getv "/h") "x"}}A{{else if not (exists "/b")}}B{{end}}"#,
                "B",
            ),
            (r#"{{with getv "/none" ""}}W{{else}}E{{end}}"#, "E"),
            (r#"{{with $v := getv "/h"}}{{$v}}{{.}}{{end}}"#, "webweb"),
            (r#"{{range getvs "/none/*"}}x{{else}}empty{{end}}"#, "empty"),
            (
                r#"{{printf "%s:%d|%5s|" (getv "/h") (atoi (getv "/p")) "r"}}"#,
                "web:80|    r|",
            ),
            ("a  {{- getv \"/h\" -}}  \n b", "awebb"),
            ("a {{- /* note */ -}}\n\tb {{/* c */}}", "ab "),
            (
                r#"{{define "srv"}}server {{.}};{{end}}{{range getvs "/s/*"}}{{template "srv" .}}{{end}}"#,
                "server a;server b;",
            ),
            (
                r#"{{$x := "o"}}{{range getvs "/s/*"}}{{$x := .}}{{$x}}{{end}}{{$x}}"#,
                "abo",
            ),
            (
                r#"{{$n := "0"}}{{range getvs "/s/*"}}{{$n = .}}{{end}}{{$n}}"#,
                "b",
            ),
            (
                r#"{{range $i, $a := getvs "/s/*"}}{{range $j, $b := getvs "/s/*"}}{{$i}}{{$j}} {{end}}{{end}}"#,
                "00 01 10 11 ",
            ),
            (
                r#"{{or (getv "/none" "") "dflt"}}|{{and "a" ""}}|"#,
                "dflt||",
            ),
            (r#"{{len "héllo"}} {{len (getvs "/s/*")}}"#, "6 2"),
            (r#"{{index (getv "/h") 0}} {{index "héllo" 1}}"#, "119 195"),
            (
                r#"{{split "a,b" ","}} {{map "k" "v" "n" 1}} {{seq 1 2}}"#,
                "[a b] map[k:v n:1] [1 2]",
            ),
            (r#"{{range gets "/s/*"}}{{.}}{{end}}"#, "{/s/1 a}{/s/2 b}"),
            (
                r#"{{ if and (exists "/h") (gt (len (getvs "/s/*")) 1) }}many{{ end }}"#,
                "many",
            ),
            ("{{`a\"b`}} {{\"t\\tx\"}}", "a\"b t\tx"),
            ("{% x %} {# y #} {{\"{{\"}}", "{% x %} {# y #} {{"),
            (
                "static {\n{{- if true}}{{getv \"/h\"}}{{end}} {\n{{- /* c */}}{",
                "static {web {{",
            ),
            (r#"{{getv "/h" | toUpper | printf "<%s>"}}"#, "<WEB>"),
            (
                r#"{{$s := split (getv "/h") "e"}}{{index $s 1}}{{range $s}}.{{.}}{{end}}"#,
                "b.w.b",
            ),
            (
                r#"{{range $i, $e := split "x y" " "}}{{if $i}},{{end}}{{$e}}{{end}}"#,
                "x,y",
            ),
            (
                r#"{{range lsdir "/"}}{{.}} {{end}}{{range ls "/s"}}{{.}}{{end}}"#,
                "s 12",
            ),
            (r#"{{add 1 (atoi (getv "/p"))}} {{mod 7 3}}"#, "81 1"),
            (
                r#"{{join (getvs "/s/*") ","}} {{replace (getv "/h") "e" "3" -1}}"#,
                "a,b w3b",
            ),
            (r#"{{block "b" (getv "/h")}}[{{.}}]{{end}}"#, "[web]"),
            (
                r#"{{if and (exists "/x") (getv "/x")}}x{{end}}{{or (getv "/h") (getv "/x")}}"#,
                "web",
            ),
            (
                r#"{{(get "/h").Key}} {{(index (gets "/s/*") 1).Value}} {{(json "{\"n\":1}").n}}"#,
                "/h b 1",
            ),
            (
                r#"{{1.0}} {{2.5}} {{1e6}} {{printf "%.2f" 2.5}}"#,
                "1 2.5 1e+06 2.50",
            ),
            (
                r#"{{range $i := seq 1 3}}{{if eq $i 2}}{{continue}}{{end}}{{$i}}{{end}}"#,
                "13",
            ),
        ];
        for (go, expected) in cases {
            assert_eq!(rendered(go, SERVERS), *expected, "{go}");
        }
    }

    #[test]
    fn a_range_over_a_json_map_visits_its_keys_in_order() {
        let data = [("/j", r#"{"b": 2, "a": "x", "c": [1, "y"]}"#)];
        assert_eq!(
            rendered(
                r#"{{range $k, $v := json (getv "/j")}}{{$k}}={{$v}} {{end}}{{range json (getv "/j")}}{{.}};{{end}}"#,
                &data
            ),
            "a=x b=2 c=[1 y] x;2;[1 y];"
        );
    }

    #[test]
    fn a_template_go_cannot_parse_is_kept_raw_and_reported() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("templates")).unwrap();
        std::fs::write(from.path().join("templates/a.tmpl"), "x\n{{if .A}}").unwrap();
        let mut problems = Vec::new();
        convert_template(
            from.path(),
            to.path(),
            Path::new("templates/a.tmpl"),
            &mut problems,
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2));
        let written = std::fs::read_to_string(to.path().join("templates/a.tmpl")).unwrap();
        assert!(
            written.contains("{% raw %}x\n{{if .A}}{% endraw %}"),
            "{written}"
        );
    }
}
