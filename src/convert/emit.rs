//! Writes the Tera translation of a parsed Go template.
//!
//! Text is written as Go writes it (trimming was done by the parser), with Tera's own
//! delimiters escaped, and every action becomes a Tera tag without trim markers, so the
//! whitespace is Go's exactly. Values whose printed form differs between Go and Tera (lists,
//! maps, `nil`) are printed through the `goPrint` filter; when the type of a value is known to
//! be a string, number or boolean it is printed plainly.

use std::collections::{HashMap, HashSet};

use super::parse::{Arg, Node, Parsed, Pipe};

/// A construct left untranslated: its line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslated {
    /// 1-based line in the Go template.
    pub line: usize,
    /// The Go source of the action.
    pub source: String,
    /// Why it was not translated.
    pub reason: String,
}

/// What the emitter knows of a value's type.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Str,
    Int,
    Bool,
    /// A `{key, value}` pair from `get`/`gets`.
    Pair,
    /// An SRV record from `lookupSRV`.
    Srv,
    List(Box<Ty>),
    Map,
    /// A value parsed by `json` or `jsonArray`, or a part of one: its fields are the JSON's
    /// names, looked up as written (an AWS tag's `.Key` stays `Key`).
    Json,
    Unknown,
}

impl Ty {
    fn prints_plainly(&self) -> bool {
        matches!(self, Ty::Str | Ty::Int | Ty::Bool)
    }
}

/// A translated expression.
#[derive(Debug, Clone)]
struct Expr {
    code: String,
    ty: Ty,
    /// True when the code is one term (a name, a literal, a call, a parenthesised
    /// expression) that a filter or an attribute may follow as it is.
    atom: bool,
}

impl Expr {
    fn atom(code: String, ty: Ty) -> Expr {
        Expr {
            code,
            ty,
            atom: true,
        }
    }

    fn compound(code: String, ty: Ty) -> Expr {
        Expr {
            code,
            ty,
            atom: false,
        }
    }

    /// The code as one term.
    fn term(&self) -> String {
        if self.atom {
            self.code.clone()
        } else {
            format!("({})", self.code)
        }
    }
}

/// A failure to translate one action.
type Fail = String;

/// A Go variable in scope: its Tera name, type and the loop depth where it was declared.
#[derive(Debug, Clone)]
struct Variable {
    name: String,
    ty: Ty,
    depth: usize,
}

/// The emitter's state while walking the tree.
struct Emitter<'a> {
    out: String,
    problems: Vec<Untranslated>,
    scopes: Vec<HashMap<String, Variable>>,
    /// The dot: its Tera expression and type (`None` at the top, where confd's dot is nil).
    dots: Vec<Option<(String, Ty)>>,
    /// Tera names taken anywhere, so generated names never shadow another.
    taken: HashSet<String>,
    loop_depth: usize,
    defines: &'a [(String, Vec<Node>)],
    /// Templates being expanded, to refuse recursion.
    expanding: Vec<String>,
}

/// Names Tera reserves, which a Go variable cannot keep.
const RESERVED: &[&str] = &[
    "loop",
    "true",
    "false",
    "none",
    "and",
    "or",
    "not",
    "in",
    "is",
    "if",
    "else",
    "for",
    "set",
    "True",
    "False",
    "None",
    "super",
    "self",
    "break",
    "continue",
    "__tera_context",
];

/// Translates a parsed template into Tera, with the constructs left untranslated.
pub fn emit(parsed: &Parsed) -> (String, Vec<Untranslated>) {
    let mut emitter = Emitter {
        out: String::new(),
        problems: Vec::new(),
        scopes: vec![HashMap::new()],
        dots: vec![None],
        taken: HashSet::new(),
        loop_depth: 0,
        defines: &parsed.defines,
        expanding: Vec::new(),
    };
    emitter.nodes(&parsed.body);
    (emitter.out, emitter.problems)
}

