//! confd's store functions: `get`, `gets`, `getv`, `getvs`, `exists`, `ls`, `lsdir`.
//!
//! They read the [`View`] of the render in progress. Keys are relative to the resource's
//! prefix and start with `/`, as in confd; a key outside the resource's `keys` is not visible.
//! Patterns follow confd (Go's `path.Match`): `*` and `?` do not cross `/`, `[a-z]` and
//! `[^a-z]` are classes, `\` escapes; `{a,b}` alternatives are an addition.

use std::borrow::Cow;
use std::collections::BTreeSet;

use globset::GlobBuilder;
use serde::Serialize;
use tera::{Kwargs, State, TeraResult, Value};

use super::{Registry, View, register_function, with_view};

/// Registers the store functions on `tera`.
pub(super) fn register(tera: &mut Registry) {
    register_function(tera, "get", &["key"], get);
    register_function(tera, "gets", &["key"], gets);
    register_function(tera, "getv", &["key", "default"], getv);
    register_function(tera, "getvs", &["key"], getvs);
    register_function(tera, "exists", &["key"], exists);
    register_function(tera, "ls", &["key"], ls);
    register_function(tera, "lsdir", &["key"], lsdir);
}

/// `get(key)`: `{key, value}` of one key; an error naming the key when it does not exist.
fn get(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let key = rooted(kwargs.must_get::<&str>("key")?);
    with_view(|view| Ok(key_value(&key, lookup(view, &key)?)))
}

/// `gets(key)`: `{key, value}` of every key matching the pattern, sorted by key.
fn gets(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let pattern = rooted(kwargs.must_get::<&str>("key")?);
    with_view(|view| {
        view.shared.get_or_compute(view, "gets", &pattern, || {
            let pairs: Vec<Value> = matching(view, &pattern)?
                .into_iter()
                .map(|(key, value)| key_value(&key, value))
                .collect();
            Ok(Value::from(pairs))
        })
    })
}

/// `getv(key, default?)`: the value of one key, or the default when it does not exist.
fn getv(kwargs: Kwargs, _: &State) -> TeraResult<String> {
    let key = rooted(kwargs.must_get::<&str>("key")?);
    let default = kwargs.get::<&str>("default")?;
    with_view(|view| match (lookup(view, &key), default) {
        (Ok(value), _) => Ok(value.to_string()),
        (Err(_), Some(default)) => Ok(default.to_string()),
        (Err(e), None) => Err(e),
    })
}

/// `getvs(key)`: the values of every key matching the pattern, sorted by value as confd does.
fn getvs(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let pattern = rooted(kwargs.must_get::<&str>("key")?);
    with_view(|view| {
        view.shared.get_or_compute(view, "getvs", &pattern, || {
            let mut values: Vec<&str> = matching(view, &pattern)?
                .into_iter()
                .map(|(_, value)| value)
                .collect();
            values.sort_unstable();
            Ok(Value::from(values))
        })
    })
}

/// `exists(key)`: whether the key exists.
fn exists(kwargs: Kwargs, _: &State) -> TeraResult<bool> {
    let key = rooted(kwargs.must_get::<&str>("key")?);
    with_view(|view| Ok(lookup(view, &key).is_ok()))
}

/// `ls(key)`: the sorted, distinct names of the entries directly below `key`.
fn ls(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let dir = rooted(kwargs.must_get::<&str>("key")?);
    with_view(|view| {
        view.shared.get_or_compute(view, "ls", &dir, || {
            Ok(Value::from(children(view, &dir, false)))
        })
    })
}

/// `lsdir(key)`: like `ls`, but only the entries that have keys below them themselves.
fn lsdir(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let dir = rooted(kwargs.must_get::<&str>("key")?);
    with_view(|view| {
        view.shared.get_or_compute(view, "lsdir", &dir, || {
            Ok(Value::from(children(view, &dir, true)))
        })
    })
}

/// Template keys are paths from the resource's prefix and start with `/`, as confd's do; a
/// key written without the leading `/` means the same key.
fn rooted(key: &str) -> Cow<'_, str> {
    if key.starts_with('/') {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("/{key}"))
    }
}

