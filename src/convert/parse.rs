//! A parser for the part of Go's `text/template` that confd templates use, into a small
//! syntax tree.
//!
//! The trim markers are applied here, as Go's lexer applies them: `{{- ` removes every space,
//! tab, carriage return and newline before the action from the text, ` -}}` every one after
//! it. The text nodes of the tree are therefore exactly what Go writes, and the Tera emitted
//! from them needs no trim markers of its own.

use std::fmt;

/// A parse failure at a line of the Go template.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the template.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// One node of a template body.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Text written as it is (after trimming).
    Text(String),
    /// `{{/* ... */}}`.
    Comment(String),
    /// `{{pipeline}}`: printed unless it declares or assigns variables.
    Action(Pipe),
    /// `{{if}}` / `{{with}}` with their `else if` / `else with` branches and `else`.
    Branch {
        /// `with` binds the dot to the value in its body.
        with: bool,
        /// Each condition and its body, in order.
        arms: Vec<(Pipe, Vec<Node>)>,
        /// The `else` body.
        otherwise: Option<Vec<Node>>,
    },
    /// `{{range}}`.
    Range {
        /// The value iterated, with its `$i, $v :=` declaration.
        pipe: Pipe,
        /// The body.
        body: Vec<Node>,
        /// The `else` body, written when there is nothing to iterate.
        otherwise: Option<Vec<Node>>,
    },
    /// `{{template "name" pipeline}}`.
    Template {
        /// The template called.
        name: String,
        /// The dot given to it.
        pipe: Option<Pipe>,
        /// The line of the action.
        line: usize,
    },
    /// `{{break}}`.
    Break,
    /// `{{continue}}`.
    Continue,
}

/// A pipeline: optional variable declaration, then commands joined by `|`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipe {
    /// Variables declared (`:=`) or assigned (`=`), without their `$`.
    pub vars: Vec<String>,
    /// True for `=`, an assignment to variables declared before.
    pub assign: bool,
    /// The commands; the result of each is the last argument of the next.
    pub commands: Vec<Vec<Arg>>,
    /// 1-based line where the pipeline starts.
    pub line: usize,
    /// The Go source of the action, for messages.
    pub source: String,
}

/// An operand of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// `.`, `.A.B`: fields of the dot (empty for the dot itself).
    Dot(Vec<String>),
    /// `$x.A.B`: a variable (`""` for `$`) and its fields.
    Var(String, Vec<String>),
    /// A function name.
    Ident(String),
    /// A string constant, unquoted.
    Str(String),
    /// A number as written.
    Number(String),
    /// `true` or `false`.
    Bool(bool),
    /// `nil`.
    Nil,
    /// `(pipeline).A.B`.
    Paren(Box<Pipe>, Vec<String>),
}

/// A parsed template file: its body and its `define`d (and `block`) templates.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The main body.
    pub body: Vec<Node>,
    /// Named templates, in order of definition.
    pub defines: Vec<(String, Vec<Node>)>,
}

/// Parses a Go template.
pub fn parse(source: &str) -> Result<Parsed, ParseError> {
    let items = lex(source)?;
    let mut parser = Parser {
        items,
        position: 0,
        defines: Vec::new(),
    };
    let (body, end) = parser.list()?;
    if let Some((keyword, line)) = end {
        return Err(ParseError {
            line,
            message: format!("unexpected {{{{{keyword}}}}}"),
        });
    }
    Ok(Parsed {
        body,
        defines: parser.defines,
    })
}

/// What the lexer produces: text, comments and the inside of actions.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Text(String),
    Comment(String),
    Action {
        tokens: Vec<Token>,
        line: usize,
        source: String,
    },
}

/// A token inside an action.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Field(String),
    Var(String),
    Str(String),
    Number(String),
    Char(String),
    Open,
    Close,
    Bar,
    Declare,
    Assign,
    Comma,
    Dot,
}

