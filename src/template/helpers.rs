//! confd's helper functions that do not read the store, with confd's names.
//!
//! Helpers that transform a value are filters (`{{ kv.key | base }}`); the others are
//! functions (`{{ getenv(key="HOSTNAME") }}`). Where Tera already has the helper (`join`,
//! `replace`, `reverse`) Tera's is used, and base64 and JSON encoding come from
//! `tera-contrib`. `split` is Tera's but for an empty separator, which splits as Go's
//! `strings.Split` does.

use std::fmt::Write;

use tera::value::Key;
use tera::{Kwargs, Map, State, TeraResult, Value};

use super::{Registry, register_function};

/// Upper bound on the length of a `seq`, so that a typo cannot exhaust memory.
const MAX_SEQ_LEN: i64 = 100_000;
/// Upper bound on the length of a `range`, Tera's own.
const MAX_RANGE_LEN: i128 = 100_000;

/// Registers the helpers on `tera`.
pub(super) fn register(tera: &mut Registry) {
    tera.register_filter("split", split);
    tera.register_filter("base", |path: &str, _: Kwargs, _: &State| base(path));
    tera.register_filter("dir", |path: &str, _: Kwargs, _: &State| dir(path));
    tera.register_filter("json", json_object);
    tera.register_filter("jsonArray", json_array);
    tera.register_filter("json_encode", tera_contrib::json::json_encode);
    tera.register_filter("base64Encode", tera_contrib::base64::b64_encode);
    tera.register_filter("base64Decode", base64_decode);
    tera.register_filter("toUpper", |text: &str, _: Kwargs, _: &State| {
        text.chars().map(go_upper).collect::<String>()
    });
    tera.register_filter("toLower", |text: &str, _: Kwargs, _: &State| {
        text.chars().map(go_lower).collect::<String>()
    });
    tera.register_filter("trimSuffix", trim_suffix);
    tera.register_filter("contains", contains);
    tera.register_filter("atoi", atoi);
    tera.register_filter("parseBool", parse_bool);
    tera.register_filter("sortByLength", sort_by_length);
    tera.register_filter("sortKVByLength", sort_kv_by_length);

    register_function(tera, "range", &["start", "end", "step_by"], range);
    register_function(tera, "getenv", &["key", "default"], getenv);
    register_function(tera, "datetime", &["format", "utc"], datetime);
    register_function(tera, "seq", &["first", "last"], seq);
    // `map` takes any names: they are the map's keys.
    tera.register_function("map", map);
    register_function(tera, "fileExists", &["path"], file_exists);
    register_function(tera, "add", &["a", "b"], |kwargs: Kwargs, _: &State| {
        arithmetic(&kwargs, "add", i64::checked_add)
    });
    register_function(tera, "sub", &["a", "b"], |kwargs: Kwargs, _: &State| {
        arithmetic(&kwargs, "sub", i64::checked_sub)
    });
    register_function(tera, "mul", &["a", "b"], |kwargs: Kwargs, _: &State| {
        arithmetic(&kwargs, "mul", i64::checked_mul)
    });
    register_function(tera, "div", &["a", "b"], |kwargs: Kwargs, _: &State| {
        arithmetic(&kwargs, "div", i64::checked_div)
    });
    register_function(tera, "mod", &["a", "b"], |kwargs: Kwargs, _: &State| {
        arithmetic(&kwargs, "mod", i64::checked_rem)
    });
}
/// Tera's `split`, but an empty separator splits after each character, as confd's (Go's
/// `strings.Split`) does, where Rust's would also give an empty string at each end.
fn split(text: &str, kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let separator = kwargs.must_get::<&str>("pat")?;
    let parts: Vec<Value> = if separator.is_empty() {
        text.chars().map(|c| Value::from(c.to_string())).collect()
    } else {
        text.split(separator).map(Value::from).collect()
    };
    Ok(parts.into())
}

