//! Keeping secrets out of everything reconfd writes.
//!
//! Text leaves the process in few places: log lines (through [`MaskedStderr`]), `--noop` diffs
//! on standard output, `/status`, `/ready` and `/metrics`, sd_notify's status line, and the
//! error printed when the settings are unusable. Each passes through [`mask`] just before it is
//! written, which replaces with `***`
//!
//! - the password of every URL with user information (`http://u:pw@host` shows as
//!   `http://u:***@host`), and
//! - every secret a store group published through its [`GroupSecrets`]: the credentials of its
//!   store, and the values of the keys its secret resources read (every value, for a store of
//!   secrets such as Vault), as they are and as JSON writes them.
//!
//! Masking where text leaves, rather than where each message is made, also covers the messages
//! no one thought of: a check command echoing the line it rejects, a template error quoting a
//! value, a client library's error.
//!
//! Values shorter than [`MIN_SECRET_CHARS`] are not masked: masking `1` or `on` everywhere
//! would leave no message readable, and so short a secret is guessed in a few tries anyway.
//! Text a template makes from a secret (its base64, a part of it) cannot be recognised;
//! `--noop` diffs of secret resources therefore hide whole lines.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::io::Write;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::{AhoCorasick, MatchKind};

use crate::store::nodes::redact;

/// What a secret shows as.
pub(crate) const MASK: &str = "***";

/// The shortest value masked, in characters.
pub(crate) const MIN_SECRET_CHARS: usize = 4;

/// Values a store no longer holds stay masked, up to as many as it holds (and at least this
/// many): the previous file, a backup or a rollback's message may still show them.
const MIN_RETIRED: usize = 64;

/// The automaton of each group's secrets, by group.
static PUBLISHED: RwLock<BTreeMap<u64, AhoCorasick>> = RwLock::new(BTreeMap::new());

/// The number of the next [`GroupSecrets`].
static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

/// `text` with every URL password and every published secret replaced by [`MASK`].
pub fn mask(text: &str) -> Cow<'_, str> {
    let mut text = redact_urls(text);
    let published = PUBLISHED
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for automaton in published.values() {
        if automaton.is_match(text.as_ref()) {
            let mut masked = String::with_capacity(text.len());
            automaton.replace_all_with(&text, &mut masked, |_, _, masked| {
                masked.push_str(MASK);
                true
            });
            text = Cow::Owned(masked);
        }
    }
    text
}

/// Masks every string in `value`, keys included.
pub(crate) fn mask_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => {
            if let Cow::Owned(masked) = mask(text) {
                *text = masked;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_json),
        serde_json::Value::Object(fields) => {
            let masked: serde_json::Map<String, serde_json::Value> = std::mem::take(fields)
                .into_iter()
                .map(|(key, mut value)| {
                    mask_json(&mut value);
                    (mask(&key).into_owned(), value)
                })
                .collect();
            *fields = masked;
        }
        _ => {}
    }
}

/// `text` with the password of every `scheme://user:password@host` in it masked. A URL's
/// authority runs from its scheme to the next `/`, `?`, `#`, white space or quote.
fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(separator) = rest.find("://") {
        let start = rest[..separator]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |before| before + 1);
        let end = rest[separator + 3..]
            .find(|c: char| c.is_whitespace() || "/?#\"`<>\\".contains(c))
            .map_or(rest.len(), |length| separator + 3 + length);
        redacted.push_str(&rest[..start]);
        redacted.push_str(&redact(&rest[start..end]));
        rest = &rest[end..];
    }
    redacted.push_str(rest);
    Cow::Owned(redacted)
}

/// `message`, an error about the line of the TOML `text` that starts at `line_start`, naming
/// the line's key and quoting the line when it is `key = value`. The value shows only when
/// `readable(key)`, for a known setting that holds no credential; for any other key (a
/// password, a token, or a key not known, which may be a credential misspelt) it shows as
/// [`MASK`], and is masked in `message` as well, which may quote it (``invalid type: integer
/// `12345678` ``). A line of another form, which may be part of a multi-line value, is not
/// quoted.
pub(crate) fn with_settings_line(
    message: &str,
    text: &str,
    line_start: usize,
    readable: impl Fn(&str) -> bool,
) -> String {
    let line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_default();
    let Some((key, value)) = line
        .split_once('=')
        .map(|(key, value)| (key.trim(), value.trim()))
        .filter(|(key, _)| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    else {
        return message.to_string();
    };
    let mut message = message.to_string();
    let shown = if readable(key) {
        value
    } else {
        for form in [value, value.trim_matches(['"', '\''])] {
            if !form.is_empty() {
                message = replace_whole(&message, form);
            }
        }
        MASK
    };
    if !message.contains(&format!("`{key}`")) {
        message = format!("`{key}`: {message}");
    }
    format!("{message}, in `{key} = {shown}`")
}

/// `message` with each whole occurrence of `value` masked: one not inside a longer word, so
/// that masking `e` leaves `expected` as it is.
fn replace_whole(message: &str, value: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let starts_word = value.chars().next().is_some_and(is_word);
    let ends_word = value.chars().next_back().is_some_and(is_word);
    let mut masked = String::with_capacity(message.len());
    let mut copied = 0;
    for (at, _) in message.match_indices(value) {
        if at < copied {
            continue;
        }
        let after = at + value.len();
        let joined_before = starts_word && message[..at].chars().next_back().is_some_and(is_word);
        let joined_after = ends_word && message[after..].chars().next().is_some_and(is_word);
        if !joined_before && !joined_after {
            masked.push_str(&message[copied..at]);
            masked.push_str(MASK);
            copied = after;
        }
    }
    masked.push_str(&message[copied..]);
    masked
}

/// Standard error, for log lines, with each line masked before it is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaskedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedLine;

    fn make_writer(&'a self) -> MaskedLine {
        MaskedLine(Vec::new())
    }
}