/// Go's `isSpace` for trimming: space, tab, carriage return, newline.
fn is_trim_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn lex(source: &str) -> Result<Vec<Item>, ParseError> {
    let mut items = Vec::new();
    let mut rest = source;
    let mut line = 1;
    let mut trim_next = false;
    loop {
        let Some(start) = rest.find("{{") else {
            push_text(&mut items, rest, trim_next, false);
            return Ok(items);
        };
        let after = &rest[start + 2..];
        let trim_left = after.starts_with('-') && after[1..].starts_with(is_trim_space);
        push_text(&mut items, &rest[..start], trim_next, trim_left);
        line += rest[..start].matches('\n').count();
        let mut inner_start = start + 2;
        if trim_left {
            inner_start += 2;
        }
        let inner = &rest[inner_start..];
        let (body_len, close_len, trim_right) = find_close(inner).ok_or_else(|| ParseError {
            line,
            message: "unclosed action".to_string(),
        })?;
        let body = &inner[..body_len];
        let trimmed = body.trim_start_matches(is_trim_space);
        if trimmed.starts_with("/*") {
            let comment = trimmed.trim_end_matches(is_trim_space);
            let Some(text) = comment
                .strip_prefix("/*")
                .and_then(|c| c.strip_suffix("*/"))
            else {
                return Err(ParseError {
                    line,
                    message: "comment ends before the closing delimiter".to_string(),
                });
            };
            items.push(Item::Comment(text.to_string()));
        } else {
            let tokens = tokenize(body, line)?;
            items.push(Item::Action {
                tokens,
                line,
                source: rest[start..inner_start + body_len + close_len].to_string(),
            });
        }
        line += body.matches('\n').count();
        trim_next = trim_right;
        rest = &inner[body_len + close_len..];
    }
}

/// Where an action's body ends: its length, the closing delimiter's (`}}` or ` -}}`), and
/// whether that delimiter trims. Strings and comments are skipped, as `}}` may occur in them.
fn find_close(inner: &str) -> Option<(usize, usize, bool)> {
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'`' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    if bytes[i] == b'\\' && quote != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'/' if inner[i..].starts_with("/*") => {
                i = i + 2 + inner[i + 2..].find("*/")? + 2;
            }
            b'}' if inner[i..].starts_with("}}") => {
                let trims = i >= 2 && bytes[i - 1] == b'-' && is_trim_space(bytes[i - 2] as char);
                return Some(if trims {
                    (i - 2, 4, true)
                } else {
                    (i, 2, false)
                });
            }
            _ => i += 1,
        }
    }
    None
}

fn push_text(items: &mut Vec<Item>, text: &str, trim_start: bool, trim_end: bool) {
    let mut text = text;
    if trim_start {
        text = text.trim_start_matches(is_trim_space);
    }
    if trim_end {
        text = text.trim_end_matches(is_trim_space);
    }
    if !text.is_empty() {
        items.push(Item::Text(text.to_string()));
    }
}