/// The last element of a `/` path, as Go's `path.Base`: `/a/b/` → `b`, `` → `.`, `/` → `/`.
pub fn base(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    // Byte searches: `base` runs once per line of a 10,000-server template.
    let end = path
        .bytes()
        .rposition(|byte| byte != b'/')
        .map_or(0, |i| i + 1);
    if end == 0 {
        return "/".to_string();
    }
    let trimmed = &path[..end];
    let start = trimmed
        .bytes()
        .rposition(|byte| byte == b'/')
        .map_or(0, |i| i + 1);
    trimmed[start..].to_string()
}

/// All but the last element of a `/` path, cleaned, as Go's `path.Dir`: `/a/b/c` → `/a/b`,
/// `a` → `.`, `/a` → `/`.
pub fn dir(path: &str) -> String {
    let parent = path.rfind('/').map_or("", |i| &path[..=i]);
    clean(parent)
}

/// Go's `path.Clean`: one `/` between elements, `.` removed, `..` resolved lexically.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut elements: Vec<&str> = Vec::new();
    for element in path.split('/') {
        match element {
            "" | "." => {}
            ".." => match elements.last() {
                Some(&last) if last != ".." => {
                    elements.pop();
                }
                _ if rooted => {}
                _ => elements.push(".."),
            },
            _ => elements.push(element),
        }
    }
    let joined = elements.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// `value | json`: a JSON object in a string, as a map (confd's `json`). JSON's `null` is an
/// empty map, as Go's decoder leaves the map empty for it.
fn json_object(text: &str, _: Kwargs, _: &State) -> TeraResult<Value> {
    let parsed: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(text)
        .map_err(|e| tera::Error::message(format!("json: not a JSON object: {e}")))?;
    Ok(Value::from_serializable(&parsed.unwrap_or_default()))
}

/// `value | jsonArray`: a JSON array in a string, as a list (confd's `jsonArray`). JSON's
/// `null` is an empty list, as for Go's decoder.
fn json_array(text: &str, _: Kwargs, _: &State) -> TeraResult<Value> {
    let parsed: Option<Vec<serde_json::Value>> = serde_json::from_str(text)
        .map_err(|e| tera::Error::message(format!("jsonArray: not a JSON array: {e}")))?;
    Ok(Value::from_serializable(&parsed.unwrap_or_default()))
}

/// `value | base64Decode`, as Go's `base64.StdEncoding.DecodeString` that confd calls: line
/// breaks are skipped (a PEM body or `base64`'s output wrapped at 76 columns), padding is
/// required, and unused bits of the last character are ignored.
fn base64_decode(text: &str, _: Kwargs, _: &State) -> TeraResult<String> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const GO_STD_ENCODING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    let unwrapped: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    let bytes = GO_STD_ENCODING
        .decode(unwrapped)
        .map_err(|e| tera::Error::message(format!("base64Decode: not base64: {e}")))?;
    String::from_utf8(bytes).map_err(|_| {
        tera::Error::message(
            "base64Decode: the decoded bytes are not UTF-8 text, which a template cannot write",
        )
    })
}

/// Go's `unicode.ToUpper` of one character (the simple mapping `strings.ToUpper` uses): `ß`
/// stays `ß` where Rust's full mapping makes it `SS`.
fn go_upper(c: char) -> char {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(single), None) => single,
        // The full mapping is longer only where the simple one is the character itself, but
        // for Greek letters with iota subscript, whose simple mapping is the titlecase letter.
        _ => match u32::from(c) {
            0x1F80..=0x1F87 | 0x1F90..=0x1F97 | 0x1FA0..=0x1FA7 => {
                char::from_u32(u32::from(c) + 8).unwrap_or(c)
            }
            0x1FB3 => '\u{1FBC}',
            0x1FC3 => '\u{1FCC}',
            0x1FF3 => '\u{1FFC}',
            _ => c,
        },
    }
}

/// Go's `unicode.ToLower` of one character: `İ` is `i`, where Rust's full mapping adds a
/// combining dot; no final-sigma rule.
fn go_lower(c: char) -> char {
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(single), None) => single,
        // U+0130 is the only character whose full lowercase mapping is longer.
        _ => 'i',
    }
}

