//! YAML 1.1 booleans, read as confd reads them.
//!
//! confd parses YAML with go-yaml v2, a YAML 1.1 reader: an unquoted `yes`, `no`, `on`, `off`,
//! `y` or `n` (in the spellings `yaml11_boolean` lists) is a boolean there, so `tls: on` is
//! the key `/tls` with the value `true`. serde_yaml_ng reads YAML 1.2, where those words are
//! strings, and its values cannot tell `on` from `"on"`. The file store keeps serde_yaml_ng's
//! tree, and with it its reading of numbers, nulls and anchors, its error messages and its
//! limits, and asks a second parser, whose events carry each scalar's style, which of the
//! tree's strings were unquoted words; that second reading happens only for files in which
//! such a word appears at all.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, StrInput};
use serde_yaml_ng::Value;

/// Turns the strings of `tree` that were unquoted, untagged YAML 1.1 boolean words in `text`
/// into booleans, map keys included (go-yaml v2 resolves a key as it resolves a value). `tree`
/// must be serde_yaml_ng's reading of `text`, before merge keys are applied: the second
/// parser's events are matched to it node by node.
///
/// Fails, leaving `tree` partly changed, when the two parsers do not read `text` alike; the
/// caller then keeps the YAML 1.2 reading.
pub(super) fn resolve_booleans(text: &str, tree: &mut Value) -> Result<(), String> {
    if !mentions_a_boolean_word(text) {
        return Ok(());
    }
    let mut reading = Reading {
        events: Parser::new_from_str(text),
        anchored: HashMap::new(),
    };
    reading.expect(|event| matches!(event, Event::StreamStart))?;
    let (event, span) = reading.next()?;
    match event {
        // Nothing but comments and blank lines: serde_yaml_ng's null has nothing to change.
        Event::StreamEnd => Ok(()),
        Event::DocumentStart(_) => {
            reading.resolve(tree)?;
            // serde_yaml_ng refuses a second document, so nothing past this one is read.
            reading.expect(|event| matches!(event, Event::DocumentEnd))
        }
        _ => Err(disagreement(&span)),
    }
}