fn tokenize(body: &str, line: usize) -> Result<Vec<Token>, ParseError> {
    let error = |message: String| ParseError { line, message };
    let mut tokens = Vec::new();
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    let word_char = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            '|' => {
                tokens.push(Token::Bar);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::Declare);
                i += 2;
            }
            '=' => {
                tokens.push(Token::Assign);
                i += 1;
            }
            '"' => {
                let mut j = i + 1;
                let mut raw = String::new();
                while j < chars.len() && chars[j] != '"' {
                    if chars[j] == '\\' {
                        raw.push(chars[j]);
                        j += 1;
                    }
                    if let Some(&c) = chars.get(j) {
                        raw.push(c);
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(error("unterminated quoted string".to_string()));
                }
                tokens.push(Token::Str(unquote(&raw).map_err(error)?));
                i = j + 1;
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| error("unterminated raw quoted string".to_string()))?;
                tokens.push(Token::Str(chars[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
            }
            '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '\'')
                    .ok_or_else(|| error("unterminated character constant".to_string()))?;
                tokens.push(Token::Char(chars[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
            }
            '$' | '.' => {
                let mut j = i + 1;
                while j < chars.len() && word_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                if c == '.' && name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    return Err(error(format!("unexpected number .{name}")));
                }
                tokens.push(match (c, name.is_empty()) {
                    ('$', _) => Token::Var(name),
                    (_, true) => Token::Dot,
                    _ => Token::Field(name),
                });
                i = j;
            }
            c if c.is_ascii_digit() || ((c == '-' || c == '+') && i + 1 < chars.len()) => {
                let mut j = i + 1;
                // A sign inside a number only follows an exponent: `e` in decimal, `p` in hex.
                let hex = matches!(chars.get(i..i + 2), Some(['0', 'x' | 'X']));
                let exponent = |c: char| matches!((hex, c), (false, 'e' | 'E') | (true, 'p' | 'P'));
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric()
                        || matches!(chars[j], '.' | '_')
                        || (matches!(chars[j], '-' | '+') && exponent(chars[j - 1])))
                {
                    j += 1;
                }
                let number: String = chars[i..j].iter().collect();
                if number.len() == 1 && !c.is_ascii_digit() {
                    return Err(error(format!("unexpected `{c}`")));
                }
                tokens.push(Token::Number(number));
                i = j;
            }
            c if word_char(c) => {
                let mut j = i;
                while j < chars.len() && word_char(chars[j]) {
                    j += 1;
                }
                tokens.push(Token::Word(chars[i..j].iter().collect()));
                i = j;
            }
            _ => return Err(error(format!("unexpected `{c}` in action"))),
        }
    }
    Ok(tokens)
}