/// `value | trimSuffix(suffix="…")`.
fn trim_suffix(text: &str, kwargs: Kwargs, _: &State) -> TeraResult<String> {
    let suffix = kwargs.must_get::<&str>("suffix")?;
    Ok(text.strip_suffix(suffix).unwrap_or(text).to_string())
}

/// `value | contains(substr="…")`: whether the text contains the substring.
fn contains(text: &str, kwargs: Kwargs, _: &State) -> TeraResult<bool> {
    Ok(text.contains(kwargs.must_get::<&str>("substr")?))
}

/// `value | atoi`: a decimal integer in a string, as a number (Go's `strconv.Atoi`).
fn atoi(text: &str, _: Kwargs, _: &State) -> TeraResult<i64> {
    text.parse()
        .map_err(|_| tera::Error::message(format!("atoi: `{text}` is not an integer")))
}

/// `value | parseBool`: Go's `strconv.ParseBool` (`1`, `t`, `true`, `TRUE`, `0`, `f`, ...).
fn parse_bool(text: &str, _: Kwargs, _: &State) -> TeraResult<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(tera::Error::message(format!(
            "parseBool: `{text}` is not a boolean"
        ))),
    }
}

/// `list | sortByLength`: strings from shortest to longest in bytes, as Go's `len` counts;
/// equal lengths keep their order.
fn sort_by_length(mut items: Vec<String>, _: Kwargs, _: &State) -> Vec<String> {
    items.sort_by_key(String::len);
    items
}

/// `gets(...) | sortKVByLength`: `{key, value}` pairs from shortest key to longest, in bytes.
fn sort_kv_by_length(mut pairs: Vec<Value>, _: Kwargs, _: &State) -> TeraResult<Vec<Value>> {
    let key_length = |pair: &Value| -> TeraResult<usize> {
        pair.as_map()
            .and_then(|map| map.get(&Key::Str("key")))
            .and_then(Value::as_str)
            .map(str::len)
            .ok_or_else(|| {
                tera::Error::message("sortKVByLength: expects `{key, value}` pairs from gets")
            })
    };
    for pair in &pairs {
        key_length(pair)?;
    }
    pairs.sort_by_cached_key(|pair| key_length(pair).unwrap_or(0));
    Ok(pairs)
}

/// `getenv(key, default?)`: an environment variable, or the default when it is unset or
/// empty (confd's `getenv`).
fn getenv(kwargs: Kwargs, _: &State) -> TeraResult<String> {
    let name = kwargs.must_get::<&str>("key")?;
    let default = kwargs.get::<&str>("default")?.unwrap_or("");
    Ok(std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_string()))
}

/// `datetime(format?, utc?)`: the current time, RFC 3339 by default, or in a `strftime`
/// format such as `"%Y-%m-%d %H:%M"`; local time unless `utc=true`.
fn datetime(kwargs: Kwargs, _: &State) -> TeraResult<String> {
    let format = kwargs.get::<&str>("format")?;
    let utc = kwargs.get::<bool>("utc")?.unwrap_or(false);
    let now = if utc {
        chrono::Utc::now().fixed_offset()
    } else {
        chrono::Local::now().fixed_offset()
    };
    let Some(format) = format else {
        return Ok(now.to_rfc3339());
    };
    let mut text = String::new();
    // chrono reports an invalid specifier only when the text is written.
    write!(text, "{}", now.format(format))
        .map_err(|_| tera::Error::message(format!("datetime: `{format}` is not a valid format")))?;
    Ok(text)
}

/// `seq(first, last)`: the integers from `first` to `last`, both included (confd's `seq`).
fn seq(kwargs: Kwargs, _: &State) -> TeraResult<Vec<i64>> {
    let first = kwargs.must_get::<i64>("first")?;
    let last = kwargs.must_get::<i64>("last")?;
    if last.saturating_sub(first) >= MAX_SEQ_LEN {
        return Err(tera::Error::message(format!(
            "seq: more than {MAX_SEQ_LEN} numbers from {first} to {last}"
        )));
    }
    Ok((first..=last).collect())
}

