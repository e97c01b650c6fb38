//! The subset of Go's `text/template` that Docker's `--format` flag uses,
//! evaluated against a [`serde_json::Value`], plus a `text/tabwriter`-style
//! column aligner for `table` output.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;

/// A parse or render error; the message says what was wrong.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(msg: impl fmt::Display) -> Error {
    Error(format!("template: {msg}"))
}

type Res<T> = Result<T, Error>;

/// Returns early with a formatted `template: ...` error.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(err(format_args!($($arg)*)))
    };
}

const FUNCS: &[&str] = &[
    "index", "join", "json", "len", "lower", "printf", "println", "title", "truncate", "upper",
];

// ---------------------------------------------------------------- lexer

#[derive(Debug, PartialEq)]
enum Tok {
    Field(Vec<String>), // `{{.}}` is the empty path
    Ident(String),
    Str(String),
    Int(i64),
    Pipe,
}

enum Item {
    Text(String),
    Action(Vec<Tok>),
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits the source into literal text and tokenized actions, applying
/// Docker's `\t`/`\n` replacement to text and the `{{-`/`-}}` trim markers.
fn lex(src: &str) -> Res<Vec<Item>> {
    let mut items = Vec::new();
    let (mut rest, mut trim_next) = (src, false);
    loop {
        let start = rest.find("{{");
        let text = &rest[..start.unwrap_or(rest.len())];
        let mut text = text.replace("\\t", "\t").replace("\\n", "\n");
        if trim_next {
            text = text.trim_start_matches(is_space).to_string();
        }
        let mut action = start.map_or("", |i| &rest[i + 2..]);
        if let Some(after) = action.strip_prefix('-').filter(|a| a.starts_with(is_space)) {
            text.truncate(text.trim_end_matches(is_space).len());
            action = after;
        }
        if !text.is_empty() {
            items.push(Item::Text(text));
        }
        if start.is_none() {
            return Ok(items);
        }
        let (toks, trim, after) = lex_action(action)?;
        items.push(Item::Action(toks));
        (trim_next, rest) = (trim, after);
    }
}

/// Tokenizes one action body; returns the tokens, whether it ended with
/// ` -}}`, and the source following the closing `}}`.
fn lex_action(s: &str) -> Res<(Vec<Tok>, bool, &str)> {
    let mut toks = Vec::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("}}") {
            return Ok((toks, false, after));
        }
        if is_space(c) {
            rest = rest.trim_start_matches(is_space);
            if let Some(after) = rest.strip_prefix("-}}") {
                return Ok((toks, true, after));
            }
            continue;
        }
        let n = c.len_utf8();
        let word_end =
            |ok: fn(char) -> bool| rest[n..].find(|c| !ok(c)).map_or(rest.len(), |i| i + n);
        let (tok, len) = match c {
            '|' => (Tok::Pipe, 1),
            '"' => lex_string(rest)?,
            '.' => {
                let end = word_end(|c| is_ident(c) || c == '.');
                let path = &rest[1..end];
                if path.split('.').any(str::is_empty) && !path.is_empty() {
                    bail!("bad field name {:?}", &rest[..end]);
                }
                let path = path.split('.').filter(|p| !p.is_empty()).map(String::from);
                (Tok::Field(path.collect()), end)
            }
            c if c == '-' || c.is_ascii_digit() => {
                let word = &rest[..word_end(is_ident)];
                let n = word
                    .parse()
                    .map_err(|_| err(format!("bad number syntax: {word:?}")))?;
                (Tok::Int(n), word.len())
            }
            c if is_ident(c) => {
                let end = word_end(is_ident);
                (Tok::Ident(rest[..end].to_string()), end)
            }
            c => bail!("unexpected {c:?} in action"),
        };
        toks.push(tok);
        rest = &rest[len..];
    }
    Err(err("unclosed action"))
}

/// Lexes a `"..."` literal at the start of `s`; returns it and its byte length.
fn lex_string(s: &str) -> Res<(Tok, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        out.push(match c {
            '"' => return Ok((Tok::Str(out), i + 1)),
            '\n' => break,
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => '\n',
                Some('t') => '\t',
                Some(e @ ('"' | '\\')) => e,
                Some(e) => bail!("invalid escape \\{e} in string"),
                None => break,
            },
            c => c,
        });
    }
    Err(err("unterminated quoted string"))
}