/// What go-yaml v2 reads an unquoted `word` as, where it is a boolean that YAML 1.2 reads as a
/// string (`true` and `false` are booleans in both).
fn yaml11_boolean(word: &str) -> Option<bool> {
    match word {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// Whether a boolean word may be a scalar of `text`: whether one stands in `text` between two
/// characters that are not ASCII letters. A scalar `yes` always does, so no such scalar is
/// missed; a word in a longer string or a comment only costs the second parse. A plain loop:
/// this runs over every YAML file read, and `split` was several times slower.
fn mentions_a_boolean_word(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut word_start = 0;
    for (at, byte) in bytes.iter().enumerate() {
        if !byte.is_ascii_alphabetic() {
            if is_boolean_word(&bytes[word_start..at]) {
                return true;
            }
            word_start = at + 1;
        }
    }
    is_boolean_word(&bytes[word_start..])
}

fn is_boolean_word(letters: &[u8]) -> bool {
    // Every boolean word is three letters or fewer: longer runs need no string match.
    matches!(letters.len(), 1..=3)
        && std::str::from_utf8(letters).is_ok_and(|word| yaml11_boolean(word).is_some())
}

/// The second parser's events, walked along serde_yaml_ng's tree.
struct Reading<'input> {
    events: Parser<'input, StrInput<'input>>,
    /// Each anchored node as resolved, by the parser's anchor id: serde_yaml_ng copied the
    /// node to every alias of it, so each copy is replaced by the resolved node.
    anchored: HashMap<usize, Value>,
}

impl<'input> Reading<'input> {
    fn next(&mut self) -> Result<(Event<'input>, Span), String> {
        match self.events.next() {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(format!(
                "line {} column {}: {}",
                e.marker().line(),
                e.marker().col() + 1,
                e.info()
            )),
            None => Err("the events ended before the document did".to_string()),
        }
    }

    fn expect(&mut self, expected: impl Fn(&Event) -> bool) -> Result<(), String> {
        let (event, span) = self.next()?;
        if expected(&event) {
            Ok(())
        } else {
            Err(disagreement(&span))
        }
    }

    /// Resolves `node` from the events of the node it was read from, the next in the stream.
    fn resolve(&mut self, node: &mut Value) -> Result<(), String> {
        let (event, span) = self.next()?;
        let anchor = match event {
            Event::Alias(anchor) => {
                *node = self
                    .anchored
                    .get(&anchor)
                    .cloned()
                    .ok_or_else(|| disagreement(&span))?;
                return Ok(());
            }
            // A tag, even `!!str`, says what the scalar is: only untagged words are resolved.
            Event::Scalar(word, ScalarStyle::Plain, anchor, None) => {
                if let Some(boolean) = yaml11_boolean(&word) {
                    if !matches!(node, Value::String(string) if *string == word) {
                        return Err(disagreement(&span));
                    }
                    *node = Value::Bool(boolean);
                }
                anchor
            }
            Event::Scalar(_, _, anchor, _) => anchor,
            Event::SequenceStart(anchor, _) => {
                let Value::Sequence(items) = untagged(node) else {
                    return Err(disagreement(&span));
                };
                for item in items {
                    self.resolve(item)?;
                }
                self.expect(|event| matches!(event, Event::SequenceEnd))?;
                anchor
            }
            Event::MappingStart(anchor, _) => {
                let Value::Mapping(map) = untagged(node) else {
                    return Err(disagreement(&span));
                };
                // A key that changes must be inserted anew. Two keys that become the same
                // boolean (`yes` and `true`) leave the later value, as go-yaml v2 does.
                let entries = std::mem::take(map);
                for (mut key, mut value) in entries {
                    self.resolve(&mut key)?;
                    self.resolve(&mut value)?;
                    map.insert(key, value);
                }
                self.expect(|event| matches!(event, Event::MappingEnd))?;
                anchor
            }
            _ => return Err(disagreement(&span)),
        };
        // Anchor ids start at 1; 0 is a node without an anchor.
        if anchor != 0 {
            self.anchored.insert(anchor, node.clone());
        }
        Ok(())
    }
}

/// A custom tag (`!app {…}`) wraps a collection in serde_yaml_ng's tree but is only an
/// attribute of the event.
fn untagged(node: &mut Value) -> &mut Value {
    match node {
        Value::Tagged(tagged) => untagged(&mut tagged.value),
        other => other,
    }
}

fn disagreement(span: &Span) -> String {
    format!(
        "line {} column {}: the YAML 1.1 reading does not match the YAML 1.2 one",
        span.start.line(),
        span.start.col() + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_yaml_ng's reading of `text`, resolved.
    fn resolved(text: &str) -> Result<Value, String> {
        let mut tree = serde_yaml_ng::from_str::<Value>(text).expect("valid YAML 1.2");
        resolve_booleans(text, &mut tree)?;
        Ok(tree)
    }

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str::<Value>(text).expect("valid YAML")
    }

    #[test]
    fn unquoted_words_become_booleans_in_every_spelling_go_yaml_v2_knows() {
        let text = "[y, Y, yes, Yes, YES, on, On, ON, n, N, no, No, NO, off, Off, OFF]";
        assert_eq!(
            resolved(text).expect("resolved"),
            yaml(
                "[true, true, true, true, true, true, true, true, \
                 false, false, false, false, false, false, false, false]"
            )
        );
    }

    #[test]
    fn quoted_tagged_block_and_other_spellings_stay_strings() {
        let text = "single: 'yes'\ndouble: \"on\"\nstr: !!str no\ncustom: !word off\n\
                    literal: |-\n  y\nfolded: >-\n  n\nmixed: yEs\nlonger: yess\nsentence: say yes\n";
        assert_eq!(resolved(text).expect("resolved"), yaml(text));
    }

    #[test]
    fn words_in_nested_maps_and_sequences_and_flow_collections_are_resolved() {
        let text = "app:\n  tls: on\n  hosts:\n    - name: a\n      enabled: yes\n    - n\n\
                    flow: {debug: off, list: [Y, 'N']}\n";
        assert_eq!(
            resolved(text).expect("resolved"),
            yaml(
                "app:\n  tls: true\n  hosts:\n    - name: a\n      enabled: true\n    - false\n\
                 flow: {debug: false, list: [true, 'N']}\n"
            )
        );
    }

    #[test]
    fn map_keys_are_resolved_in_place() {
        let text = "first: 1\nyes: 2\n'no': 3\noff: 4\nlast: 5\n";
        let tree = resolved(text).expect("resolved");
        let keys: Vec<&Value> = tree.as_mapping().expect("a map").keys().collect();
        assert_eq!(
            keys,
            [
                &Value::from("first"),
                &Value::Bool(true),
                &Value::from("no"),
                &Value::Bool(false),
                &Value::from("last"),
            ]
        );
    }

    #[test]
    fn a_word_key_and_its_boolean_spelling_leave_the_later_value() {
        let tree = resolved("yes: 1\ntrue: 2\n").expect("resolved");
        assert_eq!(tree, yaml("true: 2\n"));
    }

    #[test]
    fn aliases_and_tagged_collections_carry_the_resolved_values() {
        let text = "base: &base {tls: on, port: 80}\ncopy: *base\nflag: &flag no\nagain: *flag\n\
                    custom: !app [yes]\n";
        let tree = resolved(text).expect("resolved");
        assert_eq!(
            tree,
            yaml(
                "base: {tls: true, port: 80}\ncopy: {tls: true, port: 80}\nflag: false\n\
                 again: false\ncustom: !app [true]\n"
            )
        );
    }

    #[test]
    fn documents_without_a_word_are_not_parsed_again() {
        assert!(!mentions_a_boolean_word(
            "proxy:\n  web00001: 10.0.0.1:8080\n  tls: true\n  quiet: false\n"
        ));
        assert!(!mentions_a_boolean_word("yess: nn\nnone: offset\n"));
        assert!(mentions_a_boolean_word("a: yes"));
        assert!(mentions_a_boolean_word("yes"));
        assert!(mentions_a_boolean_word("[n]"));
        assert!(mentions_a_boolean_word("x: 1 # on purpose"));
    }

    #[test]
    fn empty_and_comment_only_documents_are_left_as_they_are() {
        assert_eq!(resolved("").expect("resolved"), Value::Null);
        assert_eq!(resolved("# yes\n").expect("resolved"), Value::Null);
        assert_eq!(resolved("--- # yes\n").expect("resolved"), Value::Null);
    }

    #[test]
    fn a_tree_that_is_not_the_texts_reading_is_a_disagreement() {
        let mut tree = yaml("flag: maybe\n");
        let error = resolve_booleans("flag: yes\n", &mut tree).expect_err("a disagreement");
        assert!(error.starts_with("line 1 column 7: "), "{error}");
        let mut tree = yaml("[a, b]\n");
        assert!(resolve_booleans("[a, yes, c]\n", &mut tree).is_err());
    }
}