/// `map(name=value, ...)`: a map of the arguments (confd's `map`).
fn map(kwargs: Kwargs, _: &State) -> Value {
    let mut map = Map::default();
    for (key, value) in kwargs.iter() {
        map.insert(key.clone(), value.clone());
    }
    Value::from(map)
}

/// `fileExists(path)`: whether the path exists on this host.
fn file_exists(kwargs: Kwargs, _: &State) -> TeraResult<bool> {
    Ok(std::path::Path::new(kwargs.must_get::<&str>("path")?).exists())
}

/// `add(a, b)` and its siblings: integer arithmetic as in confd; overflow and division by
/// zero are errors.
fn arithmetic(
    kwargs: &Kwargs,
    name: &str,
    operation: fn(i64, i64) -> Option<i64>,
) -> TeraResult<i64> {
    let a = kwargs.must_get::<i64>("a")?;
    let b = kwargs.must_get::<i64>("b")?;
    operation(a, b).ok_or_else(|| {
        tera::Error::message(format!(
            "{name}({a}, {b}) has no integer result (overflow or division by zero)"
        ))
    })
}

/// Tera's `range(end, start=0, step_by=1)`, with the same limit, that also ends a render
/// that was told to stop: nested loops over ranges are how a template runs away, and this is
/// the one function they call on every turn of the outer loop.
fn range(kwargs: Kwargs, _: &State) -> TeraResult<Vec<i128>> {
    super::checkpoint()?;
    let start = kwargs.get::<i128>("start")?.unwrap_or_default();
    let end = kwargs.must_get::<i128>("end")?;
    let step = kwargs.get::<i128>("step_by")?.unwrap_or(1);
    if step == 0 {
        return Err(tera::Error::message(
            "Function `range` was called with a `step_by` argument of 0",
        ));
    }
    if start > end && step > 0 {
        return Err(tera::Error::message(
            "Function `range` was called with a `start` argument greater than the `end` one",
        ));
    }
    let overflow =
        || tera::Error::message("Function `range` was called with arguments that overflow");
    let (span, stride) = if step > 0 {
        (end.checked_sub(start).ok_or_else(overflow)?, step)
    } else {
        (
            start.checked_sub(end).ok_or_else(overflow)?.max(0),
            step.checked_neg().ok_or_else(overflow)?,
        )
    };
    let len = span.checked_add(stride - 1).ok_or_else(overflow)? / stride;
    if len > MAX_RANGE_LEN {
        return Err(tera::Error::message(format!(
            "Function `range` would produce {len} elements, which exceeds the limit of \
             {MAX_RANGE_LEN}"
        )));
    }
    Ok((0..len).map(|i| start + i * step).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::tests::render;

    fn out(source: &str) -> String {
        render(source, &[]).expect("renders")
    }

    fn error(source: &str) -> String {
        render(source, &[]).expect_err("fails").message
    }

    #[test]
    fn base_and_dir_follow_go_path() {
        for (path, want_base, want_dir) in [
            ("/proxy/frontend/web1", "web1", "/proxy/frontend"),
            ("/a/b/", "b", "/a/b"),
            ("web1", "web1", "."),
            ("/web1", "web1", "/"),
            ("/", "/", "/"),
            ("", ".", "."),
            ("/a//b/../c", "c", "/a"),
        ] {
            assert_eq!(base(path), want_base, "base({path:?})");
            assert_eq!(dir(path), want_dir, "dir({path:?})");
        }
        assert_eq!(
            out("{{ \"/proxy/frontend/web1\" | base }} {{ \"/proxy/frontend/web1\" | dir }}"),
            "web1 /proxy/frontend"
        );
    }

    #[test]
    fn an_empty_separator_splits_after_each_character_as_in_go() {
        assert_eq!(
            out("{{ \"aé:c\" | split(pat=\"\") | join(sep=\",\") }}"),
            "a,é,:,c"
        );
        assert_eq!(out("{{ \"\" | split(pat=\"\") | length }}"), "0");
        assert_eq!(out("{{ \"\" | split(pat=\":\") | length }}"), "1");
    }

    #[test]
    fn teras_split_join_replace_and_reverse_serve_for_confds() {
        assert_eq!(
            out("{{ \"a:b:c\" | split(pat=\":\") | reverse | join(sep=\",\") }}"),
            "c,b,a"
        );
        assert_eq!(
            out("{{ \"a.b.c\" | replace(from=\".\", to=\"/\") }}"),
            "a/b/c"
        );
    }

    #[test]
    fn json_and_json_array_parse_strings() {
        assert_eq!(
            out(
                "{% set o = '{\"host\": \"db1\", \"port\": 5432}' | json %}{{ o.host }}:{{ o.port }}"
            ),
            "db1:5432"
        );
        assert_eq!(
            out("{{ '[\"a\", \"b\"]' | jsonArray | join(sep=\"+\") }}"),
            "a+b"
        );
        assert!(error("{{ '[1]' | json }}").contains("not a JSON object"));
        assert!(error("{{ '{}' | jsonArray }}").contains("not a JSON array"));
        assert_eq!(out("{{ map(a=1) | json_encode }}"), "{\"a\":1}");
    }

    #[test]
    fn base64_round_trips() {
        assert_eq!(out("{{ \"hello\" | base64Encode }}"), "aGVsbG8=");
        assert_eq!(out("{{ \"aGVsbG8=\" | base64Decode }}"), "hello");
        assert!(error("{{ \"%%%\" | base64Decode }}").contains("base64Decode: not base64"));
    }

    #[test]
    fn base64_decodes_as_go_does() {
        // `base64` wraps at 76 columns, and a YAML block scalar ends with a newline.
        let wrapped = format!("{}\n{}\n", "QUFB".repeat(19), "QUFB".repeat(11));
        assert_eq!(
            out(&format!(
                "{{{{ \"{}\" | base64Decode }}}}",
                wrapped.escape_default()
            )),
            "A".repeat(90)
        );
        assert_eq!(out("{{ \"aGVs\r\nbG8=\r\n\" | base64Decode }}"), "hello");
        // Unused bits in the last character are ignored, as by Go's non-strict decoder.
        assert_eq!(out("{{ \"aGVsbG9=\" | base64Decode }}"), "hello");
        // Padding is required, as by Go's StdEncoding.
        assert!(error("{{ \"aGVsbG8\" | base64Decode }}").contains("base64Decode: not base64"));
        assert!(error("{{ \"/w==\" | base64Decode }}").contains("not UTF-8"));
    }

    #[test]
    fn json_null_is_empty_as_in_go() {
        assert_eq!(out("{{ 'null' | json | length }}"), "0");
        assert_eq!(
            out("{% for x in 'null' | jsonArray %}x{% else %}empty{% endfor %}"),
            "empty"
        );
    }

    #[test]
    fn case_mapping_is_gos_one_character_at_a_time() {
        assert_eq!(out("{{ \"héllo ß ᾳ\" | toUpper }}"), "HÉLLO ß ᾼ");
        assert_eq!(out("{{ \"HÉLLO İ ΟΔΟΣ\" | toLower }}"), "héllo i οδοσ");
    }

    #[test]
    fn case_suffix_and_contains() {
        assert_eq!(
            out(
                "{{ \"Web1\" | toUpper }} {{ \"Web1\" | toLower }} {{ \"web1.local\" | trimSuffix(suffix=\".local\") }}"
            ),
            "WEB1 web1 web1"
        );
        assert_eq!(
            out(
                "{{ \"10.0.0.1:80\" | contains(substr=\":80\") }} {{ \"x\" | contains(substr=\"y\") }}"
            ),
            "true false"
        );
    }

    #[test]
    fn atoi_and_parse_bool_convert_or_fail_clearly() {
        assert_eq!(out("{{ \"42\" | atoi + 1 }} {{ \"-7\" | atoi }}"), "43 -7");
        assert!(error("{{ \"4x\" | atoi }}").contains("`4x` is not an integer"));
        assert_eq!(
            out("{{ \"1\" | parseBool }} {{ \"True\" | parseBool }} {{ \"f\" | parseBool }}"),
            "true true false"
        );
        assert!(error("{{ \"yes\" | parseBool }}").contains("`yes` is not a boolean"));
    }

    #[test]
    fn sorting_by_length() {
        assert_eq!(
            out("{{ [\"ccc\", \"a\", \"bb\", \"d\"] | sortByLength | join(sep=\",\") }}"),
            "a,d,bb,ccc"
        );
        let sorted = render(
            "{% for kv in gets(key=\"/*\") | sortKVByLength %}{{ kv.key }} {% endfor %}",
            &[("/long", "1"), ("/a", "2"), ("/mid", "3")],
        )
        .expect("renders");
        assert_eq!(sorted, "/a /mid /long ");
        assert!(error("{{ [1] | sortKVByLength }}").contains("sortKVByLength"));
        // Go's `len` counts bytes: `héé` (5 bytes) is longer than `abcd`.
        assert_eq!(
            out("{{ [\"héé\", \"abcd\", \"zz\"] | sortByLength | join(sep=\",\") }}"),
            "zz,abcd,héé"
        );
        let sorted = render(
            "{% for kv in gets(key=\"/*\") | sortKVByLength %}{{ kv.key }} {% endfor %}",
            &[("/é", "1"), ("/ab", "2"), ("/c", "3")],
        )
        .expect("renders");
        assert_eq!(sorted, "/c /ab /é ");
    }

    #[test]
    fn getenv_reads_the_environment_with_a_default() {
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(out("{{ getenv(key=\"PATH\") }}"), path);
        assert_eq!(
            out("{{ getenv(key=\"RECONFD_SURELY_UNSET_VARIABLE\", default=\"fallback\") }}"),
            "fallback"
        );
        assert_eq!(
            out("{{ getenv(key=\"RECONFD_SURELY_UNSET_VARIABLE\") }}"),
            ""
        );
    }

    #[test]
    fn datetime_formats_the_current_time() {
        let year = out("{{ datetime(format=\"%Y\", utc=true) }}");
        assert_eq!(year, chrono::Utc::now().format("%Y").to_string());
        let rfc3339 = out("{{ datetime() }}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(&rfc3339).is_ok(),
            "{rfc3339}"
        );
        assert!(error("{{ datetime(format=\"%Q\") }}").contains("not a valid format"));
    }

    #[test]
    fn seq_and_map() {
        assert_eq!(
            out("{{ seq(first=1, last=4) | join(sep=\",\") }}"),
            "1,2,3,4"
        );
        assert_eq!(out("{{ seq(first=3, last=2) | length }}"), "0");
        assert!(error("{{ seq(first=0, last=1000000) }}").contains("more than"));
        assert_eq!(
            out("{% set m = map(name=\"web\", port=80) %}{{ m.name }}:{{ m.port }}"),
            "web:80"
        );
    }

    #[test]
    fn arithmetic_is_integer_and_checked() {
        assert_eq!(
            out(
                "{{ add(a=7, b=2) }} {{ sub(a=7, b=2) }} {{ mul(a=7, b=2) }} {{ div(a=7, b=2) }} {{ mod(a=7, b=2) }}"
            ),
            "9 5 14 3 1"
        );
        assert!(error("{{ div(a=1, b=0) }}").contains("division by zero"));
    }

    #[test]
    fn file_exists_checks_the_host() {
        let dir = tempfile::tempdir().expect("temp dir");
        let present = dir.path().join("present");
        std::fs::write(&present, "").expect("write");
        let source = format!(
            "{{{{ fileExists(path=\"{}\") }}}} {{{{ fileExists(path=\"{}\") }}}}",
            present.display(),
            dir.path().join("absent").display()
        );
        assert_eq!(out(&source), "true false");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use crate::template::tests::render;

    /// Renders `source` with `/a` and `/b` holding `a` and `b`: no panic, and an error names
    /// the template and, when Tera gives one, the line and column.
    fn check(source: &str, a: &str, b: &str) -> Result<(), TestCaseError> {
        if let Err(e) = render(source, &[("/a", a), ("/b", b)]) {
            prop_assert!(e.location.starts_with("test.tmpl:1:"), "{e}");
            prop_assert!(!e.message.is_empty(), "{e}");
        }
        Ok(())
    }

    /// Text that exercises the helpers: arbitrary, paths, JSON, numbers and booleans.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[/a-z.]{0,12}",
            crate::arbitrary::json(&["key", "value"]).prop_map(|json| json.to_string()),
            any::<i64>().prop_map(|number| number.to_string()),
            "[-+]?[0-9]{1,25}",
            prop::sample::select(&["true", "F", "1", "TRUE", "yes", "%Y-%m-%d", "%Q", "%"][..])
                .prop_map(str::to_string),
        ]
    }

    /// Every filter and function of the helpers, fed `/a` and `/b`.
    const CALLS: &[&str] = &[
        "{{ getv(key=\"/a\") | base }}",
        "{{ getv(key=\"/a\") | dir }}",
        "{{ getv(key=\"/a\") | json }}",
        "{{ getv(key=\"/a\") | jsonArray }}",
        "{{ getv(key=\"/a\") | jsonArray | sortKVByLength }}",
        "{{ getv(key=\"/a\") | jsonArray | sortByLength }}",
        "{{ getv(key=\"/a\") | json_encode }}",
        "{{ getv(key=\"/a\") | base64Encode | base64Decode }}",
        "{{ getv(key=\"/a\") | base64Decode }}",
        "{{ getv(key=\"/a\") | toUpper }}{{ getv(key=\"/a\") | toLower }}",
        "{{ getv(key=\"/a\") | trimSuffix(suffix=getv(key=\"/b\")) }}",
        "{{ getv(key=\"/a\") | contains(substr=getv(key=\"/b\")) }}",
        "{{ getv(key=\"/a\") | atoi }}",
        "{{ getv(key=\"/a\") | parseBool }}",
        "{{ getenv(key=getv(key=\"/a\"), default=getv(key=\"/b\")) }}",
        "{{ datetime(format=getv(key=\"/a\")) }}",
        "{{ fileExists(path=getv(key=\"/a\")) }}",
        "{{ map(x=getv(key=\"/a\"), y=getv(key=\"/b\")) }}",
        "{{ getv(key=getv(key=\"/a\"), default=\"-\") }}",
        "{{ gets(key=getv(key=\"/a\")) | length }}",
        "{{ getvs(key=getv(key=\"/a\")) | length }}",
        "{{ ls(key=getv(key=\"/a\")) | length }}{{ lsdir(key=getv(key=\"/a\")) | length }}",
        "{{ exists(key=getv(key=\"/a\")) }}",
    ];

    proptest! {
        #[test]
        fn string_arguments_never_panic(
            call in prop::sample::select(CALLS),
            a in text(),
            b in text(),
        ) {
            check(call, &a, &b)?;
        }

        #[test]
        fn number_arguments_never_panic(
            name in prop::sample::select(&["add", "sub", "mul", "div", "mod"][..]),
            a in any::<i64>(),
            b in prop_oneof![any::<i64>(), Just(0), Just(-1)],
        ) {
            check(&format!("{{{{ {name}(a={a}, b={b}) }}}}"), "", "")?;
        }

        #[test]
        fn sequences_never_panic(
            first in prop_oneof![any::<i64>(), -5i64..5],
            last in prop_oneof![any::<i64>(), -5i64..5],
        ) {
            check(&format!("{{{{ seq(first={first}, last={last}) | length }}}}"), "", "")?;
        }

        #[test]
        fn ranges_never_panic(
            start in prop_oneof![any::<i64>(), -5i64..5],
            end in prop_oneof![any::<i64>(), -5i64..5],
            step in prop_oneof![any::<i64>(), -3i64..3],
        ) {
            check(
                &format!("{{{{ range(start={start}, end={end}, step_by={step}) | length }}}}"),
                "",
                "",
            )?;
        }
    }
}