// ---------------------------------------------------------------- parser

#[derive(Debug, Clone)]
enum Arg {
    Field(Vec<String>),
    Func(String),
    Lit(Value),
}

/// Commands separated by `|`; each command is a list of arguments.
type Pipe = Vec<Vec<Arg>>;

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Print(Pipe),
    If(Pipe, Vec<Node>, Vec<Node>), // condition, body, else
    Range(Pipe, Vec<Node>, Vec<Node>),
}

enum Stop {
    Eof,
    End,
    Else,
}

fn parse_list(items: &mut impl Iterator<Item = Item>) -> Res<(Vec<Node>, Stop)> {
    let mut nodes = Vec::new();
    while let Some(item) = items.next() {
        let toks = match item {
            Item::Text(t) => {
                nodes.push(Node::Text(t));
                continue;
            }
            Item::Action(toks) => toks,
        };
        let (kw, args) = match toks.split_first() {
            Some((Tok::Ident(k), args)) => (k.as_str(), args),
            _ => ("", &toks[..]),
        };
        match kw {
            "end" | "else" if !args.is_empty() => bail!("unexpected tokens after {{{{{kw}}}}}"),
            "end" => return Ok((nodes, Stop::End)),
            "else" => return Ok((nodes, Stop::Else)),
            "if" | "range" => {
                let pipe = parse_pipe(args, kw)?;
                let (body, stop) = parse_list(items)?;
                let (alt, stop) = match stop {
                    Stop::Else => parse_list(items)?,
                    stop => (Vec::new(), stop),
                };
                match stop {
                    Stop::End => {}
                    Stop::Else => bail!("unexpected {{{{else}}}}"),
                    Stop::Eof => bail!("unexpected EOF: {{{{{kw}}}}} without {{{{end}}}}"),
                }
                nodes.push(match kw {
                    "if" => Node::If(pipe, body, alt),
                    _ => Node::Range(pipe, body, alt),
                });
            }
            _ => nodes.push(Node::Print(parse_pipe(&toks, "command")?)),
        }
    }
    Ok((nodes, Stop::Eof))
}

fn parse_pipe(toks: &[Tok], ctx: &str) -> Res<Pipe> {
    if toks.is_empty() {
        bail!("missing value for {ctx}");
    }
    let parse_arg = |t: &Tok| match t {
        Tok::Field(p) => Ok(Arg::Field(p.clone())),
        Tok::Str(s) => Ok(Arg::Lit(Value::String(s.clone()))),
        Tok::Int(n) => Ok(Arg::Lit(Value::from(*n))),
        Tok::Ident(b) if b == "true" || b == "false" => Ok(Arg::Lit(Value::Bool(b == "true"))),
        Tok::Ident(f) if FUNCS.contains(&f.as_str()) => Ok(Arg::Func(f.clone())),
        Tok::Ident(f) => Err(err(format!("unknown function {f:?}"))),
        Tok::Pipe => Err(err("unexpected \"|\"")),
    };
    toks.split(|t| *t == Tok::Pipe)
        .map(|cmd| match cmd {
            [] => Err(err("missing command in pipeline")),
            _ => cmd.iter().map(parse_arg).collect(),
        })
        .collect()
}

// ---------------------------------------------------------------- evaluation

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// Map entries in key order (independent of serde_json's `preserve_order`).
fn sorted(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut kv: Vec<_> = m.iter().collect();
    kv.sort_by(|a, b| a.0.cmp(b.0));
    kv
}

fn join(vals: &[Value], sep: &str) -> String {
    vals.iter().map(fmt_value).collect::<Vec<_>>().join(sep)
}

/// Formats a value like Go's `%v` does for the equivalent decoded JSON.
fn fmt_value(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::Array(a) => format!("[{}]", join(a, " ")),
        Value::Object(m) => {
            let kv: Vec<_> = sorted(m)
                .iter()
                .map(|(k, v)| format!("{k}:{}", fmt_value(v)))
                .collect();
            format!("map[{}]", kv.join(" "))
        }
    }
}