/// One log line, kept whole so that no secret is split between writes, and written to standard
/// error, masked, when dropped.
#[derive(Debug)]
pub struct MaskedLine(Vec<u8>);

impl Write for MaskedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedLine {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.0);
        // A log line that cannot be written has nowhere else to go.
        let _ = std::io::stderr().write_all(mask(&line).as_bytes());
    }
}

/// The secrets of one store group, published for [`mask`] while it lives: the credentials of
/// its store, and the secret values of its snapshot as [`GroupSecrets::update`] last gave them.
pub(crate) struct GroupSecrets {
    group: u64,
    credentials: Vec<String>,
    /// The values of the latest update.
    current: HashSet<String>,
    /// Values the store held before and no longer does, oldest first.
    retired: VecDeque<String>,
}

impl GroupSecrets {
    /// The secrets of a group whose store uses `credentials`, published at once.
    pub(crate) fn new(credentials: Vec<String>) -> GroupSecrets {
        let secrets = GroupSecrets {
            group: NEXT_GROUP.fetch_add(1, Ordering::Relaxed),
            credentials,
            current: HashSet::new(),
            retired: VecDeque::new(),
        };
        secrets.publish();
        secrets
    }

    /// Takes `values` as the group's secret values; masking follows them when they differ from
    /// the latest ones.
    pub(crate) fn update(&mut self, values: &[&str]) {
        let values: HashSet<&str> = values.iter().copied().collect();
        if values.len() == self.current.len()
            && values.iter().all(|value| self.current.contains(*value))
        {
            return;
        }
        let values: HashSet<String> = values.into_iter().map(str::to_string).collect();
        for gone in self.current.difference(&values) {
            self.retired.push_back(gone.clone());
        }
        self.retired.retain(|value| !values.contains(value));
        while self.retired.len() > values.len().max(MIN_RETIRED) {
            self.retired.pop_front();
        }
        self.current = values;
        self.publish();
    }

    /// Builds the automaton of every secret of the group and puts it in place of the previous
    /// one.
    fn publish(&self) {
        let mut patterns = BTreeSet::new();
        for secret in self
            .credentials
            .iter()
            .chain(&self.current)
            .chain(&self.retired)
        {
            add_patterns(secret, &mut patterns);
        }
        if patterns.is_empty() {
            // Nothing to mask: no automaton for `mask` to run.
            self.withdraw();
            return;
        }
        let automaton = match AhoCorasick::builder()
            // The longest secret at a place wins, so no part of it is left showing.
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
        {
            Ok(automaton) => automaton,
            Err(e) => {
                // The previous automaton stays: it masks all but the newest values.
                tracing::warn!("cannot build the masks of {} secrets: {e}", patterns.len());
                return;
            }
        };
        PUBLISHED
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(self.group, automaton);
    }

    /// Takes the group's automaton off the published ones.
    fn withdraw(&self) {
        PUBLISHED
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.group);
    }
}