impl Emitter<'_> {
    fn nodes(&mut self, nodes: &[Node]) {
        for node in nodes {
            self.node(node);
        }
    }

    fn node(&mut self, node: &Node) {
        match node {
            Node::Text(text) => self.text(text),
            Node::Comment(text) => {
                if !text.contains("#}") {
                    self.out.push_str(&format!("{{#{text}#}}"));
                }
            }
            Node::Action(pipe) => self.action(pipe),
            Node::Branch {
                with,
                arms,
                otherwise,
            } => self.branch(*with, arms, otherwise.as_deref()),
            Node::Range {
                pipe,
                body,
                otherwise,
            } => self.range(pipe, body, otherwise.as_deref()),
            Node::Template { name, pipe, line } => self.template(name, pipe.as_ref(), *line),
            Node::Break => self.out.push_str("{% break %}"),
            Node::Continue => self.out.push_str("{% continue %}"),
        }
    }

    /// Text as it is, with Tera's opening delimiters written as Tera strings.
    fn text(&mut self, text: &str) {
        let mut rest = text;
        while let Some(at) = ["{{", "{%", "{#"].iter().filter_map(|d| rest.find(d)).min() {
            self.out.push_str(&rest[..at]);
            self.out
                .push_str(&format!("{{{{ \"{}\" }}}}", &rest[at..at + 2]));
            rest = &rest[at + 2..];
        }
        // Every tag written next starts with `{`: a text ending in `{` (Go's `{` followed by
        // `{{-`, whose trim ate the newline between them) would make `{{%` or `{{{`, which
        // Tera reads as the opening of an expression.
        match rest.strip_suffix('{') {
            Some(before) => {
                self.out.push_str(before);
                self.out.push_str("{{ \"{\" }}");
            }
            None => self.out.push_str(rest),
        }
    }

    fn mark(&mut self, pipe_line: usize, source: &str, reason: String) {
        let shown = source.replace("#}", "# }");
        self.out.push_str(&format!(
            "{{# reconfd convert: not translated: {shown}: {} #}}",
            reason.replace("#}", "# }")
        ));
        self.problems.push(Untranslated {
            line: pipe_line,
            source: source.to_string(),
            reason,
        });
    }

    fn action(&mut self, pipe: &Pipe) {
        let expr = match self.pipe(pipe) {
            Ok(expr) => expr,
            Err(reason) => {
                self.mark(pipe.line, &pipe.source, reason);
                // The variable is declared in Go all the same: the actions using it are
                // translated, so a hand translation of this one line completes them, rather
                // than each being marked in turn as using an undeclared variable.
                if let [go_name] = pipe.vars.as_slice()
                    && !pipe.assign
                {
                    self.declare(go_name, Ty::Unknown);
                }
                return;
            }
        };
        if pipe.vars.is_empty() {
            let code = if expr.ty.prints_plainly() {
                expr.code
            } else {
                format!("{} | goPrint", expr.term())
            };
            self.out.push_str(&format!("{{{{ {code} }}}}"));
            return;
        }
        if let Err(reason) = self.bind(pipe, expr) {
            self.mark(pipe.line, &pipe.source, reason);
        }
    }

    /// `$x := value` or `$x = value`.
    fn bind(&mut self, pipe: &Pipe, expr: Expr) -> Result<(), Fail> {
        if pipe.vars.len() != 1 {
            return Err("only range declares two variables".to_string());
        }
        let go_name = &pipe.vars[0];
        if pipe.assign {
            let variable = self
                .lookup(go_name)
                .ok_or_else(|| format!("${go_name} is assigned before it is declared"))?;
            let tag = if variable.depth == self.loop_depth {
                "set"
            } else if variable.depth == 0 {
                "set_global"
            } else {
                return Err(format!(
                    "${go_name} is assigned inside a range nested in the one declaring it"
                ));
            };
            self.out
                .push_str(&format!("{{% {tag} {} = {} %}}", variable.name, expr.code));
            return Ok(());
        }
        let name = self.declare(go_name, expr.ty);
        self.out
            .push_str(&format!("{{% set {name} = {} %}}", expr.code));
        Ok(())
    }

    fn lookup(&self, go_name: &str) -> Option<Variable> {
        self.scopes
            .iter()
            .rev()
            .find_map(|scope| scope.get(go_name))
            .cloned()
    }

    /// Declares a Go variable in the innermost scope and returns its Tera name: the Go name,
    /// unless Tera reserves it or another variable in scope has it.
    fn declare(&mut self, go_name: &str, ty: Ty) -> String {
        let name = if let Some(existing) = self
            .scopes
            .last()
            .and_then(|scope| scope.get(go_name))
            .filter(|v| v.depth == self.loop_depth)
        {
            existing.name.clone()
        } else {
            // Go takes any letter in a name, Tera ASCII ones only: `$é` becomes `_`.
            let ascii: String = go_name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let base = if ascii.is_empty() || RESERVED.contains(&ascii.as_str()) {
                format!("{ascii}_")
            } else {
                ascii
            };
            self.fresh(&base)
        };
        if let Some(scope) = self.scopes.last_mut() {
            scope.insert(
                go_name.to_string(),
                Variable {
                    name: name.clone(),
                    ty,
                    depth: self.loop_depth,
                },
            );
        }
        name
    }

    /// A Tera name starting with `base` not used before in this template.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 1;
        while self.taken.contains(&name) {
            n += 1;
            name = format!("{base}{n}");
        }
        self.taken.insert(name.clone());
        name
    }

    fn branch(&mut self, with: bool, arms: &[(Pipe, Vec<Node>)], otherwise: Option<&[Node]>) {
        if with {
            return self.with(arms, otherwise);
        }
        for (i, (pipe, body)) in arms.iter().enumerate() {
            self.scopes.push(HashMap::new());
            let condition = self.condition(pipe);
            match condition {
                Ok(code) => {
                    let tag = if i == 0 { "if" } else { "elif" };
                    self.out.push_str(&format!("{{% {tag} {code} %}}"));
                }
                Err(reason) => {
                    self.mark(pipe.line, &pipe.source, reason);
                    let tag = if i == 0 { "if" } else { "elif" };
                    self.out.push_str(&format!("{{% {tag} false %}}"));
                }
            }
            self.nodes(body);
            self.scopes.pop();
        }
        if let Some(otherwise) = otherwise {
            self.out.push_str("{% else %}");
            self.scopes.push(HashMap::new());
            self.nodes(otherwise);
            self.scopes.pop();
        }
        self.out.push_str("{% endif %}");
    }

    /// An `if`'s condition; a declaration in it (`if $x := ...`) is set before the `if`.
    fn condition(&mut self, pipe: &Pipe) -> Result<String, Fail> {
        let expr = self.pipe(pipe)?;
        if pipe.vars.is_empty() {
            return Ok(expr.code);
        }
        if pipe.vars.len() != 1 || pipe.assign {
            return Err("a condition may declare one variable".to_string());
        }
        let name = self.declare(&pipe.vars[0], expr.ty);
        self.out
            .push_str(&format!("{{% set {name} = {} %}}", expr.code));
        Ok(name)
    }

    /// `with`: the value is set to a name, which is the dot of the body when it is true.
    fn with(&mut self, arms: &[(Pipe, Vec<Node>)], otherwise: Option<&[Node]>) {
        let mut closes = 0;
        for (i, (pipe, body)) in arms.iter().enumerate() {
            if i > 0 {
                self.out.push_str("{% else %}");
            }
            self.scopes.push(HashMap::new());
            match self.pipe(pipe) {
                Ok(expr) => {
                    let name = match pipe.vars.first() {
                        Some(go_name) if pipe.vars.len() == 1 && !pipe.assign => {
                            self.declare(go_name, expr.ty.clone())
                        }
                        _ => self.fresh("it"),
                    };
                    self.out.push_str(&format!(
                        "{{% set {name} = {} %}}{{% if {name} %}}",
                        expr.code
                    ));
                    self.dots.push(Some((name, expr.ty)));
                }
                Err(reason) => {
                    self.mark(pipe.line, &pipe.source, reason);
                    self.out.push_str("{% if false %}");
                    self.dots.push(None);
                }
            }
            closes += 1;
            self.nodes(body);
            self.dots.pop();
            self.scopes.pop();
        }
        if let Some(otherwise) = otherwise {
            self.out.push_str("{% else %}");
            self.scopes.push(HashMap::new());
            self.nodes(otherwise);
            self.scopes.pop();
        }
        for _ in 0..closes {
            self.out.push_str("{% endif %}");
        }
    }

    fn range(&mut self, pipe: &Pipe, body: &[Node], otherwise: Option<&[Node]>) {
        let expr = match self.pipe(pipe) {
            Ok(expr) => expr,
            Err(reason) => return self.mark(pipe.line, &pipe.source, reason),
        };
        if pipe.assign {
            return self.mark(
                pipe.line,
                &pipe.source,
                "range assigns to variables declared before it".to_string(),
            );
        }
        self.scopes.push(HashMap::new());
        self.loop_depth += 1;
        let (index_go, value_go) = match pipe.vars.as_slice() {
            [] => (None, None),
            [value] => (None, Some(value.clone())),
            [index, value] => (Some(index.clone()), Some(value.clone())),
            _ => {
                self.loop_depth -= 1;
                self.scopes.pop();
                return self.mark(pipe.line, &pipe.source, "too many range variables".into());
            }
        };
        let head = match &expr.ty {
            Ty::List(element) => {
                let element = (**element).clone();
                let value = match &value_go {
                    Some(go_name) => self.declare(go_name, element.clone()),
                    None => {
                        let base = match element {
                            Ty::Pair => "kv",
                            Ty::Srv => "srv",
                            Ty::Str => "value",
                            _ => "item",
                        };
                        self.fresh(base)
                    }
                };
                let mut head = format!("{{% for {value} in {} %}}", expr.code);
                if let Some(index_go) = &index_go {
                    let index = self.declare(index_go, Ty::Int);
                    head.push_str(&format!("{{% set {index} = loop.index0 %}}"));
                }
                self.dots.push(Some((value, element)));
                head
            }
            _ => {
                // A map (sorted by key, as Go ranges over maps), an integer or a list whose
                // kind is only known when rendering: `goItems` gives index or key pairs.
                let element = match expr.ty {
                    Ty::Json => Ty::Json,
                    _ => Ty::Unknown,
                };
                let key = match &index_go {
                    Some(go_name) => self.declare(go_name, Ty::Unknown),
                    None => self.fresh("key"),
                };
                let value = match &value_go {
                    Some(go_name) => self.declare(go_name, element.clone()),
                    None => self.fresh("value"),
                };
                let head = format!("{{% for {key}, {value} in {} | goItems %}}", expr.term());
                self.dots.push(Some((value, element)));
                head
            }
        };
        self.out.push_str(&head);
        self.nodes(body);
        self.dots.pop();
        self.loop_depth -= 1;
        self.scopes.pop();
        if let Some(otherwise) = otherwise {
            self.out.push_str("{% else %}");
            self.scopes.push(HashMap::new());
            self.nodes(otherwise);
            self.scopes.pop();
        }
        self.out.push_str("{% endfor %}");
    }

    /// `{{template "name" pipeline}}`: the named template's body, written in place with its
    /// own variables and the pipeline as its dot.
    fn template(&mut self, name: &str, pipe: Option<&Pipe>, line: usize) {
        let source = format!("{{{{template \"{name}\"}}}}");
        let Some((_, body)) = self.defines.iter().rev().find(|(n, _)| n == name) else {
            return self.mark(line, &source, format!("no template \"{name}\" is defined"));
        };
        if self.expanding.iter().any(|n| n == name) {
            return self.mark(line, &source, format!("template \"{name}\" calls itself"));
        }
        let dot = match pipe {
            Some(pipe) => match self.pipe(pipe) {
                Ok(expr) if expr.atom && !expr.code.contains('(') => Some((expr.code, expr.ty)),
                Ok(expr) => {
                    let variable = self.fresh("dot");
                    self.out
                        .push_str(&format!("{{% set {variable} = {} %}}", expr.code));
                    Some((variable, expr.ty))
                }
                Err(reason) => return self.mark(line, &pipe.source, reason),
            },
            None => None,
        };
        self.expanding.push(name.to_string());
        // A template sees none of its caller's variables; `$` is its dot.
        let outer = std::mem::replace(&mut self.scopes, vec![HashMap::new()]);
        if let Some((code, ty)) = &dot {
            self.scopes[0].insert(
                String::new(),
                Variable {
                    name: code.clone(),
                    ty: ty.clone(),
                    depth: self.loop_depth,
                },
            );
        }
        self.dots.push(dot);
        let body = body.clone();
        self.nodes(&body);
        self.dots.pop();
        self.scopes = outer;
        self.expanding.pop();
    }

    /// A pipeline's value: each command's result is the last argument of the next.
    fn pipe(&mut self, pipe: &Pipe) -> Result<Expr, Fail> {
        let mut previous: Option<Expr> = None;
        for command in &pipe.commands {
            previous = Some(self.command(command, previous)?);
        }
        previous.ok_or_else(|| "empty pipeline".to_string())
    }

    fn command(&mut self, args: &[Arg], piped: Option<Expr>) -> Result<Expr, Fail> {
        match &args[0] {
            Arg::Ident(name) if name == "datetime" => Err(
                "datetime is Go's time.Time, printed and formatted (`.Format \"2006-01-02\"`) \
                 as Go does; write datetime(format=\"%Y-%m-%d\") by hand"
                    .to_string(),
            ),
            Arg::Ident(name) => {
                let mut operands = Vec::new();
                for arg in &args[1..] {
                    operands.push(self.operand(arg)?);
                }
                operands.extend(piped);
                call(name, operands)
            }
            first => {
                if args.len() > 1 || piped.is_some() {
                    return Err("only a function takes arguments".to_string());
                }
                self.operand(first)
            }
        }
    }

    fn operand(&mut self, arg: &Arg) -> Result<Expr, Fail> {
        match arg {
            Arg::Str(text) => Ok(Expr::atom(string_literal(text), Ty::Str)),
            Arg::Number(number) => number_literal(number),
            Arg::Bool(value) => Ok(Expr::atom(value.to_string(), Ty::Bool)),
            Arg::Nil => Ok(Expr::atom("none".to_string(), Ty::Unknown)),
            Arg::Ident(name) => call(name, Vec::new()),
            Arg::Dot(fields) => {
                let Some(Some((code, ty))) = self.dots.last().cloned() else {
                    return Err(
                        "the dot outside range and with is confd's nil, which has no fields"
                            .to_string(),
                    );
                };
                fields_of(Expr::atom(code, ty), fields)
            }
            Arg::Var(go_name, fields) => {
                let Some(variable) = self.lookup(go_name) else {
                    if go_name.is_empty() {
                        return Err("`$` is confd's nil data".to_string());
                    }
                    return Err(format!("${go_name} is not declared"));
                };
                fields_of(Expr::atom(variable.name, variable.ty), fields)
            }
            Arg::Paren(pipe, fields) => {
                if !pipe.vars.is_empty() {
                    return Err("a declaration inside parentheses".to_string());
                }
                let inner = self.pipe(pipe)?;
                let inner = Expr::atom(inner.term(), inner.ty);
                fields_of(inner, fields)
            }
        }
    }
}

