//! The keyword arguments of reconfd's functions, checked when a template is parsed.
//!
//! Tera knows a function's name when it parses a template but not the arguments it takes, so a
//! misspelt one (`gets(pattern="/x/*")`) would show only when that call runs: never in
//! `reconfd check` without data, and never while the call sits in a branch not taken. This
//! reads the tags of a parsed template as Tera's lexer does (strings, comments, raw blocks,
//! brackets) and finds each call of a registered function with an argument it does not take.

use std::collections::BTreeMap;

/// The arguments each registered function takes, by name.
pub(super) type Signatures = BTreeMap<&'static str, &'static [&'static str]>;

/// One call of a registered function with an argument it does not take.
#[derive(Debug, PartialEq)]
pub(super) struct Misnamed {
    /// Where the argument's name starts in the source, in bytes.
    pub offset: usize,
    /// What is wrong, in the words a render would use.
    pub message: String,
}

/// The message for `function` given `argument`, which it does not take; a render says the
/// same.
pub(super) fn not_taken(function: &str, argument: &str, takes: &[&str]) -> String {
    let takes = if takes.is_empty() {
        "no arguments".to_string()
    } else {
        takes.join(", ")
    };
    format!("{function}() has no argument `{argument}`; it takes {takes}")
}

/// The calls in `source` that give a function of `signatures` an argument it does not take,
/// in the order they appear.
pub(super) fn misnamed(source: &str, signatures: &Signatures) -> Vec<Misnamed> {
    let bytes = source.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(open) = source[at..].find('{').map(|found| at + found) {
        at = open + 1;
        match bytes.get(at) {
            Some(b'#') => at = find_after(source, at, "#}"),
            Some(b'{') => at = scan_tag(source, at + 1, b'}', signatures, &mut found),
            Some(b'%') => {
                let inner = source[at + 1..].trim_start_matches('-').trim_start();
                if inner.starts_with("raw") && !is_word(inner.as_bytes().get(3)) {
                    let end_raw = find_after(source, at, "endraw");
                    at = find_after(source, end_raw, "%}");
                } else {
                    at = scan_tag(source, at + 1, b'%', signatures, &mut found);
                }
            }
            _ => {}
        }
    }
    found
}

/// The offset just past the first `needle` at or after `from`, or the end of `source`.
fn find_after(source: &str, from: usize, needle: &str) -> usize {
    source[from..]
        .find(needle)
        .map_or(source.len(), |found| from + found + needle.len())
}

fn is_word(byte: Option<&u8>) -> bool {
    byte.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// Reads one tag from `start` (just inside `{{` or `{%`) to its closing `}}` or `%}` (`close`
/// is its first byte), noting misnamed arguments; returns the offset past the tag.
fn scan_tag(
    source: &str,
    start: usize,
    close: u8,
    signatures: &Signatures,
    found: &mut Vec<Misnamed>,
) -> usize {
    let bytes = source.as_bytes();
    // For each open bracket, the function it calls when it is a registered function's `(`.
    let mut brackets: Vec<Option<&str>> = Vec::new();
    // The last three words or symbols read, to tell a call from a filter (`| f(`), a test
    // (`is f(`, `is not f(`), a macro (`m::f(`), or a definition (`macro f(`).
    let mut before: [&str; 3] = ["", "", ""];
    let mut at = start;
    while at < bytes.len() {
        let byte = bytes[at];
        match byte {
            b'"' | b'\'' | b'`' => {
                at += 1;
                while at < bytes.len() && bytes[at] != byte {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
                at += 1;
                before = [before[1], before[2], "string"];
                continue;
            }
            b'(' | b'[' | b'{' => {
                let call = (byte == b'(')
                    .then(|| called(&before, signatures))
                    .flatten();
                brackets.push(call);
                before = [before[1], before[2], "("];
            }
            b')' | b']' => {
                brackets.pop();
                before = [before[1], before[2], ")"];
            }
            b'}' if brackets.is_empty() => {
                if close == b'}' && bytes.get(at + 1) == Some(&b'}') {
                    return at + 2;
                }
                before = [before[1], before[2], "}"];
            }
            b'}' => {
                brackets.pop();
                before = [before[1], before[2], ")"];
            }
            b'%' if close == b'%' && bytes.get(at + 1) == Some(&b'}') => return at + 2,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let end = source[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(source.len(), |found| at + found);
                let word = &source[at..end];
                let rest = source[end..].trim_start();
                let keyword_argument = rest.starts_with('=') && !rest.starts_with("==");
                if let (true, Some(Some(function))) = (keyword_argument, brackets.last())
                    && let Some(takes) = signatures.get(function)
                    && !takes.contains(&word)
                {
                    found.push(Misnamed {
                        offset: at,
                        message: not_taken(function, word, takes),
                    });
                }
                before = [before[1], before[2], word];
                at = end;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'|' => before = [before[1], before[2], "|"],
            b'.' => before = [before[1], before[2], "."],
            b':' => before = [before[1], before[2], ":"],
            _ => before = [before[1], before[2], "other"],
        }
        at += 1;
    }
    at
}

/// The registered function a `(` after `before` calls, if it is one: the word before it, unless
/// that word is a filter, a test, a macro of a namespace, an attribute or a definition.
fn called<'a>(before: &[&'a str; 3], signatures: &Signatures) -> Option<&'a str> {
    let [first, previous, word] = *before;
    let not_a_call = matches!(previous, "|" | "." | ":" | "is" | "macro" | "component")
        || (previous == "not" && first == "is");
    (!not_a_call && signatures.contains_key(word)).then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signatures() -> Signatures {
        BTreeMap::from([
            ("gets", &["key"][..]),
            ("getv", &["key", "default"][..]),
            ("services", &[][..]),
        ])
    }

    fn names(source: &str) -> Vec<(usize, String)> {
        misnamed(source, &signatures())
            .into_iter()
            .map(|m| (m.offset, m.message))
            .collect()
    }

    #[test]
    fn a_misspelt_argument_is_found_where_it_stands() {
        let source = "a {{ gets(pattern=\"/x/*\") | length }}\n{% for s in services(tag=1) %}";
        assert_eq!(
            names(source),
            [
                (
                    10,
                    "gets() has no argument `pattern`; it takes key".to_string()
                ),
                (
                    59,
                    "services() has no argument `tag`; it takes no arguments".to_string()
                ),
            ]
        );
    }

    #[test]
    fn nested_calls_are_told_apart() {
        assert_eq!(
            names("{{ getv(key=getv(dflt=\"a\", key=\"/b\"), default=[1, {\"a\": 2}]) }}"),
            [(
                17,
                "getv() has no argument `dflt`; it takes key, default".to_string()
            )]
        );
        assert_eq!(
            names("{{ getv(key=\"/a\", default=map(x=1) | join(sep=\",\")) }}"),
            []
        );
    }

    #[test]
    fn text_strings_comments_raw_blocks_filters_tests_and_macros_are_not_calls() {
        let source = "gets(pattern=1) {# {{ gets(pattern=1) }} #}\
                      {% raw %}{{ gets(pattern=1) }}{% endraw %}\
                      {{ \"gets(pattern=1)\" }}{{ x | getv(dflt=1) }}\
                      {% if x is getv(dflt=1) %}{% endif %}{{ m::gets(pattern=1) }}\
                      {% if x is not getv(dflt=1) %}{% endif %}\
                      {% macro gets(pattern=1) %}{% endmacro %}\
                      {% set pattern = 1 %}{{ {\"a\": {\"b\": 1}} }}{{ gets(key=x == 1) }}";
        assert_eq!(names(source), []);
    }

    #[test]
    fn not_before_a_call_is_still_a_call() {
        assert_eq!(names("{% if not gets(pattern=1) %}{% endif %}").len(), 1);
    }
}
