//! Go's printing and builtins for templates translated from confd by `reconfd convert`, where
//! Tera's own differ from Go's in what they write.
//!
//! - filter `goPrint`: a value as Go's `text/template` prints it (`[a b]` for a list,
//!   `map[k:v]` for a map, `{key value}` for a pair, floats as `%v`, `<no value>` for none);
//! - filter `goItems`: what Go's `range` visits, as a map from index or key to value: a list
//!   by index, a map by sorted key, an integer `n` as `0..n`;
//! - filter `goLen`: Go's `len` (a string's length in bytes);
//! - functions `goPrintf(format, args)`, `goSprint(args)`, `goSprintln(args)`: Go's `printf`,
//!   `print` and `println`.

use std::iter::Peekable;
use std::str::Chars;

use tera::value::Key;
use tera::{Kwargs, Map, State, TeraResult, Value};

use super::{Registry, register_function};

/// Registers the Go helpers on `tera`.
pub(super) fn register(tera: &mut Registry) {
    tera.register_filter("goPrint", |value: Value, _: Kwargs, _: &State| {
        if value.is_none() || value.is_undefined() {
            "<no value>".to_string()
        } else {
            print(&value)
        }
    });
    tera.register_filter("goItems", items);
    tera.register_filter("goLen", length);
    tera.register_filter("goByte", byte);
    register_function(
        tera,
        "goPrintf",
        &["format", "args"],
        |kwargs: Kwargs, _: &State| {
            let format = kwargs.must_get::<&str>("format")?;
            let args = kwargs.get::<Value>("args")?.unwrap_or_else(Value::none);
            Ok::<_, tera::Error>(printf(format, args.as_array().unwrap_or_default()))
        },
    );
    register_function(tera, "goSprint", &["args"], |kwargs: Kwargs, _: &State| {
        let args = kwargs.must_get::<Value>("args")?;
        Ok::<_, tera::Error>(sprint(args.as_array().unwrap_or_default()))
    });
    register_function(
        tera,
        "goSprintln",
        &["args"],
        |kwargs: Kwargs, _: &State| {
            let args = kwargs.must_get::<Value>("args")?;
            let line: Vec<String> = args
                .as_array()
                .unwrap_or_default()
                .iter()
                .map(print)
                .collect();
            Ok::<_, tera::Error>(line.join(" ") + "\n")
        },
    );
}

/// A value as Go's `fmt` prints it with `%v`.
pub fn print(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    if let Some(text) = value.as_str() {
        out.push_str(text);
    } else if let Some(flag) = value.as_bool() {
        out.push_str(if flag { "true" } else { "false" });
    } else if value.is_f64() {
        out.push_str(&float(value.as_f64().unwrap_or_default()));
    } else if let Some(items) = value.as_array() {
        out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            write_value(out, item);
        }
        out.push(']');
    } else if let Some(map) = value.as_map() {
        // A `{key, value}` pair stands for confd's KVPair struct, printed as a struct.
        let keys: Vec<Option<&str>> = map.keys().map(Key::as_str).collect();
        if keys == [Some("key"), Some("value")] {
            out.push('{');
            for (i, item) in map.values().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_value(out, item);
            }
            out.push('}');
            return;
        }
        out.push_str("map[");
        let mut entries: Vec<(&Key, &Value)> = map.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (key, item)) in entries.into_iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&key.to_string());
            out.push(':');
            write_value(out, item);
        }
        out.push(']');
    } else if value.is_none() || value.is_undefined() {
        out.push_str("<nil>");
    } else {
        out.push_str(&value.to_string());
    }
}

/// A float as Go's `%v`: the shortest digits, in exponent form (`1e+06`) when the exponent is
/// below -4 or at least 6
/// (`strconv.FormatFloat` with the shortest precision, `'g'`).
pub fn float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let text = format!("{value}");
    text.strip_suffix(".0").map(str::to_string).unwrap_or(text)
}