impl Drop for GroupSecrets {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// The texts that stand for `secret` in output: itself, without surrounding white space and,
/// when it has several lines, each line (a command that rejects a file quotes one line); each
/// also as JSON writes it, for `--log-format json` and the label values of `/metrics`. Texts
/// shorter than [`MIN_SECRET_CHARS`] are left out.
fn add_patterns(secret: &str, patterns: &mut BTreeSet<String>) {
    let lines = secret.contains('\n').then(|| secret.lines()).into_iter();
    for text in [secret, secret.trim()]
        .into_iter()
        .chain(lines.flatten().map(str::trim))
    {
        if text.chars().count() < MIN_SECRET_CHARS {
            continue;
        }
        let json = serde_json::to_string(text).unwrap_or_default();
        if let Some(json) = json
            .strip_prefix('"')
            .and_then(|json| json.strip_suffix('"'))
            && json != text
        {
            patterns.insert(json.to_string());
        }
        patterns.insert(text.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_values_and_credentials_are_masked_until_their_group_is_dropped() {
        let mut group = GroupSecrets::new(vec!["Tok3n-QUUX".to_string()]);
        group.update(&["Hunter2'Ws8", "ab", "-----BEGIN\nKeyLine-Ws8\n-----END"]);
        let masked = mask(
            "stats auth admin:Hunter2'Ws8 rejected; token Tok3n-QUUX; \
             line KeyLine-Ws8; ab stays",
        );
        assert_eq!(
            masked,
            "stats auth admin:*** rejected; token ***; line ***; ab stays"
        );
        drop(group);
        assert_eq!(mask("Hunter2'Ws8"), "Hunter2'Ws8");
    }

    #[test]
    fn a_value_the_store_dropped_stays_masked_for_a_while() {
        let mut group = GroupSecrets::new(Vec::new());
        group.update(&["OldPass-Ws9"]);
        group.update(&["NewPass-Ws9"]);
        assert_eq!(mask("OldPass-Ws9 then NewPass-Ws9"), "*** then ***");
        let many: Vec<String> = (0..MIN_RETIRED + 1)
            .map(|index| format!("Later-{index}-Ws9"))
            .collect();
        for value in &many {
            group.update(&[value.as_str()]);
        }
        assert_eq!(
            mask("OldPass-Ws9"),
            "OldPass-Ws9",
            "retired ones are bounded"
        );
        assert_eq!(mask(&many[MIN_RETIRED - 1]), "***");
    }

    #[test]
    fn the_longest_secret_wins_and_json_escapes_are_masked_too() {
        let mut group = GroupSecrets::new(Vec::new());
        group.update(&["Pass-WsA", "Pass-WsA\"quoted\\", "Ends-WsA\""]);
        assert_eq!(mask("x Pass-WsA\"quoted\\ y"), "x *** y");
        assert_eq!(
            mask("{\"m\":\"Pass-WsA\\\"quoted\\\\\"}"),
            "{\"m\":\"***\"}"
        );
        assert_eq!(mask("{\"m\":\"Ends-WsA\\\"\"}"), "{\"m\":\"***\"}");
        let mut json = serde_json::json!({"error": "bad Pass-WsA", "n": 1, "list": ["Pass-WsA"]});
        mask_json(&mut json);
        assert_eq!(
            json,
            serde_json::json!({"error": "bad ***", "n": 1, "list": ["***"]})
        );
    }

    #[test]
    fn a_settings_line_shows_its_value_only_for_readable_keys() {
        let text = "backend = \"etcd\"\npassword = 12345678\ninterval = \"abc\"\n\
                    passwd = \"Pw-PLUGH\"\n  more-PLUGH\n";
        let readable = |key: &str| ["backend", "interval"].contains(&key);
        let line = |number: usize| {
            text.split_inclusive('\n')
                .take(number - 1)
                .map(str::len)
                .sum::<usize>()
        };
        assert_eq!(
            with_settings_line(
                "invalid type: integer `12345678`, expected a string",
                text,
                line(2),
                readable
            ),
            "`password`: invalid type: integer `***`, expected a string, in `password = ***`"
        );
        assert_eq!(
            with_settings_line("invalid type: string \"abc\"", text, line(3), readable),
            "`interval`: invalid type: string \"abc\", in `interval = \"abc\"`"
        );
        assert_eq!(
            with_settings_line("unknown field `passwd`", text, line(4), readable),
            "unknown field `passwd`, in `passwd = ***`"
        );
        assert_eq!(
            with_settings_line("invalid string", text, line(5), readable),
            "invalid string"
        );
        // A short value is masked where it stands, not inside the words around it.
        let text = "reload = \"e\"\nnodes = \"x\"\n";
        assert_eq!(
            with_settings_line(
                "unknown field `reload`, expected one of `src`, `dest`",
                text,
                line(1),
                readable
            ),
            "unknown field `reload`, expected one of `src`, `dest`, in `reload = ***`"
        );
        assert_eq!(
            with_settings_line(
                "invalid type: string \"x\", expected a sequence",
                text,
                "reload = \"e\"\n".len(),
                readable
            ),
            "`nodes`: invalid type: string ***, expected a sequence, in `nodes = ***`"
        );
    }

    #[test]
    fn url_passwords_are_masked_wherever_a_url_stands_in_text() {
        for (text, shown) in [
            (
                "node \"http://u:Sup3r@127.0.0.1:0\": the port",
                "node \"http://u:***@127.0.0.1:0\": the port",
            ),
            (
                "url (https://root:p@ss@etcd:2379/v3/kv/range): refused",
                "url (https://root:***@etcd:2379/v3/kv/range): refused",
            ),
            (
                "a redis://:pw@h:6379/0,nats://me:x@n:4222 b",
                "a redis://:***@h:6379/0,nats://me:***@n:4222 b",
            ),
            (
                "a token nats://NatsTok-1212@127.0.0.1:4222/x",
                "a token nats://***@127.0.0.1:4222/x",
            ),
            (
                "no password http://h:80/x?a=b@c",
                "no password http://h:80/x?a=b@c",
            ),
            ("plain text: a://", "plain text: a://"),
        ] {
            assert_eq!(mask(text), shown, "{text}");
        }
    }
}