/// The value of template key `key`, or an error that says why there is none.
fn lookup<'v>(view: &'v View, key: &str) -> TeraResult<&'v str> {
    let absolute = view.absolute(key);
    if !view.visible(&absolute) {
        return Err(tera::Error::message(format!(
            "key `{key}`{} is not under this resource's keys ({})",
            store_key_note(view, &absolute),
            view.keys.join(", ")
        )));
    }
    view.snapshot
        .entries
        .get(&absolute)
        .map(String::as_str)
        .ok_or_else(|| {
            tera::Error::message(format!(
                "key `{key}`{} does not exist",
                store_key_note(view, &absolute)
            ))
        })
}

/// ` (store key /prefix/key)` when a prefix makes the store key differ from the template key.
fn store_key_note(view: &View, absolute: &str) -> String {
    if view.prefix.is_empty() {
        String::new()
    } else {
        format!(" (store key `{absolute}`)")
    }
}

/// The visible (template key, value) pairs whose key matches `pattern`, sorted by key.
fn matching<'v>(view: &'v View, pattern: &str) -> TeraResult<Vec<(String, &'v str)>> {
    // Only keys starting with the pattern's literal part can match, and the snapshot is
    // sorted, so the scan covers that range alone instead of every key.
    let literal_end = pattern
        .find(['*', '?', '[', '{', '\\'])
        .unwrap_or(pattern.len());
    let (literal, rest) = pattern.split_at(literal_end);
    let candidates = view.entries_starting_with(literal);
    if rest == "*" {
        // The common `/proxy/frontend/*`: one more path element, matched without a glob.
        return Ok(candidates
            .filter(|(key, _)| !key[literal.len()..].contains('/'))
            .collect());
    }
    let glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| tera::Error::message(format!("`{pattern}` is not a valid pattern: {e}")))?
        .compile_matcher();
    Ok(candidates.filter(|(key, _)| glob.is_match(key)).collect())
}

/// Names of the entries directly below template key `dir`; with `dirs_only`, only those that
/// have keys below them. As in confd, a key equal to `dir` lists its own last segment.
fn children(view: &View, dir: &str, dirs_only: bool) -> Vec<String> {
    // `ls("/app/key/")` of a key `/app/key` lists nothing, as confd's string comparison does.
    let names_itself = !dir.ends_with('/');
    let dir = dir.trim_end_matches('/');
    let mut names = BTreeSet::new();
    for (key, _) in view.entries_starting_with(dir) {
        if key == dir {
            if !dirs_only && names_itself {
                names.insert(super::helpers::base(&key));
            }
            continue;
        }
        // `ls("/app")` lists below `/app/`, not the rest of `/apple`.
        let Some(rest) = key
            .strip_prefix(dir)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            continue;
        };
        let (first, deeper) = match rest.split_once('/') {
            Some((first, _)) => (first, true),
            None => (rest, false),
        };
        if !first.is_empty() && (deeper || !dirs_only) {
            names.insert(first.to_string());
        }
    }
    names.into_iter().collect()
}

/// confd's KVPair, seen by templates as a `{key, value}` map.
#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: &'a str,
}