/// `value | goItems`: the index or key of each element and the element, as Go's `range`
/// visits them.
fn items(value: Value, _: Kwargs, _: &State) -> TeraResult<Value> {
    let mut result = Map::default();
    if let Some(list) = value.as_array() {
        for (i, item) in list.iter().enumerate() {
            result.insert(Key::I64(i as i64), item.clone());
        }
    } else if let Some(map) = value.as_map() {
        let mut entries: Vec<(&Key, &Value)> = map.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        for (key, item) in entries {
            result.insert(key.clone(), item.clone());
        }
    } else if let Some(count) = value.as_i64() {
        for i in 0..count.clamp(0, 100_000) {
            result.insert(Key::I64(i), Value::from(i));
        }
    } else if !(value.is_none() || value.is_undefined()) {
        return Err(tera::Error::message(format!(
            "range: cannot iterate over {}",
            value.name()
        )));
    }
    Ok(Value::from(result))
}

/// `value | goLen`: bytes of a string, elements of a list or map.
/// Go's `index` of a string: the byte at `at`, a number.
fn byte(text: &str, kwargs: Kwargs, _: &State) -> TeraResult<u8> {
    let at = kwargs.must_get::<i64>("at")?;
    usize::try_from(at)
        .ok()
        .and_then(|at| text.as_bytes().get(at).copied())
        .ok_or_else(|| {
            tera::Error::message(format!(
                "index out of range [{at}] with length {}",
                text.len()
            ))
        })
}

fn length(value: Value, _: Kwargs, _: &State) -> TeraResult<i64> {
    if let Some(text) = value.as_str() {
        return Ok(text.len() as i64);
    }
    value
        .len()
        .map(|n| n as i64)
        .ok_or_else(|| tera::Error::message(format!("len of {}", value.name())))
}

/// Go's `fmt.Sprint`: a space between operands when neither is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 && !arg.is_string() && !args[i - 1].is_string() {
            out.push(' ');
        }
        write_value(&mut out, arg);
    }
    out
}