fn lookup(dot: &Value, path: &[String]) -> Res<Value> {
    let mut cur = dot;
    for seg in path {
        cur = match cur {
            Value::Object(m) => m.get(seg).unwrap_or(&Value::Null),
            Value::Null => return Ok(Value::Null),
            v => bail!("can't evaluate field {seg} in type {}", type_name(v)),
        };
    }
    Ok(cur.clone())
}

fn eval_arg(arg: &Arg, dot: &Value) -> Res<Value> {
    match arg {
        Arg::Field(path) => lookup(dot, path),
        Arg::Func(name) => call(name, Vec::new()),
        Arg::Lit(v) => Ok(v.clone()),
    }
}

/// Evaluates a pipeline; each command's result becomes the last argument of the next.
fn eval_pipe(pipe: &Pipe, dot: &Value) -> Res<Value> {
    let mut prev = None;
    for cmd in pipe {
        prev = Some(match (cmd.as_slice(), prev) {
            ([Arg::Func(name), rest @ ..], piped) => {
                let mut args = rest
                    .iter()
                    .map(|a| eval_arg(a, dot))
                    .collect::<Res<Vec<_>>>()?;
                args.extend(piped);
                call(name, args)?
            }
            ([arg], None) => eval_arg(arg, dot)?,
            ([Arg::Field(p), ..], _) => {
                bail!("can't give argument to non-function .{}", p.join("."))
            }
            _ => return Err(err("can't give argument to non-function literal")),
        });
    }
    Ok(prev.unwrap_or(Value::Null))
}

fn as_str<'a>(func: &str, v: &'a Value) -> Res<&'a str> {
    let msg = || err(format!("{func}: expected string, got {}", type_name(v)));
    v.as_str().ok_or_else(msg)
}

fn call(name: &str, mut args: Vec<Value>) -> Res<Value> {
    let want = match name {
        "json" | "upper" | "lower" | "title" | "len" => 1,
        "truncate" | "join" => 2,
        _ => args.len(),
    };
    if args.len() != want {
        let got = args.len();
        bail!("wrong number of args for {name}: want {want} got {got}");
    }
    let text = match name {
        "json" => serde_json::to_string(&args[0]).map_err(|e| err(format!("json: {e}")))?,
        "upper" => as_str(name, &args[0])?.to_uppercase(),
        "lower" => as_str(name, &args[0])?.to_lowercase(),
        "title" => title(as_str(name, &args[0])?),
        "truncate" => {
            let n = args[1]
                .as_u64()
                .ok_or_else(|| err("truncate: length must be an integer ≥ 0"))?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            as_str(name, &args[0])?.chars().take(n).collect()
        }
        "join" => match &args[0] {
            Value::Array(a) => join(a, as_str(name, &args[1])?),
            v => bail!("join: expected array, got {}", type_name(v)),
        },
        "len" => {
            return match &args[0] {
                Value::String(s) => Ok(s.len().into()), // bytes, like Go
                Value::Array(a) => Ok(a.len().into()),
                Value::Object(m) => Ok(m.len().into()),
                v => bail!("len of {}", type_name(v)),
            };
        }
        "index" if args.is_empty() => return Err(err("index: missing collection")),
        "index" => {
            let coll = args.remove(0);
            return args.into_iter().try_fold(coll, index1);
        }
        "println" => format!("{}\n", join(&args, " ")),
        "printf" => match args.split_first() {
            Some((Value::String(f), rest)) => sprintf(f, rest)?,
            _ => return Err(err("printf: format must be a string")),
        },
        _ => bail!("unknown function {name:?}"),
    };
    Ok(Value::String(text))
}

fn index1(coll: Value, key: Value) -> Res<Value> {
    match (coll, &key) {
        (Value::Object(mut m), Value::String(k)) => Ok(m.remove(k).unwrap_or(Value::Null)),
        (Value::Array(mut a), Value::Number(n)) => n
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < a.len())
            .map(|i| a.swap_remove(i))
            .ok_or_else(|| err(format!("index: index out of range: {n}"))),
        (c, k) => bail!("index: can't index {} with {}", type_name(&c), type_name(k)),
    }
}