/// The value of a Go interpreted string literal's inside.
fn unquote(raw: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('a') => out.push('\u{7}'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(c @ ('\\' | '"' | '\'')) => out.push(c),
            Some(kind @ ('x' | 'u' | 'U')) => {
                let digits = match kind {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = chars.by_ref().take(digits).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad escape \\{kind}{hex}"))?;
                out.push(code);
            }
            other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

struct Parser {
    items: Vec<Item>,
    position: usize,
    defines: Vec<(String, Vec<Node>)>,
}

/// The keyword that ended a list (`end`, `else`), its line and, for `else if`/`else with`,
/// the rest of the action.
type End = Option<(String, usize)>;

impl Parser {
    /// Parses nodes until `{{end}}` or `{{else ...}}` (returned, not consumed beyond its
    /// tokens) or the end of input.
    fn list(&mut self) -> Result<(Vec<Node>, End), ParseError> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.get(self.position).cloned() {
            self.position += 1;
            match item {
                Item::Text(text) => nodes.push(Node::Text(text)),
                Item::Comment(text) => nodes.push(Node::Comment(text)),
                Item::Action {
                    tokens,
                    line,
                    source,
                } => {
                    let keyword = match tokens.first() {
                        Some(Token::Word(word)) => word.as_str(),
                        _ => "",
                    };
                    match keyword {
                        "end" => return Ok((nodes, Some(("end".to_string(), line)))),
                        "else" => {
                            // `else if ...` / `else with ...` continue the chain: the parent
                            // reads the rest of the tokens.
                            self.position -= 1;
                            return Ok((nodes, Some(("else".to_string(), line))));
                        }
                        "if" | "with" => nodes.push(self.branch(
                            keyword == "with",
                            &tokens[1..],
                            line,
                            &source,
                        )?),
                        "range" => {
                            let pipe = pipeline(&tokens[1..], line, &source, true)?;
                            let (body, otherwise) = self.body_and_else(line)?;
                            nodes.push(Node::Range {
                                pipe,
                                body,
                                otherwise,
                            });
                        }
                        "define" | "block" => {
                            let name = match tokens.get(1) {
                                Some(Token::Str(name)) => name.clone(),
                                _ => {
                                    return Err(ParseError {
                                        line,
                                        message: format!("{keyword} needs a quoted name"),
                                    });
                                }
                            };
                            let (body, end) = self.list()?;
                            if !matches!(&end, Some((k, _)) if k == "end") {
                                return Err(ParseError {
                                    line,
                                    message: format!("{keyword} \"{name}\" has no {{{{end}}}}"),
                                });
                            }
                            self.defines.push((name.clone(), body));
                            if keyword == "block" {
                                let pipe = if tokens.len() > 2 {
                                    Some(pipeline(&tokens[2..], line, &source, false)?)
                                } else {
                                    None
                                };
                                nodes.push(Node::Template { name, pipe, line });
                            }
                        }
                        "template" => {
                            let name = match tokens.get(1) {
                                Some(Token::Str(name)) => name.clone(),
                                _ => {
                                    return Err(ParseError {
                                        line,
                                        message: "template needs a quoted name".to_string(),
                                    });
                                }
                            };
                            let pipe = if tokens.len() > 2 {
                                Some(pipeline(&tokens[2..], line, &source, false)?)
                            } else {
                                None
                            };
                            nodes.push(Node::Template { name, pipe, line });
                        }
                        "break" => nodes.push(Node::Break),
                        "continue" => nodes.push(Node::Continue),
                        _ => nodes.push(Node::Action(pipeline(&tokens, line, &source, false)?)),
                    }
                }
            }
        }
        Ok((nodes, None))
    }

    /// The body of a control structure and its `else` body, up to its `{{end}}`.
    fn body_and_else(&mut self, line: usize) -> Result<(Vec<Node>, Option<Vec<Node>>), ParseError> {
        let (body, end) = self.list()?;
        match end {
            Some((keyword, _)) if keyword == "end" => Ok((body, None)),
            Some((_, else_line)) => {
                // A plain `{{else}}`: take it and read to `{{end}}`.
                let Some(Item::Action { tokens, .. }) = self.items.get(self.position).cloned()
                else {
                    return Err(unreachable_else(else_line));
                };
                self.position += 1;
                if tokens.len() > 1 {
                    return Err(ParseError {
                        line: else_line,
                        message: "range's else takes no condition".to_string(),
                    });
                }
                let (otherwise, end) = self.list()?;
                match end {
                    Some((keyword, _)) if keyword == "end" => Ok((body, Some(otherwise))),
                    _ => Err(ParseError {
                        line,
                        message: "missing {{end}}".to_string(),
                    }),
                }
            }
            None => Err(ParseError {
                line,
                message: "missing {{end}}".to_string(),
            }),
        }
    }

    fn branch(
        &mut self,
        with: bool,
        tokens: &[Token],
        line: usize,
        source: &str,
    ) -> Result<Node, ParseError> {
        let mut arms = vec![(pipeline(tokens, line, source, with)?, Vec::new())];
        loop {
            let (body, end) = self.list()?;
            if let Some(last) = arms.last_mut() {
                last.1 = body;
            }
            match end {
                Some((keyword, _)) if keyword == "end" => {
                    return Ok(Node::Branch {
                        with,
                        arms,
                        otherwise: None,
                    });
                }
                Some((_, else_line)) => {
                    let Some(Item::Action { tokens, source, .. }) =
                        self.items.get(self.position).cloned()
                    else {
                        return Err(unreachable_else(else_line));
                    };
                    self.position += 1;
                    match tokens.get(1) {
                        None => {
                            let (otherwise, end) = self.list()?;
                            if !matches!(&end, Some((k, _)) if k == "end") {
                                return Err(ParseError {
                                    line,
                                    message: "missing {{end}}".to_string(),
                                });
                            }
                            return Ok(Node::Branch {
                                with,
                                arms,
                                otherwise: Some(otherwise),
                            });
                        }
                        Some(Token::Word(word))
                            if (word == "if" && !with) || (word == "with" && with) =>
                        {
                            arms.push((
                                pipeline(&tokens[2..], else_line, &source, with)?,
                                Vec::new(),
                            ));
                        }
                        Some(Token::Word(word)) if word == "if" || word == "with" => {
                            // `else if` inside `with` (or the reverse) nests a branch.
                            let inner =
                                self.branch(word == "with", &tokens[2..], else_line, &source)?;
                            return Ok(Node::Branch {
                                with,
                                arms,
                                otherwise: Some(vec![inner]),
                            });
                        }
                        _ => {
                            return Err(ParseError {
                                line: else_line,
                                message: "unexpected tokens after else".to_string(),
                            });
                        }
                    }
                }
                None => {
                    return Err(ParseError {
                        line,
                        message: "missing {{end}}".to_string(),
                    });
                }
            }
        }
    }
}

/// `list` only stops at an `else` action, which is where the parser stands.
fn unreachable_else(line: usize) -> ParseError {
    ParseError {
        line,
        message: "else without its action".to_string(),
    }
}

/// Parses a pipeline's tokens; `declare` allows `$i, $v :=` (range, with and if do too).
fn pipeline(
    tokens: &[Token],
    line: usize,
    source: &str,
    declare: bool,
) -> Result<Pipe, ParseError> {
    let error = |message: &str| ParseError {
        line,
        message: message.to_string(),
    };
    let mut vars = Vec::new();
    let mut assign = false;
    let mut rest = tokens;
    // Variables: `$x :=`, `$x =`, `$i, $v :=`.
    if let Some(Token::Var(_)) = rest.first() {
        let mut j = 0;
        let mut names = Vec::new();
        while let Some(Token::Var(name)) = rest.get(j) {
            names.push(name.clone());
            match rest.get(j + 1) {
                Some(Token::Comma) if declare || names.len() < 2 => j += 2,
                Some(Token::Declare) | Some(Token::Assign) => {
                    assign = rest.get(j + 1) == Some(&Token::Assign);
                    vars = names.clone();
                    rest = &rest[j + 2..];
                    break;
                }
                _ => break,
            }
        }
    }
    let mut commands = Vec::new();
    let mut command = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        match &rest[i] {
            Token::Bar => {
                if command.is_empty() {
                    return Err(error("missing command before |"));
                }
                commands.push(std::mem::take(&mut command));
                i += 1;
            }
            _ => {
                let (arg, used) = operand(&rest[i..], line, source)?;
                command.push(arg);
                i += used;
            }
        }
    }
    if command.is_empty() {
        return Err(error("missing value"));
    }
    commands.push(command);
    Ok(Pipe {
        vars,
        assign,
        commands,
        line,
        source: source.to_string(),
    })
}

/// One operand and how many tokens it took.
fn operand(tokens: &[Token], line: usize, source: &str) -> Result<(Arg, usize), ParseError> {
    let fields = |from: usize| -> (Vec<String>, usize) {
        let mut names = Vec::new();
        let mut j = from;
        while let Some(Token::Field(name)) = tokens.get(j) {
            names.push(name.clone());
            j += 1;
        }
        (names, j)
    };
    match &tokens[0] {
        Token::Dot => {
            let (names, used) = fields(1);
            Ok((Arg::Dot(names), used))
        }
        Token::Field(_) => {
            let (names, used) = fields(0);
            Ok((Arg::Dot(names), used))
        }
        Token::Var(name) => {
            let (names, used) = fields(1);
            Ok((Arg::Var(name.clone(), names), used))
        }
        Token::Str(text) => Ok((Arg::Str(text.clone()), 1)),
        Token::Char(text) => {
            let value = unquote(text)
                .ok()
                .and_then(|c| c.chars().next())
                .map_or(0, |c| c as u32);
            Ok((Arg::Number(value.to_string()), 1))
        }
        Token::Number(number) => Ok((Arg::Number(number.clone()), 1)),
        Token::Word(word) => Ok((
            match word.as_str() {
                "true" => Arg::Bool(true),
                "false" => Arg::Bool(false),
                "nil" => Arg::Nil,
                _ => Arg::Ident(word.clone()),
            },
            1,
        )),
        Token::Open => {
            let mut depth = 0;
            let mut close = None;
            for (j, token) in tokens.iter().enumerate() {
                match token {
                    Token::Open => depth += 1,
                    Token::Close => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let close = close.ok_or_else(|| ParseError {
                line,
                message: "unclosed left paren".to_string(),
            })?;
            let inner = pipeline(&tokens[1..close], line, source, false)?;
            let (names, used) = fields(close + 1);
            Ok((Arg::Paren(Box::new(inner), names), used))
        }
        other => Err(ParseError {
            line,
            message: format!("unexpected {other:?} in operand"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(source: &str) -> Vec<Node> {
        parse(source).unwrap().body
    }

    #[test]
    fn trim_markers_remove_all_whitespace_on_their_side() {
        assert_eq!(
            body("a \n\t{{- 1 -}} \n b"),
            vec![
                Node::Text("a".into()),
                Node::Action(Pipe {
                    vars: vec![],
                    assign: false,
                    commands: vec![vec![Arg::Number("1".into())]],
                    line: 2,
                    source: "{{- 1 -}}".into(),
                }),
                Node::Text("b".into()),
            ]
        );
    }

    #[test]
    fn a_dash_without_space_is_a_negative_number() {
        let nodes = body("x{{-3}}");
        assert_eq!(nodes[0], Node::Text("x".into()));
        let Node::Action(pipe) = &nodes[1] else {
            panic!("{nodes:?}")
        };
        assert_eq!(pipe.commands[0][0], Arg::Number("-3".into()));
    }

    #[test]
    fn comments_keep_their_text_and_trim() {
        assert_eq!(
            body("a {{- /* note */ -}} b"),
            vec![
                Node::Text("a".into()),
                Node::Comment(" note ".into()),
                Node::Text("b".into())
            ]
        );
    }

    #[test]
    fn range_with_index_and_else() {
        let nodes = body("{{range $i, $v := ls \"/a\"}}{{$i}}{{else}}none{{end}}");
        let Node::Range {
            pipe, otherwise, ..
        } = &nodes[0]
        else {
            panic!("{nodes:?}")
        };
        assert_eq!(pipe.vars, vec!["i".to_string(), "v".to_string()]);
        assert_eq!(otherwise, &Some(vec![Node::Text("none".into())]));
    }

    #[test]
    fn else_if_chains_become_arms() {
        let nodes = body("{{if .A}}a{{else if .B}}b{{else}}c{{end}}");
        let Node::Branch {
            arms, otherwise, ..
        } = &nodes[0]
        else {
            panic!("{nodes:?}")
        };
        assert_eq!(arms.len(), 2);
        assert!(otherwise.is_some());
    }

    #[test]
    fn pipelines_parens_and_strings() {
        let nodes = body(r#"{{index (split (getv "/a\t") ":") 0 | toUpper}}"#);
        let Node::Action(pipe) = &nodes[0] else {
            panic!("{nodes:?}")
        };
        assert_eq!(pipe.commands.len(), 2);
        let Arg::Paren(inner, _) = &pipe.commands[0][1] else {
            panic!("{pipe:?}")
        };
        let Arg::Paren(getv, _) = &inner.commands[0][1] else {
            panic!("{inner:?}")
        };
        assert_eq!(getv.commands[0][1], Arg::Str("/a\t".into()));
    }

    #[test]
    fn defines_are_collected_and_lines_counted() {
        let parsed = parse("{{define \"x\"}}in{{end}}\n\n{{template \"x\" .}}").unwrap();
        assert_eq!(parsed.defines[0].0, "x");
        assert!(matches!(parsed.body[1], Node::Template { line: 3, .. }));
    }

    #[test]
    fn unclosed_blocks_are_errors_with_their_line() {
        assert_eq!(parse("\n{{if .A}}x").unwrap_err().line, 2);
        assert!(parse("{{end}}").is_err());
    }
}