/// Go's field selection: `.Key`/`.Value` of a pair and the fields of an SRV record are
/// lower case in reconfd; a map's key is looked up as written.
fn fields_of(mut expr: Expr, fields: &[String]) -> Result<Expr, Fail> {
    for field in fields {
        let (name, ty) = match (&expr.ty, field.as_str()) {
            (Ty::Json, _) => (field.clone(), Ty::Json),
            (Ty::Pair | Ty::Unknown, "Key" | "Value") => (field.to_lowercase(), Ty::Str),
            (Ty::Srv, "Target") => ("target".to_string(), Ty::Str),
            (Ty::Srv, "Port" | "Priority" | "Weight") => (field.to_lowercase(), Ty::Int),
            (Ty::Pair | Ty::Srv | Ty::Str | Ty::Int | Ty::Bool | Ty::List(_), _) => {
                return Err(format!("no field {field} here"));
            }
            _ => (field.clone(), Ty::Unknown),
        };
        // Tera takes `.name` only after a variable's path: after `)` or `]` it wants `["name"]`.
        let term = expr.term();
        let code = if is_identifier(&name) && term.split('.').all(is_identifier) {
            format!("{term}.{name}")
        } else {
            format!("{term}[{}]", string_literal(&name))
        };
        expr = Expr::atom(code, ty);
    }
    Ok(expr)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A Tera string literal holding `text` exactly.
fn string_literal(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text of `code` when it is one string literal as [`string_literal`] writes it.
fn literal_text(code: &str) -> Option<String> {
    let mut chars = code.strip_prefix('"')?.chars();
    let mut text = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return chars.next().is_none().then_some(text),
            '\\' => text.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                other => other,
            }),
            _ => text.push(c),
        }
    }
    None
}