/// Go's `fmt.Sprintf`: the verbs `%v %s %q %d %b %o %O %x %X %c %U %e %E %f %F %g %G %t %%`,
/// the flags `-`, `+`, `#`, `0` and space, a width and a precision (either may be `*`, taken
/// from the arguments), and argument indexes (`%[2]s`). A list's elements are formatted one
/// by one, as Go does. A missing, extra or badly indexed argument is written as Go writes it.
/// A verb given a value it does not format (`%s` of a number) prints the value where Go
/// writes a mark such as `%!s(int=3)`, which no working template relies on.
pub fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut next = 0;
    let mut reordered = false;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '0' => spec.zero = true,
                ' ' => spec.space = true,
                '#' => spec.sharp = true,
                _ => break,
            }
            chars.next();
        }
        let mut bad_index = !argument_index(&mut chars, args.len(), &mut next, &mut reordered);
        match count(&mut chars, args, &mut next) {
            Count::Given(width) if width < 0 => {
                spec.minus = true;
                spec.width = width.unsigned_abs() as usize;
            }
            Count::Given(width) => spec.width = width as usize,
            Count::Bad => out.push_str("%!(BADWIDTH)"),
            Count::Absent => {}
            Count::Overlong => {
                out.push_str("%!(NOVERB)");
                break;
            }
        }
        if chars.peek() == Some(&'.') {
            chars.next();
            bad_index |= !argument_index(&mut chars, args.len(), &mut next, &mut reordered);
            match count(&mut chars, args, &mut next) {
                Count::Given(precision) => spec.precision = usize::try_from(precision).ok(),
                Count::Bad => out.push_str("%!(BADPREC)"),
                Count::Absent => spec.precision = Some(0),
                Count::Overlong => {
                    out.push_str("%!(NOVERB)");
                    break;
                }
            }
        }
        bad_index |= !argument_index(&mut chars, args.len(), &mut next, &mut reordered);
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        if bad_index {
            out.push_str(&format!("%!{verb}(BADINDEX)"));
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        format_argument(&mut out, verb, arg, &spec);
    }
    if !reordered && next < args.len() {
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={}", go_type(a), print(a)))
            .collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

/// The flags, width and precision of one verb.
#[derive(Default)]
struct Spec {
    minus: bool,
    plus: bool,
    zero: bool,
    space: bool,
    sharp: bool,
    width: usize,
    precision: Option<usize>,
}

/// A width or precision as written: digits, or `*` and an integer argument.
enum Count {
    Absent,
    Given(i64),
    /// `*` with an argument that is no integer, or one past [`LARGEST_COUNT`].
    Bad,
    /// Digits past [`LARGEST_COUNT`]: Go takes the rest of the format as the number.
    Overlong,
}

/// Go refuses a width or precision past 10^6 (`tooLarge` in fmt/print.go), which also keeps a
/// value from the store from asking for gigabytes of padding.
const LARGEST_COUNT: i64 = 1_000_000;

fn count(chars: &mut Peekable<Chars>, args: &[Value], next: &mut usize) -> Count {
    if chars.next_if_eq(&'*').is_some() {
        let value = args
            .get(*next)
            .and_then(Value::as_i64)
            .filter(|n| n.unsigned_abs() <= LARGEST_COUNT.unsigned_abs());
        *next += 1;
        return value.map_or(Count::Bad, Count::Given);
    }
    // As Go's `parsenum`: the number so far is checked before each digit is added.
    let mut number: Option<i64> = None;
    while let Some(d) = chars.next_if(char::is_ascii_digit) {
        let so_far = number.unwrap_or(0);
        if so_far > LARGEST_COUNT {
            chars.by_ref().for_each(drop);
            return Count::Overlong;
        }
        number = Some(so_far * 10 + i64::from(d as u8 - b'0'));
    }
    number.map_or(Count::Absent, Count::Given)
}

/// `[n]` before a width, a precision or a verb: the next argument is the n-th. False when
/// `n` names no argument.
fn argument_index(
    chars: &mut Peekable<Chars>,
    count: usize,
    next: &mut usize,
    reordered: &mut bool,
) -> bool {
    if chars.next_if_eq(&'[').is_none() {
        return true;
    }
    let mut digits = String::new();
    while let Some(c) = chars.next_if(|&c| c != ']') {
        digits.push(c);
    }
    chars.next();
    *reordered = true;
    match digits.parse::<usize>() {
        Ok(n) if (1..=count).contains(&n) => {
            *next = n - 1;
            true
        }
        _ => false,
    }
}

/// One argument under one verb, padded to the width.
fn format_argument(out: &mut String, verb: char, arg: &Value, spec: &Spec) {
    if let (Some(items), false) = (arg.as_array(), matches!(verb, 's' | 'v')) {
        out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            format_argument(out, verb, item, spec);
        }
        out.push(']');
        return;
    }
    let text = if verb == 'T' {
        go_type(arg).to_string()
    } else if let Some(text) = arg.as_i128().and_then(|n| integer(verb, n, spec)) {
        text
    } else if let Some(text) = arg.as_f64().and_then(|v| floating(verb, v, spec)) {
        text
    } else {
        other(verb, arg, spec)
    };
    let pad = spec.width.saturating_sub(text.chars().count());
    if spec.minus {
        out.push_str(&text);
        out.push_str(&" ".repeat(pad));
    } else {
        // Go pads a string with zeros too under the `0` flag (`%05s` of "42" is "00042");
        // a number's zeros are already in its text.
        let fill = if spec.zero && arg.is_string() {
            "0"
        } else {
            " "
        };
        out.push_str(&fill.repeat(pad));
        out.push_str(&text);
    }
}

/// An integer under an integer verb, with Go's zero padding and precision (minimum digits).
fn integer(verb: char, n: i128, spec: &Spec) -> Option<String> {
    let magnitude = n.unsigned_abs();
    let (digits, prefix) = match verb {
        'd' | 'v' => (magnitude.to_string(), ""),
        'b' => (format!("{magnitude:b}"), if spec.sharp { "0b" } else { "" }),
        'o' => (format!("{magnitude:o}"), if spec.sharp { "0" } else { "" }),
        'O' => (format!("{magnitude:o}"), "0o"),
        'x' => (format!("{magnitude:x}"), if spec.sharp { "0x" } else { "" }),
        'X' => (format!("{magnitude:X}"), if spec.sharp { "0X" } else { "" }),
        'c' => return Some(code_point(n).to_string()),
        'q' => return Some(format!("{:?}", code_point(n))),
        'U' if spec.sharp => return Some(format!("U+{n:04X} '{}'", code_point(n))),
        'U' => return Some(format!("U+{n:04X}")),
        _ => return None,
    };
    let signed = n < 0 || spec.plus || spec.space;
    let least = match spec.precision {
        Some(0) if n == 0 => return Some(sign(String::new(), n < 0, spec)),
        Some(precision) => precision,
        None if spec.zero && !spec.minus => spec.width.saturating_sub(usize::from(signed)),
        None => 0,
    };
    let zeros = "0".repeat(least.saturating_sub(digits.len()));
    Some(sign(format!("{prefix}{zeros}{digits}"), n < 0, spec))
}