/// Go's `strings.Title`: upper-cases the first letter of each word.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word_start = true;
    for c in s.chars() {
        match word_start {
            true => out.extend(c.to_uppercase()),
            false => out.push(c),
        }
        word_start = !is_ident(c);
    }
    out
}

/// `printf` with `%s`, `%d`, `%v`, `%q` and `%%`, and Go's `%!` markers for
/// missing, extra or mistyped operands.
fn sprintf(format: &str, args: &[Value]) -> Res<String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        let verb = match c {
            '%' => chars
                .next()
                .ok_or_else(|| err("printf: missing verb at end of format"))?,
            c => {
                out.push(c);
                continue;
            }
        };
        let arg = match verb {
            '%' => {
                out.push('%');
                continue;
            }
            's' | 'd' | 'v' | 'q' => args.next(),
            v => bail!("printf: unsupported verb %{v}"),
        };
        match (verb, arg) {
            (v, None) => out.push_str(&format!("%!{v}(MISSING)")),
            ('d', Some(Value::Number(n))) if !n.is_f64() => out.push_str(&n.to_string()),
            ('d', Some(a)) => out.push_str(&format!("%!d({}={})", type_name(a), fmt_value(a))),
            ('q', Some(a)) => out.push_str(&format!("{:?}", fmt_value(a))),
            (_, Some(a)) => out.push_str(&fmt_value(a)),
        }
    }
    let extra: Vec<_> = args
        .map(|a| format!("{}={}", type_name(a), fmt_value(a)))
        .collect();
    if !extra.is_empty() {
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    Ok(out)
}

fn exec(nodes: &[Node], dot: &Value, out: &mut String) -> Res<()> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(pipe) => match eval_pipe(pipe, dot)? {
                Value::Null => out.push_str("<no value>"),
                v => out.push_str(&fmt_value(&v)),
            },
            Node::If(pipe, body, alt) => {
                let cond = truthy(&eval_pipe(pipe, dot)?);
                exec(if cond { body } else { alt }, dot, out)?;
            }
            Node::Range(pipe, body, alt) => {
                let elems = match eval_pipe(pipe, dot)? {
                    Value::Array(a) => a,
                    Value::Object(m) => sorted(&m).into_iter().map(|(_, v)| v.clone()).collect(),
                    Value::Null => Vec::new(),
                    v => bail!("range can't iterate over {}", fmt_value(&v)),
                };
                if elems.is_empty() {
                    exec(alt, dot, out)?;
                }
                for elem in &elems {
                    exec(body, elem, out)?;
                }
            }
        }
    }
    Ok(())
}

fn header(nodes: &[Node], headers: &HashMap<&str, &str>, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(pipe) => {
                let field = pipe.iter().flatten().find_map(|a| match a {
                    Arg::Field(p) => Some(p),
                    _ => None,
                });
                if let Some(path) = field {
                    let upper = path.last().map(|s| s.to_uppercase()).unwrap_or_default();
                    out.push_str(
                        headers
                            .get(path.join(".").as_str())
                            .copied()
                            .unwrap_or(&upper),
                    );
                }
            }
            Node::If(_, body, _) | Node::Range(_, body, _) => header(body, headers, out),
        }
    }
}

// ---------------------------------------------------------------- public API

/// A parsed Docker `--format` template.
#[derive(Debug, Clone)]
pub struct Template {
    table: bool,
    nodes: Vec<Node>,
}

impl Template {
    /// Parse a Docker --format string. A leading "table" (alone, or "table "
    /// followed by a template) marks table mode. As Docker does, surrounding
    /// spaces are trimmed and a literal `\t` / `\n` in text becomes tab / newline.
    pub fn parse(src: &str) -> Result<Template, Error> {
        let (table, body) = match src.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => (true, rest),
            _ => (false, src),
        };
        match parse_list(&mut lex(body.trim_matches(' '))?.into_iter())? {
            (nodes, Stop::Eof) => Ok(Template { table, nodes }),
            (_, Stop::End) => Err(err("unexpected {{end}}")),
            (_, Stop::Else) => Err(err("unexpected {{else}}")),
        }
    }

    pub fn is_table(&self) -> bool {
        self.table
    }

    /// Render one value (one row / one object). Missing fields and nulls
    /// render as `<no value>`, like Go's.
    pub fn render(&self, v: &Value) -> Result<String, Error> {
        let mut out = String::new();
        exec(&self.nodes, v, &mut out)?;
        Ok(out)
    }

    /// The table header row: each action shows `headers[path]` for the first
    /// field it references (path like `ID` or `State.Status`), else that
    /// field's last segment upper-cased. Literal text is kept; the bodies of
    /// `if`/`range` are rendered once, their `else` branches not at all.
    pub fn render_header(&self, headers: &HashMap<&str, &str>) -> String {
        let mut out = String::new();
        header(&self.nodes, headers, &mut out);
        out
    }
}