/// A confd (Go `path.Match`) pattern given as a literal, written so that reconfd's patterns
/// match what confd's did: `**` is one `*` in Go, braces are plain characters, and `[!a]`
/// is the class of `!` and `a` (Go negates with `^` only). A pattern computed at render
/// time is left as it is.
fn go_pattern(code: &str) -> String {
    let Some(pattern) = literal_text(code) else {
        return code.to_string();
    };
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                out.extend(chars.next());
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                if chars.peek() == Some(&'!') {
                    chars.next();
                    out.push_str("\\!");
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '*' if !in_class => {
                out.push(c);
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
            }
            '{' | '}' if !in_class => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    string_literal(&out)
}

fn number_literal(number: &str) -> Result<Expr, Fail> {
    let digits = number.replace('_', "");
    let leading_zero = digits.trim_start_matches(['-', '+']).len() > 1
        && digits.trim_start_matches(['-', '+']).starts_with('0');
    if let (false, Ok(value)) = (leading_zero, digits.parse::<i64>()) {
        return Ok(Expr::atom(value.to_string(), Ty::Int));
    }
    let (negative, unsigned) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.trim_start_matches('+')),
    };
    let radix = match unsigned.get(..2) {
        Some("0x" | "0X") => Some(16),
        Some("0o" | "0O") => Some(8),
        Some("0b" | "0B") => Some(2),
        _ if unsigned.len() > 1 && unsigned.starts_with('0') => Some(8),
        _ => None,
    };
    if let Some(radix) = radix {
        let body = if radix == 8 && !unsigned[1..].starts_with(['o', 'O']) {
            &unsigned[1..]
        } else {
            &unsigned[2..]
        };
        if let Ok(value) = i64::from_str_radix(body, radix) {
            let value = if negative { -value } else { value };
            return Ok(Expr::atom(value.to_string(), Ty::Int));
        }
    }
    float_literal(&digits).ok_or_else(|| format!("number {number} has no Tera form"))
}