/// The character of a code point, or U+FFFD where there is none, as Go writes it.
fn code_point(n: i128) -> char {
    u32::try_from(n)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// A number under a floating-point verb, with Go's zero padding after the sign.
fn floating(verb: char, value: f64, spec: &Spec) -> Option<String> {
    let magnitude = value.abs();
    let text = match verb {
        _ if !value.is_finite() && matches!(verb, 'v' | 'e' | 'E' | 'f' | 'F' | 'g' | 'G') => {
            return Some(float(value));
        }
        'v' | 'g' | 'G' => match spec.precision {
            None => float(magnitude),
            Some(precision) => general(magnitude, precision.max(1), spec.sharp),
        },
        'e' | 'E' => exponent(magnitude, spec.precision.unwrap_or(6)),
        'f' | 'F' => fixed(magnitude, spec.precision.unwrap_or(6)),
        _ => return None,
    };
    let text = if matches!(verb, 'E' | 'G') {
        text.to_uppercase()
    } else {
        text
    };
    let signed = value.is_sign_negative() || spec.plus || spec.space;
    let zeros = if spec.zero && !spec.minus {
        spec.width.saturating_sub(text.len() + usize::from(signed))
    } else {
        0
    };
    Some(sign(
        format!("{}{text}", "0".repeat(zeros)),
        value.is_sign_negative(),
        spec,
    ))
}

/// Every f64 is written exactly with this many digits after the point (2^-1074 has 1074), so
/// a longer precision only adds zeros; Rust's formatting takes at most 65,535.
const EXACT_DECIMALS: usize = 1100;

/// `%f`: the fraction to `precision`.
fn fixed(magnitude: f64, precision: usize) -> String {
    let exact = precision.min(EXACT_DECIMALS);
    let mut text = format!("{magnitude:.exact$}");
    text.push_str(&"0".repeat(precision - exact));
    text
}

/// `%e`: one digit, the fraction to `precision`, and an exponent of at least two digits.
fn exponent(magnitude: f64, precision: usize) -> String {
    let exact = precision.min(EXACT_DECIMALS);
    let text = format!("{magnitude:.exact$e}");
    let (mantissa, power) = text.split_once('e').unwrap_or((&text, "0"));
    let power: i32 = power.parse().unwrap_or(0);
    let sign = if power < 0 { '-' } else { '+' };
    let zeros = "0".repeat(precision - exact);
    format!("{mantissa}{zeros}e{sign}{:02}", power.abs())
}

/// `%.Ng`: N significant digits, in exponent form when the exponent is below -4 or at least
/// N, trailing zeros dropped unless `#` keeps them.
fn general(magnitude: f64, digits: usize, sharp: bool) -> String {
    let rounded = format!("{magnitude:.*e}", (digits - 1).min(EXACT_DECIMALS));
    let power: i64 = rounded
        .split_once('e')
        .and_then(|(_, power)| power.parse().ok())
        .unwrap_or(0);
    let trim = |text: String| {
        if sharp || !text.contains('.') {
            text
        } else {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    };
    if power < -4 || power >= digits as i64 {
        let text = exponent(magnitude, digits - 1);
        let (mantissa, tail) = text.split_once('e').unwrap_or((&text, ""));
        format!("{}e{tail}", trim(mantissa.to_string()))
    } else {
        let decimals = usize::try_from(digits as i64 - 1 - power).unwrap_or(0);
        trim(fixed(magnitude, decimals))
    }
}

/// Strings, booleans and anything else under `%v %s %q %x %X %t`.
fn other(verb: char, arg: &Value, spec: &Spec) -> String {
    let text = arg.as_str().map(|text| match spec.precision {
        Some(precision) => text.chars().take(precision).collect::<String>(),
        None => text.to_string(),
    });
    match (verb, text) {
        ('x' | 'X', Some(text)) => {
            // With the space flag, Go writes each byte apart, each with its `0x` under `#`.
            let hex = if spec.space {
                let bytes: Vec<String> = text
                    .bytes()
                    .map(|b| {
                        if spec.sharp {
                            format!("0x{b:02x}")
                        } else {
                            format!("{b:02x}")
                        }
                    })
                    .collect();
                bytes.join(" ")
            } else {
                let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
                if spec.sharp { format!("0x{hex}") } else { hex }
            };
            if verb == 'X' { hex.to_uppercase() } else { hex }
        }
        ('q', Some(text)) => quote(&text),
        ('s' | 'v', Some(text)) => text,
        ('s' | 'v', None) => print(arg),
        ('t', None) if arg.as_bool().is_some() => print(arg),
        _ => format!("%!{verb}({}={})", go_type(arg), print(arg)),
    }
}

/// A number's sign as Go writes it: `-`, or `+` and space when their flags ask for one.
fn sign(text: String, negative: bool, spec: &Spec) -> String {
    if negative {
        format!("-{text}")
    } else if spec.plus {
        format!("+{text}")
    } else if spec.space {
        format!(" {text}")
    } else {
        text
    }
}

/// Go's name for the type of a value, as `fmt` writes it in its error marks.
fn go_type(value: &Value) -> &'static str {
    if value.is_string() {
        "string"
    } else if value.is_bool() {
        "bool"
    } else if value.is_f64() {
        "float64"
    } else if value.is_number() {
        "int"
    } else if value.is_array() {
        "[]interface {}"
    } else if value.is_map() {
        "map[string]interface {}"
    } else {
        "<nil>"
    }
}

/// Go's `strconv.Quote`.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[Value]) -> Value {
        Value::from(items.to_vec())
    }

    #[test]
    fn lists_and_maps_print_as_go() {
        let value = list(&[Value::from("a"), Value::from(1), list(&[])]);
        assert_eq!(print(&value), "[a 1 []]");
        let mut map = Map::default();
        map.insert(Key::Str("b"), Value::from("2"));
        map.insert(Key::Str("a"), Value::from(true));
        assert_eq!(print(&Value::from(map)), "map[a:true b:2]");
        let mut pair = Map::default();
        pair.insert(Key::Str("key"), Value::from("/k"));
        pair.insert(Key::Str("value"), Value::from("v"));
        assert_eq!(print(&Value::from(pair)), "{/k v}");
    }

    #[test]
    fn floats_print_as_go_percent_v() {
        assert_eq!(float(8080.0), "8080");
        assert_eq!(float(1.5), "1.5");
        assert_eq!(float(1e21), "1e+21");
        assert_eq!(float(0.00001), "1e-05");
        assert_eq!(float(123456789.0), "1.23456789e+08");
        assert_eq!(float(100000.0), "100000");
    }

    /// A width or precision from the store cannot ask for gigabytes or panic: Go's limits,
    /// and its marks past them.
    #[test]
    fn printf_takes_widths_and_precisions_as_far_as_go_does() {
        let huge = Value::from(100_000_000_000_i64);
        assert_eq!(
            printf("%*d|", &[huge.clone(), Value::from(1)]),
            "%!(BADWIDTH)1|"
        );
        assert_eq!(
            printf("%.*f|", &[huge, Value::from(1.5)]),
            "%!(BADPREC)1.500000|"
        );
        assert_eq!(
            printf("%*d", &[Value::from(1_000_000), Value::from(1)]).len(),
            1_000_000
        );
        assert_eq!(
            printf("%123456789d|", &[Value::from(1)]),
            "%!(NOVERB)%!(EXTRA int=1)"
        );
        assert_eq!(
            printf("%.123456789f|", &[Value::from(1.5)]),
            "%!(NOVERB)%!(EXTRA float64=1.5)"
        );
        let long = printf("%.70000f", &[Value::from(1.5)]);
        assert_eq!(long.len(), 70_002);
        assert!(
            long.starts_with("1.50") && long.ends_with("000"),
            "{long:.10}"
        );
        let exp = printf("%.2000e", &[Value::from(1.5)]);
        assert!(
            exp.starts_with("1.50") && exp.ends_with("0e+00"),
            "{exp:.10}"
        );
        assert_eq!(exp.len(), 2006);
        let general = printf("%#.3000g", &[Value::from(0.25)]);
        assert!(
            general.starts_with("0.250") && general.len() == 3002,
            "{general:.10}"
        );
        assert_eq!(printf("%.3000g", &[Value::from(0.25)]), "0.25");
    }

    #[test]
    fn printf_pads_strings_with_zeros_spaces_bytes_and_names_types_as_go() {
        assert_eq!(
            printf("%05s|%-5s|", &[Value::from("42"), Value::from("ab")]),
            "00042|ab   |"
        );
        assert_eq!(
            printf("% x|% #X", &[Value::from("hi"), Value::from("hi")]),
            "68 69|0X68 0X69"
        );
        assert_eq!(
            printf(
                "%T %T %T %T",
                &[
                    Value::from(80),
                    Value::from("a"),
                    Value::from(1.5),
                    Value::from(true)
                ]
            ),
            "int string float64 bool"
        );
    }

    #[test]
    fn printf_follows_go_verbs() {
        let args = [Value::from("web"), Value::from(7), Value::from(2.5)];
        assert_eq!(printf("%s:%d %.2f", &args), "web:7 2.50");
        assert_eq!(
            printf(
                "%-5s|%5s|%05d",
                &args[..2]
                    .iter()
                    .chain([&args[1]])
                    .cloned()
                    .collect::<Vec<_>>()
            ),
            "web  |    7|00007"
        );
        assert_eq!(printf("%q %v%%", &args[..2]), "\"web\" 7%");
        assert_eq!(printf("%d", &[]), "%!d(MISSING)");
        assert_eq!(printf("%x", &[Value::from(255)]), "ff");
        assert_eq!(
            printf("%x|%-4x|", &[Value::from(-255), Value::from(-1)]),
            "-ff|-1  |"
        );
        assert_eq!(
            printf(
                "%#x %#08x %o %#o %O %b %c %U %#U",
                &[
                    Value::from(255),
                    Value::from(255),
                    Value::from(8),
                    Value::from(8),
                    Value::from(8),
                    Value::from(5),
                    Value::from(65),
                    Value::from(65),
                    Value::from(65)
                ]
            ),
            "0xff 0x000000ff 10 010 0o10 101 A U+0041 U+0041 'A'"
        );
        let number = Value::from(3.14258);
        assert_eq!(
            printf(
                "%g %e %E %.3g %08.2f %+.1e",
                &[
                    number.clone(),
                    number.clone(),
                    number.clone(),
                    number.clone(),
                    Value::from(-2.5),
                    number
                ]
            ),
            "3.14258 3.142580e+00 3.142580E+00 3.14 -0002.50 +3.1e+00"
        );
        assert_eq!(
            printf("%.3g|%g", &[Value::from(1234.5678), Value::from(1e6)]),
            "1.23e+03|1e+06"
        );
        assert_eq!(
            printf(
                "%*d|%-*d|%.*f",
                &[
                    Value::from(5),
                    Value::from(3),
                    Value::from(3),
                    Value::from(4),
                    Value::from(1),
                    Value::from(2.25)
                ]
            ),
            "    3|4  |2.2"
        );
        assert_eq!(
            printf("%[2]s %[1]s", &[Value::from("a"), Value::from("b")]),
            "b a"
        );
        assert_eq!(printf("%[3]s", &[Value::from("a")]), "%!s(BADINDEX)");
        assert_eq!(
            printf("%.1q %5.2s|", &[Value::from("abc"), Value::from("xyz")]),
            "\"a\"    xy|"
        );
        let list = Value::from(vec![Value::from("a"), Value::from("b")]);
        assert_eq!(
            printf("%q %s %3d", &[list.clone(), list, Value::from(vec![1, 2])]),
            "[\"a\" \"b\"] [a b] [  1   2]"
        );
        assert_eq!(
            printf("%s", &[Value::from("a"), Value::from(1)]),
            "a%!(EXTRA int=1)"
        );
    }

    #[test]
    fn sprint_spaces_only_between_non_strings() {
        let args = [
            Value::from("a"),
            Value::from(1),
            Value::from(2),
            Value::from("b"),
        ];
        assert_eq!(sprint(&args), "a1 2b");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use tera::Value;

    use super::printf;

    /// A scalar as a template gives one.
    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-zé]{0,3}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ]
    }

    proptest! {
        /// Any format with any arguments, widths and precisions from the store included,
        /// gives text and never panics nor asks for more than Go's limits allow.
        #[test]
        fn printf_never_panics(
            format in "([a-z ]|%[-+# 0]{0,2}(\\[[0-9]\\])?(\\*|[0-9]{0,9})(\\.(\\*|[0-9]{0,9}))?[vdsqxXfFeEgGbocOUtT%]){0,4}",
            args in prop::collection::vec(value(), 0..4),
        ) {
            let written = printf(&format, &args);
            prop_assert!(written.len() <= 4 * 10_001_200 + 200, "{}", written.len());
        }
    }
}