/// A `{key, value}` map. Serializing builds the map once; assembling a `Map` and converting
/// it would build it twice, which shows in a 10,000-key `gets`.
fn key_value(key: &str, value: &str) -> Value {
    Value::from_serializable(&KeyValue { key, value })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{render, view};
    use super::super::{Renderer, Resolver};

    const SERVERS: &[(&str, &str)] = &[
        ("/app/servers/web2", "10.0.0.2"),
        ("/app/servers/web1", "10.0.0.1"),
        ("/app/servers/db/primary", "10.0.1.1"),
        ("/app/port", "8080"),
        ("/apple", "fruit"),
    ];

    #[test]
    fn get_returns_key_and_value() {
        let out = render(
            "{% set kv = get(key=\"/app/port\") %}{{ kv.key }}={{ kv.value }}",
            SERVERS,
        )
        .expect("renders");
        assert_eq!(out, "/app/port=8080");
    }

    #[test]
    fn get_of_a_missing_key_names_it() {
        let err = render(
            "{% set kv = get(key=\"/app/nope\") %}{{ kv.value }}",
            SERVERS,
        )
        .expect_err("missing");
        assert!(err.message.contains("`/app/nope` does not exist"), "{err}");
    }

    #[test]
    fn gets_matches_one_level_sorted_by_key() {
        let out = render(
            "{% for kv in gets(key=\"/app/servers/*\") %}{{ kv.key }}={{ kv.value }};{% endfor %}",
            SERVERS,
        )
        .expect("renders");
        assert_eq!(
            out, "/app/servers/web1=10.0.0.1;/app/servers/web2=10.0.0.2;",
            "`*` does not cross `/`: db/primary is not listed"
        );
    }

    #[test]
    fn gets_supports_classes_question_mark_and_deeper_stars() {
        let render_keys = |pattern: &str| {
            render(
                &format!(
                    "{{% for kv in gets(key=\"{pattern}\") %}}{{{{ kv.key }}}} {{% endfor %}}"
                ),
                SERVERS,
            )
            .expect("renders")
        };
        assert_eq!(
            render_keys("/app/servers/web?"),
            "/app/servers/web1 /app/servers/web2 "
        );
        assert_eq!(render_keys("/app/servers/web[^1]"), "/app/servers/web2 ");
        assert_eq!(
            render_keys("/app/*/*"),
            "/app/servers/web1 /app/servers/web2 "
        );
        assert_eq!(render_keys("/app/*/*/*"), "/app/servers/db/primary ");
        assert_eq!(render_keys("/app/port"), "/app/port ");
        assert_eq!(render_keys("/nothing/*"), "");
    }

    #[test]
    fn gets_reports_a_bad_pattern() {
        let err = render("{{ gets(key=\"/app/[\") }}", SERVERS).expect_err("bad pattern");
        assert!(
            err.message.contains("`/app/[` is not a valid pattern"),
            "{err}"
        );
    }

    #[test]
    fn a_misspelt_argument_is_an_error_naming_the_function() {
        let err = render("{{ getv(key=\"/app/port\", dflt=\"x\") }}", SERVERS)
            .expect_err("unknown argument");
        assert!(
            err.message
                .contains("getv() has no argument `dflt`; it takes key, default"),
            "{err}"
        );
    }

    #[test]
    fn getv_returns_value_or_default() {
        let out = render(
            "{{ getv(key=\"/app/port\") }} {{ getv(key=\"/app/missing\", default=\"none\") }}",
            SERVERS,
        )
        .expect("renders");
        assert_eq!(out, "8080 none");
    }

    #[test]
    fn getvs_sorts_values() {
        let out = render(
            "{{ getvs(key=\"/app/servers/*\") | join(sep=\",\") }}",
            &[("/app/servers/a", "zeta"), ("/app/servers/b", "alpha")],
        )
        .expect("renders");
        assert_eq!(out, "alpha,zeta");
    }

    #[test]
    fn exists_tells_whether_a_key_exists() {
        let out = render(
            "{{ exists(key=\"/app/port\") }} {{ exists(key=\"/app/servers\") }}",
            SERVERS,
        )
        .expect("renders");
        assert_eq!(out, "true false", "a directory is not a key");
    }

    #[test]
    fn ls_and_lsdir_list_children() {
        let out = render(
            "{{ ls(key=\"/app/servers\") | join(sep=\",\") }} \
             {{ lsdir(key=\"/app/servers/\") | join(sep=\",\") }} \
             {{ ls(key=\"/app\") | join(sep=\",\") }} \
             {{ ls(key=\"/\") | join(sep=\",\") }} \
             {{ ls(key=\"/app/port\") | join(sep=\",\") }}|\
             {{ ls(key=\"/app/port/\") | join(sep=\",\") }}|",
            SERVERS,
        )
        .expect("renders");
        // A key lists its own name, but not when asked for as a directory (`/app/port/`).
        assert_eq!(out, "db,web1,web2 db port,servers app,apple port||");
    }

    #[test]
    fn keys_are_relative_to_the_prefix() {
        let renderer = Renderer::from_source(
            "db.tmpl",
            "{{ getv(key=\"/db/host\") }} {% for kv in gets(key=\"/db/*\") %}{{ kv.key }} {% endfor %}",
            Resolver::System,
        )
        .expect("parses");
        let out = renderer
            .render(view(
                &[
                    ("/production/app/db/host", "db1"),
                    ("/production/app/db/port", "5432"),
                    ("/staging/app/db/host", "wrong"),
                ],
                "/production/app",
                &["/production/app/db"],
            ))
            .expect("renders");
        assert_eq!(out, "db1 /db/host /db/port ");
    }

    #[test]
    fn keys_outside_the_resource_are_invisible_and_named_as_such() {
        let renderer = Renderer::from_source(
            "t",
            "{{ gets(key=\"/*\") | length }} {{ exists(key=\"/secret\") }}",
            Resolver::System,
        )
        .expect("parses");
        let visible = view(&[("/app", "1"), ("/secret", "2")], "", &["/app"]);
        assert_eq!(
            renderer.render(visible.clone()).expect("renders"),
            "1 false"
        );

        let renderer = Renderer::from_source("t", "{{ getv(key=\"/secret\") }}", Resolver::System)
            .expect("parses");
        let err = renderer.render(visible).expect_err("invisible");
        assert!(
            err.message
                .contains("`/secret` is not under this resource's keys (/app)"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_key_under_a_prefix_names_the_store_key() {
        let renderer = Renderer::from_source("t", "{{ getv(key=\"/db/user\") }}", Resolver::System)
            .expect("parses");
        let err = renderer
            .render(view(&[], "/production/app", &["/production/app/db"]))
            .expect_err("missing");
        assert!(
            err.message
                .contains("key `/db/user` (store key `/production/app/db/user`) does not exist"),
            "{err}"
        );
    }

    #[test]
    fn keys_without_a_leading_slash_mean_the_same_keys() {
        let renderer = Renderer::from_source(
            "t",
            "{{ getv(key=\"db/host\") }} {{ ls(key=\"é\") | join(sep=\",\") }} \
             {% for kv in gets(key=\"db/*\") %}{{ kv.key }}{% endfor %}",
            Resolver::System,
        )
        .expect("parses");
        let out = renderer
            .render(view(
                &[("/p/db/host", "db1"), ("/p/é/x", "1"), ("/pé/y", "2")],
                "/p",
                &["/p"],
            ))
            .expect("renders");
        assert_eq!(out, "db1 x /db/host");
    }

    #[test]
    fn listing_results_are_shared_between_renders_of_one_snapshot_state() {
        let renderer =
            Renderer::from_source("t", "{{ gets(key=\"/s/*\") | length }}", Resolver::System)
                .expect("parses");
        let first = view(&[("/s/a", "1")], "", &["/"]);
        assert_eq!(renderer.render(first.clone()).expect("renders"), "1");
        // Same shared results, other snapshot: the listing computed before is served, which
        // is why the daemon starts new shared results whenever the snapshot changes.
        let mut stale = view(&[("/s/a", "1"), ("/s/b", "2")], "", &["/"]);
        stale.shared = std::sync::Arc::clone(&first.shared);
        assert_eq!(renderer.render(stale).expect("renders"), "1");
        let fresh = view(&[("/s/a", "1"), ("/s/b", "2")], "", &["/"]);
        assert_eq!(renderer.render(fresh).expect("renders"), "2");
        // Another resource (other keys) does not see the first one's result.
        let other =
            Renderer::from_source("t", "{{ gets(key=\"/s/*\") | length }}", Resolver::System)
                .expect("parses");
        let mut narrower = view(&[("/s/a", "1")], "", &["/s/b"]);
        narrower.shared = first.shared;
        assert_eq!(other.render(narrower).expect("renders"), "0");
    }
}