/// A Go floating-point constant (`2.5`, `1e6`, `1.5e-7`) as a Tera float literal, which has
/// neither an exponent nor a missing fraction; printed through `goPrint` it reads as Go's `%v`.
fn float_literal(digits: &str) -> Option<Expr> {
    let decimal = digits
        .trim_start_matches(['-', '+'])
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'));
    let value: f64 = digits.parse().ok().filter(|_| decimal)?;
    if !value.is_finite() {
        return None;
    }
    let mut code = value.to_string();
    if !code.contains('.') {
        code.push_str(".0");
    }
    Some(Expr::atom(code, Ty::Unknown))
}

/// A function call with its operands (the piped value last), as a Tera expression.
/// Go's comparison functions stop the template with "incompatible types for comparison" when
/// given, say, a string and a number, where Tera's operators would just answer false; when both
/// kinds are known here, the comparison is reported instead of translated into a quiet answer.
fn incomparable(name: &str, a: &Ty, b: &Ty) -> Result<(), Fail> {
    let kind = |ty: &Ty| match ty {
        Ty::Str => Some("a string"),
        Ty::Int => Some("a number"),
        Ty::Bool => Some("a boolean"),
        _ => None,
    };
    match (kind(a), kind(b)) {
        (Some(x), Some(y)) if x != y => Err(format!(
            "{name} of {x} and {y} is an error in Go (incompatible types for comparison)"
        )),
        _ => Ok(()),
    }
}

