//! Inputs for the property tests: text shaped like what users and stores hand reconfd (TOML
//! tables of the known keys, JSON documents, durations and sizes) with arbitrary values, so
//! that cases reach the code behind the parsers, not only their first syntax error.

use proptest::prelude::*;

/// A TOML value written as TOML, or text that is not one.
pub(crate) fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|text| toml::Value::String(text).to_string()),
        any::<i64>().prop_map(|number| number.to_string()),
        any::<f64>().prop_map(|number| toml::Value::Float(number).to_string()),
        any::<bool>().prop_map(|flag| flag.to_string()),
        prop::collection::vec(any::<String>(), 0..3).prop_map(|items| {
            toml::Value::Array(items.into_iter().map(toml::Value::String).collect()).to_string()
        }),
        duration().prop_map(|text| toml::Value::String(text).to_string()),
        size().prop_map(|text| toml::Value::String(text).to_string()),
        "[ -~]{0,20}",
    ]
}

/// Lines `key = value` of `keys` (and a few unknown ones) under optional table headers.
pub(crate) fn toml_text(
    keys: &'static [&'static str],
    headers: &'static [&'static str],
) -> impl Strategy<Value = String> {
    let key = prop_oneof![
        8 => prop::sample::select(keys),
        1 => Just("unknown_key"),
    ];
    let line = prop_oneof![
        8 => (key, toml_value()).prop_map(|(key, value)| format!("{key} = {value}\n")),
        1 => prop::sample::select(headers).prop_map(|header| format!("{header}\n")),
        1 => "[ -~]{0,30}\n",
    ];
    (
        prop::sample::select(headers),
        prop::collection::vec(line, 0..8),
    )
        .prop_map(|(header, lines)| format!("{header}\n{}", lines.concat()))
}

/// Durations as users write them, and near misses: huge numbers, unknown units, signs.
pub(crate) fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,25}(ns|us|ms|s|m|h|d|w|M|y|min|sec|x)?",
        "[0-9]{1,6}[a-z]{1,3} ?[0-9]{1,20}[a-z]{0,3}",
        "-?[0-9.]{1,8}[a-z]{0,2}(:[0-9.]{0,8}[a-z]{0,2})?",
        any::<String>(),
    ]
}

/// Sizes as users write them, and near misses.
pub(crate) fn size() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,25}(\\.[0-9]{1,5})? ?(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB|PB|EB|EiB|k|x)?",
        any::<String>(),
    ]
}

/// A JSON document: arbitrary values nested a few levels, objects keyed by `names` or by
/// arbitrary text.
pub(crate) fn json(names: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    let name = prop_oneof![
        4 => prop::sample::select(names).prop_map(str::to_string),
        1 => any::<String>(),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((name.clone(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}
