//! Go's printing and builtins for templates translated from confd by `reconfd convert`, where
//! Tera's own differ from Go's in what they write.
//!
//! - filter `goPrint`: a value as Go's `text/template` prints it (`[a b]` for a list,
//!   `map[k:v]` for a map, `{key value}` for a pair, floats as `%v`, `<no value>` for none);
//! - filter `goItems`: what Go's `range` visits, as a map from index or key to value: a list
//!   by index, a map by sorted key, an integer `n` as `0..n`;
//! - filter `goLen`: Go's `len` (a string's length in bytes);
//! - functions `goPrintf(format, args)`, `goSprint(args)`, `goSprintln(args)`: Go's `printf`,
//!   `print` and `println`;
//! - functions `goAnd(args)`, `goOr(args)`: Go's `and` and `or`, which yield an operand.

use tera::value::Key;
use tera::{Kwargs, Map, State, Tera, TeraResult, Value};

/// Registers the Go helpers on `tera`.
pub fn register(tera: &mut Tera) {
    tera.register_filter("goPrint", |value: Value, _: Kwargs, _: &State| {
        if value.is_none() || value.is_undefined() {
            "<no value>".to_string()
        } else {
            print(&value)
        }
    });
    tera.register_filter("goItems", items);
    tera.register_filter("goLen", length);
    tera.register_function("goPrintf", |kwargs: Kwargs, _: &State| {
        let format = kwargs.must_get::<&str>("format")?;
        let args = kwargs.get::<Value>("args")?.unwrap_or_else(Value::none);
        Ok::<_, tera::Error>(printf(format, args.as_array().unwrap_or_default()))
    });
    tera.register_function("goSprint", |kwargs: Kwargs, _: &State| {
        let args = kwargs.must_get::<Value>("args")?;
        Ok::<_, tera::Error>(sprint(args.as_array().unwrap_or_default()))
    });
    tera.register_function("goSprintln", |kwargs: Kwargs, _: &State| {
        let args = kwargs.must_get::<Value>("args")?;
        let line: Vec<String> = args
            .as_array()
            .unwrap_or_default()
            .iter()
            .map(print)
            .collect();
        Ok::<_, tera::Error>(line.join(" ") + "\n")
    });
    tera.register_function("goAnd", |kwargs: Kwargs, _: &State| {
        let args = kwargs.must_get::<Value>("args")?;
        let args = args.as_array().unwrap_or_default();
        let first_false = args.iter().find(|v| !v.is_truthy());
        Ok::<_, tera::Error>(
            first_false
                .or(args.last())
                .cloned()
                .unwrap_or_else(Value::none),
        )
    });
    tera.register_function("goOr", |kwargs: Kwargs, _: &State| {
        let args = kwargs.must_get::<Value>("args")?;
        let args = args.as_array().unwrap_or_default();
        let first_true = args.iter().find(|v| v.is_truthy());
        Ok::<_, tera::Error>(
            first_true
                .or(args.last())
                .cloned()
                .unwrap_or_else(Value::none),
        )
    });
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

/// Go's `fmt.Sprintf` for the verbs configuration templates use: `%v %s %d %q %x %X %f %t %%`,
/// with the flags `-`, `+`, `0` and space, a width and a precision.
pub fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut next = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut minus = false;
        let mut plus = false;
        let mut zero = false;
        let mut space = false;
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' => space = true,
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            precision = Some(digits.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        let number = arg.as_i128();
        let mut text = match (verb, number) {
            ('d', Some(n)) => sign(n.to_string(), n >= 0, plus, space),
            ('x', Some(n)) => sign(format!("{:x}", n.unsigned_abs()), n >= 0, plus, space)
                .replacen('+', "", usize::from(!plus)),
            ('X', Some(n)) => format!("{}{:X}", if n < 0 { "-" } else { "" }, n.unsigned_abs()),
            ('f' | 'F', _) if arg.is_number() => {
                let value = arg.as_f64().unwrap_or_default();
                let text = format!("{value:.*}", precision.unwrap_or(6));
                sign(text, value >= 0.0, plus, space)
            }
            ('x', None) if arg.is_string() => arg
                .as_str()
                .unwrap_or_default()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect(),
            ('q', _) if arg.is_string() => quote(arg.as_str().unwrap_or_default()),
            ('s' | 'v', _) => {
                let mut text = print(arg);
                if let (Some(p), true) = (precision, arg.is_string()) {
                    text = text.chars().take(p).collect();
                }
                if verb == 'v' && number.is_some() {
                    text = sign(text, number.unwrap_or(0) >= 0, plus, space);
                }
                text
            }
            ('t', _) if arg.as_bool().is_some() => print(arg),
            _ => format!("%!{verb}({}={})", go_type(arg), print(arg)),
        };
        let width: usize = width.parse().unwrap_or(0);
        let length = text.chars().count();
        if length < width {
            let pad = width - length;
            if minus {
                text.push_str(&" ".repeat(pad));
            } else if zero && arg.is_number() && matches!(verb, 'd' | 'f' | 'F' | 'x' | 'X' | 'v') {
                let (sign, digits) = match text.chars().next() {
                    Some(c @ ('-' | '+' | ' ')) => (c.to_string(), text[1..].to_string()),
                    _ => (String::new(), text.clone()),
                };
                text = format!("{sign}{}{digits}", "0".repeat(pad));
            } else {
                text = format!("{}{text}", " ".repeat(pad));
            }
        }
        out.push_str(&text);
    }
    if next < args.len() {
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={}", go_type(a), print(a)))
            .collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

fn sign(text: String, non_negative: bool, plus: bool, space: bool) -> String {
    match (non_negative, plus, space) {
        (true, true, _) => format!("+{text}"),
        (true, false, true) => format!(" {text}"),
        _ => text,
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