fn call(name: &str, args: Vec<Expr>) -> Result<Expr, Fail> {
    let arity = |min: usize, max: usize| -> Result<(), Fail> {
        if args.len() < min || args.len() > max {
            Err(format!(
                "{name} takes {} arguments, not {}",
                if min == max {
                    min.to_string()
                } else {
                    format!("{min} to {max}")
                },
                args.len()
            ))
        } else {
            Ok(())
        }
    };
    let a = |i: usize| args[i].code.clone();
    let t = |i: usize| args[i].term();
    let list_of_str = Ty::List(Box::new(Ty::Str));
    let filter = |filter: &str, ty: Ty| Expr::atom(format!("({} | {filter})", t(0)), ty);
    Ok(match name {
        "getv" | "getenv" => {
            arity(1, 2)?;
            let default = args
                .get(1)
                .map(|d| format!(", default={}", d.code))
                .unwrap_or_default();
            Expr::atom(format!("{name}(key={}{default})", a(0)), Ty::Str)
        }
        "get" => {
            arity(1, 1)?;
            Expr::atom(format!("get(key={})", a(0)), Ty::Pair)
        }
        "gets" => {
            arity(1, 1)?;
            Expr::atom(
                format!("gets(key={})", go_pattern(&a(0))),
                Ty::List(Box::new(Ty::Pair)),
            )
        }
        "getvs" => {
            arity(1, 1)?;
            Expr::atom(format!("getvs(key={})", go_pattern(&a(0))), list_of_str)
        }
        "ls" | "lsdir" => {
            arity(1, 1)?;
            Expr::atom(format!("{name}(key={})", a(0)), list_of_str)
        }
        "exists" => {
            arity(1, 1)?;
            Expr::atom(format!("exists(key={})", a(0)), Ty::Bool)
        }
        "base" | "dir" | "toUpper" | "toLower" | "base64Encode" | "base64Decode" => {
            arity(1, 1)?;
            filter(name, Ty::Str)
        }
        "atoi" => {
            arity(1, 1)?;
            filter("atoi", Ty::Int)
        }
        "parseBool" => {
            arity(1, 1)?;
            filter("parseBool", Ty::Bool)
        }
        "json" => {
            arity(1, 1)?;
            filter("json", Ty::Json)
        }
        "jsonArray" => {
            arity(1, 1)?;
            filter("jsonArray", Ty::List(Box::new(Ty::Json)))
        }
        "sortByLength" => {
            arity(1, 1)?;
            filter("sortByLength", list_of_str)
        }
        "sortKVByLength" => {
            arity(1, 1)?;
            filter("sortKVByLength", Ty::List(Box::new(Ty::Pair)))
        }
        "reverse" => {
            arity(1, 1)?;
            let ty = args[0].ty.clone();
            filter("reverse", ty)
        }
        "split" => {
            arity(2, 2)?;
            Expr::atom(format!("({} | split(pat={}))", t(0), a(1)), list_of_str)
        }
        "join" => {
            arity(2, 2)?;
            Expr::atom(format!("({} | join(sep={}))", t(0), a(1)), Ty::Str)
        }
        "trimSuffix" => {
            arity(2, 2)?;
            Expr::atom(format!("({} | trimSuffix(suffix={}))", t(0), a(1)), Ty::Str)
        }
        "contains" => {
            arity(2, 2)?;
            Expr::atom(format!("({} | contains(substr={}))", t(0), a(1)), Ty::Bool)
        }
        "replace" => {
            arity(4, 4)?;
            if a(3) != "-1" {
                return Err("replace with a count other than -1".to_string());
            }
            Expr::atom(
                format!("({} | replace(from={}, to={}))", t(0), a(1), a(2)),
                Ty::Str,
            )
        }
        "seq" => {
            arity(2, 2)?;
            Expr::atom(
                format!("seq(first={}, last={})", a(0), a(1)),
                Ty::List(Box::new(Ty::Int)),
            )
        }
        "add" | "sub" | "mul" | "div" | "mod" => {
            arity(2, 2)?;
            Expr::atom(format!("{name}(a={}, b={})", a(0), a(1)), Ty::Int)
        }
        "fileExists" => {
            arity(1, 1)?;
            Expr::atom(format!("fileExists(path={})", a(0)), Ty::Bool)
        }
        "lookupIP" | "lookupIPV4" | "lookupIPV6" => {
            arity(1, 1)?;
            Expr::atom(format!("{name}(name={})", a(0)), list_of_str)
        }
        "lookupSRV" => {
            arity(3, 3)?;
            Expr::atom(
                format!("lookupSRV(service={}, proto={}, name={})", a(0), a(1), a(2)),
                Ty::List(Box::new(Ty::Srv)),
            )
        }
        "map" => {
            if !args.len().is_multiple_of(2) {
                return Err("map takes key and value pairs".to_string());
            }
            let mut pairs = Vec::new();
            for pair in args.chunks(2) {
                let key = pair[0]
                    .code
                    .strip_prefix('"')
                    .and_then(|k| k.strip_suffix('"'))
                    .filter(|k| is_identifier(k))
                    .ok_or_else(|| "map with a key that is not a constant name".to_string())?;
                pairs.push(format!("{key}={}", pair[1].code));
            }
            Expr::atom(format!("map({})", pairs.join(", ")), Ty::Map)
        }
        "len" => {
            arity(1, 1)?;
            Expr::atom(format!("({} | goLen)", t(0)), Ty::Int)
        }
        "index" => {
            if args.is_empty() {
                return Err("index needs a value".to_string());
            }
            let mut code = t(0);
            let mut ty = args[0].ty.clone();
            for key in &args[1..] {
                (code, ty) = match ty {
                    // Go indexes a string by byte, and the byte prints as a number.
                    Ty::Str => (format!("({code} | goByte(at={}))", key.code), Ty::Unknown),
                    Ty::List(element) => (format!("{code}[{}]", key.code), *element),
                    Ty::Json => (format!("{code}[{}]", key.code), Ty::Json),
                    _ => (format!("{code}[{}]", key.code), Ty::Unknown),
                };
            }
            Expr::atom(code, ty)
        }
        "printf" => {
            if args.is_empty() {
                return Err("printf needs a format".to_string());
            }
            let rest: Vec<String> = args[1..].iter().map(|e| e.code.clone()).collect();
            Expr::atom(
                format!("goPrintf(format={}, args=[{}])", a(0), rest.join(", ")),
                Ty::Str,
            )
        }
        "print" | "println" => {
            let all: Vec<String> = args.iter().map(|e| e.code.clone()).collect();
            let function = if name == "print" {
                "goSprint"
            } else {
                "goSprintln"
            };
            Expr::atom(format!("{function}(args=[{}])", all.join(", ")), Ty::Str)
        }
        "eq" => {
            if args.len() < 2 {
                return Err("eq needs two values".to_string());
            }
            for other in &args[1..] {
                incomparable(name, &args[0].ty, &other.ty)?;
            }
            let tests: Vec<String> = args[1..]
                .iter()
                .map(|other| format!("{} == {}", t(0), other.term()))
                .collect();
            Expr::compound(tests.join(" or "), Ty::Bool)
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            arity(2, 2)?;
            incomparable(name, &args[0].ty, &args[1].ty)?;
            let operator = match name {
                "ne" => "!=",
                "lt" => "<",
                "le" => "<=",
                "gt" => ">",
                _ => ">=",
            };
            Expr::compound(format!("{} {operator} {}", t(0), t(1)), Ty::Bool)
        }
        "and" | "or" => {
            if args.is_empty() {
                return Err(format!("{name} needs a value"));
            }
            // Go's `and`/`or` yield one of their operands; Tera's a boolean. Both agree on
            // what is true, which is all a condition asks; printing the result needs the
            // operand itself, which Tera's lazy `x if c else y` gives. Either way evaluation
            // stops at the first operand that decides, as in Go since 1.18, so the guard
            // `and (exists "/k") (getv "/k")` never reads a missing key.
            let joined: Vec<String> = args.iter().map(Expr::term).collect();
            if args.iter().all(|e| e.ty == Ty::Bool) {
                return Ok(Expr::compound(joined.join(&format!(" {name} ")), Ty::Bool));
            }
            let mut operands = joined.into_iter().rev();
            let last = operands.next().unwrap_or_default();
            let code = operands.fold(last, |rest, operand| {
                if name == "and" {
                    format!("({rest} if {operand} else {operand})")
                } else {
                    format!("({operand} if {operand} else {rest})")
                }
            });
            Expr::atom(code, Ty::Unknown)
        }
        "not" => {
            arity(1, 1)?;
            Expr::compound(format!("not {}", t(0)), Ty::Bool)
        }
        _ => return Err(format!("function {name} has no translation")),
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn tera(go: &str) -> String {
        let (out, problems) = emit(&parse(go).unwrap());
        assert!(problems.is_empty(), "{problems:?}");
        out
    }

    #[test]
    fn range_over_gets_uses_the_pair_fields() {
        assert_eq!(
            tera(r#"{{range gets "/a/*"}}{{base .Key}}={{.Value}}{{end}}"#),
            r#"{% for kv in gets(key="/a/*") %}{{ (kv.key | base) }}={{ kv.value }}{% endfor %}"#
        );
    }

    #[test]
    fn confd_patterns_keep_their_go_meaning() {
        assert_eq!(
            tera(r#"{{range gets "/u/**"}}{{end}}{{range getvs "/u/{a,b}/[!a]"}}{{end}}"#),
            r#"{% for kv in gets(key="/u/*") %}{% endfor %}{% for value in getvs(key="/u/\\{a,b\\}/[\\!a]") %}{% endfor %}"#
        );
        // Already Go's meaning: left as written.
        assert_eq!(
            tera(r#"{{range gets "/u/[^a]?\\*"}}{{end}}"#),
            r#"{% for kv in gets(key="/u/[^a]?\\*") %}{% endfor %}"#
        );
    }

    #[test]
    fn go_names_tera_cannot_take_are_renamed() {
        assert_eq!(
            tera(r#"{{$break := "v"}}{{$break}}{{$continue := 1}}{{$é := "c"}}{{$é}}"#),
            r#"{% set break_ = "v" %}{{ break_ }}{% set continue_ = 1 %}{% set _ = "c" %}{{ _ }}"#
        );
    }

    #[test]
    fn fields_of_parsed_json_keep_their_names() {
        // AWS tags: `[{"Key": "Name", "Value": "web"}]`; only a store pair's are lower case.
        assert_eq!(
            tera(r#"{{range jsonArray (getv "/tags")}}{{.Key}}={{.Value}}{{end}}"#),
            r#"{% for item in (getv(key="/tags") | jsonArray) %}{{ item.Key | goPrint }}={{ item.Value | goPrint }}{% endfor %}"#
        );
        assert_eq!(
            tera(r#"{{$d := json (getv "/cfg")}}{{range $d.items}}{{.Key}}{{end}}"#),
            r#"{% set d = (getv(key="/cfg") | json) %}{% for key, value in d.items | goItems %}{{ value.Key | goPrint }}{% endfor %}"#
        );
        assert_eq!(
            tera(r#"{{$t := jsonArray (getv "/tags")}}{{(index $t 0).Value}}"#),
            r#"{% set t = (getv(key="/tags") | jsonArray) %}{{ t[0]["Value"] | goPrint }}"#
        );
    }

    #[test]
    fn fields_after_a_call_or_parentheses_are_subscripts() {
        assert_eq!(
            tera(r#"{{(json (getv "/cfg")).name}}{{(get "/k").Key}}"#),
            r#"{{ (getv(key="/cfg") | json)["name"] | goPrint }}{{ get(key="/k")["key"] }}"#
        );
    }

    #[test]
    fn float_constants_become_tera_floats() {
        assert_eq!(
            tera(r#"{{printf "%.2f" 2.5}}{{1e6}}{{-1.5e-7}}"#),
            r#"{{ goPrintf(format="%.2f", args=[2.5]) }}{{ 1000000.0 | goPrint }}{{ -0.00000015 | goPrint }}"#
        );
    }

    #[test]
    fn and_or_of_values_stop_at_the_deciding_operand() {
        assert_eq!(
            tera(r#"{{and (exists "/x") (getv "/x")}}{{or (getv "/a") (getv "/b") "c"}}"#),
            "{{ (getv(key=\"/x\") if exists(key=\"/x\") else exists(key=\"/x\")) | goPrint }}\
             {{ (getv(key=\"/a\") if getv(key=\"/a\") else (getv(key=\"/b\") if getv(key=\"/b\") else \"c\")) | goPrint }}"
        );
    }

    #[test]
    fn range_index_is_set_from_the_loop() {
        assert_eq!(
            tera(r#"{{range $i, $n := ls "/a"}}{{$i}}{{$n}}{{end}}"#),
            r#"{% for n in ls(key="/a") %}{% set i = loop.index0 %}{{ i }}{{ n }}{% endfor %}"#
        );
    }

    #[test]
    fn unknown_values_print_as_go_and_range_by_items() {
        assert_eq!(
            tera(r#"{{$m := json (getv "/j")}}{{range $k, $v := $m}}{{$k}}{{$v}}{{end}}"#),
            "{% set m = (getv(key=\"/j\") | json) %}{% for k, v in m | goItems %}\
             {{ k | goPrint }}{{ v | goPrint }}{% endfor %}"
        );
    }

    #[test]
    fn inner_declarations_do_not_overwrite_outer_ones() {
        assert_eq!(
            tera(r#"{{$x := "a"}}{{if true}}{{$x := "b"}}{{$x}}{{end}}{{$x}}"#),
            r#"{% set x = "a" %}{% if true %}{% set x2 = "b" %}{{ x2 }}{% endif %}{{ x }}"#
        );
    }

    #[test]
    fn with_binds_the_dot() {
        assert_eq!(
            tera(r#"{{with get "/k"}}{{.Value}}{{else}}none{{end}}"#),
            r#"{% set it = get(key="/k") %}{% if it %}{{ it.value }}{% else %}none{% endif %}"#
        );
    }

    #[test]
    fn tera_delimiters_in_text_are_escaped() {
        assert_eq!(tera("a {% b {# c"), r#"a {{ "{%" }} b {{ "{#" }} c"#);
    }

    #[test]
    fn a_brace_ending_the_text_before_a_tag_stays_apart_from_it() {
        // Calico's `protocol static {` followed by `{{- if ...}}`: written plainly, the `{`
        // and the tag make `{{%`, which Tera refuses to parse.
        assert_eq!(
            tera("protocol static {\n{{- if true}}x{{end}}{{/* c */}}{"),
            r#"protocol static {{ "{" }}{% if true %}x{% endif %}{# c #}{{ "{" }}"#
        );
    }

    #[test]
    fn untranslatable_constructs_are_marked_and_listed() {
        let (out, problems) = emit(&parse("x\n{{call .F}}y").unwrap());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 2);
        assert!(
            out.starts_with("x\n{# reconfd convert: not translated: {{call .F}}"),
            "{out}"
        );
        assert!(out.ends_with("#}y"), "{out}");
    }

    #[test]
    fn a_variable_whose_value_is_not_translated_stays_declared() {
        // yoda-proxy's `{{ $pathName := $path.Key | parent | base }}`: only that action is
        // marked; the ones using `$pathName` are translated.
        let (out, problems) =
            emit(&parse(r#"{{$p := parent "/a/b"}}{{$p}}{{getv (printf "/x/%s" $p)}}"#).unwrap());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].reason.contains("parent"), "{problems:?}");
        assert!(
            out.ends_with(
                r#"#}{{ p | goPrint }}{{ getv(key=goPrintf(format="/x/%s", args=[p])) }}"#
            ),
            "{out}"
        );
    }

    #[test]
    fn comparing_a_string_with_a_number_is_reported_as_go_refuses_it() {
        // QingCloud's memcached.conf.tmpl: `{{$M := getv "/env/-M"}}{{if eq $M 1}}`, which
        // confd never renders.
        let (_, problems) = emit(&parse(r#"{{$M := getv "/m"}}{{if eq $M 1}}-M{{end}}"#).unwrap());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].reason.contains("eq of a string and a number"),
            "{problems:?}"
        );
        assert_eq!(
            tera(r#"{{if eq (len (getvs "/a/*")) 2}}x{{end}}{{if ne (getv "/b") "1"}}y{{end}}"#),
            r#"{% if (getvs(key="/a/*") | goLen) == 2 %}x{% endif %}{% if getv(key="/b") != "1" %}y{% endif %}"#
        );
    }

    #[test]
    fn templates_are_expanded_with_their_dot() {
        assert_eq!(
            tera(
                r#"{{define "s"}}[{{.Value}}]{{end}}{{range gets "/a"}}{{template "s" .}}{{end}}"#
            ),
            r#"{% for kv in gets(key="/a") %}[{{ kv.value }}]{% endfor %}"#
        );
    }

    #[test]
    fn number_literals_follow_go() {
        assert_eq!(number_literal("0x1F").unwrap().code, "31");
        assert_eq!(number_literal("017").unwrap().code, "15");
        assert_eq!(number_literal("-3").unwrap().code, "-3");
        assert_eq!(number_literal("1.5").unwrap().code, "1.5");
        assert_eq!(number_literal("1e3").unwrap().code, "1000.0");
        assert!(number_literal("0x1p-2").is_err());
    }
}