/// Align tab-separated rows like Go's `tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)`:
/// each cell but the last of a line is padded to `max(widest cell + 3, 10)`
/// chars for its column. Returns the lines, each followed by `\n`.
pub fn tabwrite(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .flat_map(|l| l.split('\n'))
        .map(|l| l.split('\t').collect())
        .collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let width = (widths[i] + 3).max(10);
                out.push_str(&" ".repeat(width - cell.chars().count()));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Value {
        json!({
            "ID": "0123456789abcdef0123456789abcdef", "Name": "web", "N": 42, "F": 1.5, "G": 2.0,
            "Up": true, "Nil": null, "Args": ["sh", "-c", "ls"], "Labels": {"com.x": "yes", "b": 2},
            "State": {"Status": "running", "Pid": 7}, "Config": {"b": [true, null], "a": 1},
            "Ports": [{"P": 80, "T": "tcp"}, {"P": 53, "T": "udp"}], "Empty": [],
            "Mixed": ["a", 1, null], "Nest": {"k2": {"x": 1}, "k1": "v1"}, "S": "hi wORLD-foo_bar",
        })
    }

    /// Renders each template against `data()` and compares with the expected output.
    fn check(cases: &[(&str, &str)]) {
        let d = data();
        for (tpl, want) in cases {
            let got = Template::parse(tpl).and_then(|t| t.render(&d));
            assert_eq!(
                got.map_err(|e| e.0).as_deref(),
                Ok(*want),
                "template {tpl:?}"
            );
        }
    }

    fn check_err(cases: &[(&str, &str)]) {
        let d = data();
        for (tpl, want) in cases {
            let got = Template::parse(tpl)
                .and_then(|t| t.render(&d))
                .map_err(|e| e.to_string());
            assert_eq!(got, Err(format!("template: {want}")), "template {tpl:?}");
        }
    }

    #[test]
    fn text_and_escapes() {
        check(&[
            ("plain", "plain"),
            (r"a\tb\nc", "a\tb\nc"),
            (r"{{.Name}}\t{{.N}}", "web\t42"),
            ("", ""),
        ]);
        check(&[("  {{.Name}}  ", "web")]); // Docker trims surrounding spaces
    }

    #[test]
    #[rustfmt::skip]
    fn fields_and_trim() {
        check(&[
            ("{{.Name}}", "web"),
            ("{{ .Name }}", "web"),
            ("{{.State.Status}}/{{.State.Pid}}", "running/7"),
            ("{{.Missing}} {{.Nil}} {{.Missing.Deeper}}", "<no value> <no value> <no value>"),
            ("a  \n {{- .Name -}} \n  b", "awebb"),
            ("a  {{- .Name}}  b", "aweb  b"),
            ("a  {{.Name -}}  b", "a  webb"),
            ("{{-3}}", "-3"), // not a trim marker
        ]);
        let t = Template::parse("{{.}}").expect("test value");
        assert_eq!(t.render(&json!("hello")).expect("test value"), "hello");
        assert_eq!(
            t.render(&json!({"b": "x", "a": 1})).expect("test value"),
            "map[a:1 b:x]"
        );
    }

    #[test]
    fn values_and_literals() {
        check(&[
            ("{{.N}} {{.F}} {{.G}} {{.Up}}", "42 1.5 2 true"),
            ("{{.Mixed}} {{.Args}}", "[a 1 <nil>] [sh -c ls]"),
            ("{{.Nest}}", "map[k1:v1 k2:map[x:1]]"),
            (r#"{{"a\"b\\c\td"}}"#, "a\"b\\c\td"),
            (r#"{{"}}"}}"#, "}}"),
            ("{{12}} {{true}} {{false}}", "12 true false"),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn functions() {
        check(&[
            ("{{json .Config}}", r#"{"a":1,"b":[true,null]}"#),
            ("{{json .State}}", r#"{"Pid":7,"Status":"running"}"#),
            ("{{json .Name}} {{json .Missing}}", r#""web" null"#),
            (r#"{{join .Args " "}}|{{join .Args ","}}"#, "sh -c ls|sh,-c,ls"),
            (r#"{{index .Labels "com.x"}} {{index .Labels "no"}}"#, "yes <no value>"),
            (r#"{{index .Args 1}} {{index .Ports 1 "T"}}"#, "-c udp"),
            ("{{len .Args}} {{len .Labels}} {{len .Name}} {{len .Empty}}", "3 2 3 0"),
            ("{{truncate .ID 12}} {{truncate .Name 12}}", "0123456789ab web"),
            ("{{upper .S}}", "HI WORLD-FOO_BAR"),
            ("{{lower .S}}", "hi world-foo_bar"),
            ("{{title .S}}", "Hi WORLD-Foo_bar"),
            ("{{println .Name .N}}{{println}}", "web 42\n\n"),
            (r#"{{printf "%s:%d %v %q %%" .Name .N .Args .Up}}"#, r#"web:42 [sh -c ls] "true" %"#),
            (r#"{{printf "%q" "a\"b\tc"}}"#, r#""a\"b\tc""#),
            (r#"{{printf "%v %s" .F .Missing}}"#, "1.5 <nil>"),
            (r#"{{printf "%d-%d" .N}}"#, "42-%!d(MISSING)"),
            (r#"{{printf "%d" .Name}}{{printf "x" .N}}"#, "%!d(string=web)x%!(EXTRA number=42)"),
        ]);
        let v = json!({"o": {"<&>": 1.5}});
        assert_eq!(
            Template::parse("{{json .}}").expect("test value").render(&v).expect("test value"),
            r#"{"o":{"<&>":1.5}}"#
        );
    }

    #[test]
    fn pipelines() {
        check(&[
            ("{{.Name | upper}}", "WEB"),
            ("{{.Config | json}}", r#"{"a":1,"b":[true,null]}"#),
            (r#"{{.Name | upper | printf "<%s>"}}"#, "<WEB>"),
            (r#"{{"+" | join .Args}}"#, "sh+-c+ls"),
            (r#"{{.Args | len | printf "%d args"}}"#, "3 args"),
        ]);
    }

    #[test]
    fn if_else() {
        let t = Template::parse("{{if .X}}yes{{else}}no{{end}}").expect("test value");
        let (falsy, truthy) = (
            json!([false, 0, 0.0, "", null, [], {}]),
            json!([true, 1, -1, "a", [0], {"a": 0}]),
        );
        for (values, want) in [(falsy, "no"), (truthy, "yes")] {
            for x in values.as_array().expect("test value") {
                assert_eq!(t.render(&json!({ "X": x })).expect("test value"), want, "{x}");
            }
        }
        assert_eq!(t.render(&json!({})).expect("test value"), "no");
        check(&[("{{if .Up}}up{{end}}", "up"), ("{{if .Nil}}up{{end}}", "")]);
    }

    #[test]
    #[rustfmt::skip]
    fn range_and_nesting() {
        check(&[
            ("{{range .Args}}[{{.}}]{{end}}", "[sh][-c][ls]"),
            ("{{range .Ports}}{{.P}}/{{.T}} {{end}}", "80/tcp 53/udp "),
            ("{{range .Labels}}{{.}},{{end}}", "2,yes,"), // map values in key order
            ("{{range .Empty}}x{{else}}empty{{end}}{{range .Missing}}x{{end}}", "empty"),
            ("{{range .Ports}}{{if .T}}{{range .}}{{.}}.{{end}}{{end}}{{end}}", "80.tcp.53.udp."),
        ]);
        let v = json!({"G": [{"N": "a", "M": [1, 2]}, {"N": "b", "M": []}]});
        let t = Template::parse(
            r"{{range .G}}{{.N}}:{{if .M}}{{range .M}} {{.}}{{end}}{{else}} -{{end}}\n{{end}}",
        );
        assert_eq!(t.expect("test value").render(&v).expect("test value"), "a: 1 2\nb: -\n");
    }

    #[test]
    fn table_mode_and_headers() {
        assert!(Template::parse("table").expect("test value").is_table());
        assert!(Template::parse("table {{.ID}}").expect("test value").is_table());
        assert!(!Template::parse("{{.ID}}").expect("test value").is_table());
        assert!(!Template::parse("tablet").expect("test value").is_table());
        let h = HashMap::from([("ID", "CONTAINER ID"), ("Names", "NAMES")]);
        let t = Template::parse(r"table {{.ID}}\t{{.Names}}").expect("test value");
        assert_eq!(t.render_header(&h), "CONTAINER ID\tNAMES");
        assert_eq!(
            t.render(&json!({"ID": "abc", "Names": "web"})).expect("test value"),
            "abc\tweb"
        );
        let t = Template::parse(r"table {{truncate .ID 4}}\t{{.State.Status}}: {{.Size | upper}}")
            .expect("test value");
        assert_eq!(t.render_header(&h), "CONTAINER ID\tSTATUS: SIZE");
        assert_eq!(Template::parse("table").expect("test value").render_header(&h), "");
    }

    #[test]
    fn tabwrite_alignment() {
        let rows = ["CONTAINER ID\tIMAGE\tNAMES", "abc\tbusybox\tweb"].map(String::from);
        assert_eq!(
            tabwrite(&rows),
            "CONTAINER ID   IMAGE     NAMES\nabc            busybox   web\n"
        );
        let rows = ["a\tb", "ccc", "dd\te\tf", "ü\tx\n1\t2"].map(String::from);
        let want = "a         b\nccc\ndd        e         f\nü         x\n1         2\n";
        assert_eq!(tabwrite(&rows), want);
        assert_eq!(tabwrite(&[]), "");
    }

    #[test]
    #[rustfmt::skip]
    fn errors() {
        check_err(&[
            ("{{foo .Name}}", r#"unknown function "foo""#),
            ("{{.Name | bar}}", r#"unknown function "bar""#),
            ("abc {{.Name", "unclosed action"),
            (r#"{{"abc}}"#, "unterminated quoted string"),
            (r#"{{"\x"}}"#, r"invalid escape \x in string"),
            ("{{.Name.First}}", "can't evaluate field First in type string"),
            ("{{.Args.X}}", "can't evaluate field X in type array"),
            ("{{if .X}}a", "unexpected EOF: {{if}} without {{end}}"),
            ("{{range .X}}a{{else}}", "unexpected EOF: {{range}} without {{end}}"),
            ("a{{end}}", "unexpected {{end}}"),
            ("a{{else}}", "unexpected {{else}}"),
            ("{{if .A}}{{end .B}}", "unexpected tokens after {{end}}"),
            ("{{}}", "missing value for command"),
            ("{{if}}{{end}}", "missing value for if"),
            ("{{.Name |}}", "missing command in pipeline"),
            ("{{.Name .N}}", "can't give argument to non-function .Name"),
            ("{{.Name | .N}}", "can't give argument to non-function .N"),
            ("{{json .A .B}}", "wrong number of args for json: want 1 got 2"),
            ("{{join .Name \",\"}}", "join: expected array, got string"),
            ("{{upper .N}}", "upper: expected string, got number"),
            ("{{truncate .Name -1}}", "truncate: length must be an integer ≥ 0"),
            ("{{index .Args 9}}", "index: index out of range: 9"),
            ("{{index .Name 0}}", "index: can't index string with number"),
            ("{{printf .N}}", "printf: format must be a string"),
            (r#"{{printf "%x" .N}}"#, "printf: unsupported verb %x"),
            ("{{range .Name}}{{end}}", "range can't iterate over web"),
            ("{{.Name ; }}", "unexpected ';' in action"),
            ("{{ñ .Name}}", r#"unknown function "ñ""#),
            ("{{.A..B}}", r#"bad field name ".A..B""#),
            ("{{12x}}", r#"bad number syntax: "12x""#),
        ]);
        let boxed: Box<dyn std::error::Error> = Box::new(Error("template: x".into()));
        assert_eq!(boxed.to_string(), "template: x");
    }
}
