//! Rendering (feature `rl`): the Jinja environment, the model's templates, compilation.

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, Output, State, Value as JValue};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::rl::data::Message;

/// A template's text and where it came from.
#[derive(Debug, Clone)]
pub struct TemplateSource {
    /// `default` for the model's main template, else its name.
    pub name: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// Where in that file (`chat_template` field of a JSON file), empty for a Jinja file.
    pub field: String,
    pub source: String,
}

impl TemplateSource {
    /// Reads a Jinja file.
    pub fn from_file(path: &Path, name: &str) -> Result<TemplateSource> {
        // A FIFO or device is refused, not waited on.
        let source = crate::io::read_text(path, 16 << 20)?;
        Ok(TemplateSource {
            name: name.into(),
            path: path.to_path_buf(),
            field: String::new(),
            source,
        })
    }

    /// An error about this template, naming its file (and field).
    fn error(&self, msg: impl std::fmt::Display) -> Error {
        if self.field.is_empty() {
            Error::format(&self.path, format!("chat template: {msg}"))
        } else {
            Error::format(&self.path, format!("{}: {msg}", self.field))
        }
    }
}

/// The chat templates of a model folder (see the module docs for where they are looked for), in
/// transformers' order of precedence. Empty when the model has none.
pub fn model_templates(
    dir: &Path,
    tokenizer_config: Option<&Value>,
) -> Result<Vec<TemplateSource>> {
    let mut found = Vec::new();
    let main = dir.join("chat_template.jinja");
    if main.is_file() {
        found.push(TemplateSource::from_file(&main, "default")?);
    }
    let extra = dir.join("additional_chat_templates");
    if extra.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&extra)
            .map_err(|e| Error::io(&extra, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jinja") && p.is_file())
            .collect();
        files.sort();
        for p in files {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            found.push(TemplateSource::from_file(&p, &name)?);
        }
    }
    if !found.is_empty() {
        return Ok(found);
    }
    let path = dir.join("tokenizer_config.json");
    let bad = |msg: &str| Error::format(&path, format!("field 'chat_template': {msg}"));
    let entry = |name: &str, source: &str, field: String| TemplateSource {
        name: name.into(),
        path: path.clone(),
        field,
        source: source.into(),
    };
    match tokenizer_config.and_then(|c| c.get("chat_template")) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => found.push(entry("default", s, "chat_template".into())),
        Some(Value::Array(list)) => {
            for (i, t) in list.iter().enumerate() {
                let name = t.get("name").and_then(Value::as_str);
                let source = t.get("template").and_then(Value::as_str);
                match (name, source) {
                    (Some(n), Some(s)) => {
                        found.push(entry(n, s, format!("chat_template '{n}'")));
                    }
                    _ => {
                        return Err(bad(&format!(
                            "entry {i} is not {{\"name\": string, \"template\": string}}"
                        )))
                    }
                }
            }
        }
        Some(_) => return Err(bad("neither a string nor a list of named templates")),
    }
    Ok(found)
}

/// The default one of `templates` (the one named `default`; a single one is always named so).
pub fn default_template(
    templates: &[TemplateSource],
) -> std::result::Result<&TemplateSource, String> {
    templates
        .iter()
        .find(|t| t.name == "default")
        .ok_or_else(|| {
            let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
            format!(
                "the model has {} chat templates ({}) and none named 'default'; choose one by \
                 name or give a template file",
                templates.len(),
                names.join(", ")
            )
        })
}

/// A compiled chat template with the tokenizer's special-token variables.
pub struct ChatTemplate {
    source: TemplateSource,
    env: Environment<'static>,
    /// `bos_token` etc., passed to every rendering.
    special_tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.source.name)
            .field("path", &self.source.path)
            .finish()
    }
}

/// The template's name inside the environment; render errors say "(line N)".
const TEMPLATE_NAME: &str = "chat_template";

/// Templates come with downloaded models, so a rendering is bounded: this much work (minijinja's
/// fuel: about one unit per instruction and per 64 bytes of data a template creates; a real
/// chat template spends well under 1 % of it on a long conversation) …
pub const MAX_FUEL: u64 = 20_000_000;
/// … at most this much text …
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// … and this much time; Ctrl-C (the cancel token) stops it at once.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

thread_local! {
    /// When the rendering on this thread must stop (checked by `range`, the formatter and the
    /// output writer, so that loops are interruptible).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Why a rendering was stopped from outside the template (a limit or a signal).
const STOPPED: &str = "warp stopped the template: ";

/// Errors when the rendering on this thread ran past its time limit or was cancelled.
fn check_limits() -> std::result::Result<(), minijinja::Error> {
    if crate::interrupt::requested() {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("{STOPPED}interrupted"),
        ));
    }
    if DEADLINE.get().is_some_and(|d| Instant::now() >= d) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "{STOPPED}it ran longer than the limit of {} s",
                TIME_LIMIT.as_secs()
            ),
        ));
    }
    Ok(())
}

/// minijinja's `range`, checking the time limit and the cancel token at every call (loops over
/// ranges are the way a template spins).
fn limited_range(
    lower: isize,
    upper: Option<isize>,
    step: Option<isize>,
) -> std::result::Result<JValue, minijinja::Error> {
    check_limits()?;
    minijinja::functions::range(lower, upper, step)
}

/// The output of a rendering, refusing to grow past [`MAX_OUTPUT_BYTES`].
struct Bounded {
    text: Vec<u8>,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        if check_limits().is_err() {
            return Err(std::io::Error::other("stopped"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error names the template's file (and field) and line.
    pub fn new(
        source: TemplateSource,
        special_tokens: &[(String, String)],
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Internal(format!("Jinja syntax settings: {e}")))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_formatter(python_formatter);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(MAX_FUEL));
        env.add_function("range", limited_range);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(&source.source))
            .map_err(|e| source.error(describe(&e)))?;
        Ok(ChatTemplate {
            source,
            env,
            special_tokens: special_tokens.to_vec(),
        })
    }

    /// A smaller work budget (tests: many renderings that each hit it).
    #[cfg(test)]
    fn with_fuel(mut self, fuel: u64) -> ChatTemplate {
        self.env.set_fuel(Some(fuel));
        self
    }

    /// Where the template came from.
    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// The text of `messages`, with the header of an assistant turn appended when
    /// `add_generation_prompt`. An error (the template raised one, or failed on the input) names
    /// the template's file and line.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut ctx: Vec<(String, JValue)> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), JValue::from(v.as_str())))
            .collect();
        let msgs: Vec<JValue> = messages
            .iter()
            .map(|m| to_jinja(&Value::Object(alias_reasoning(m))))
            .collect();
        ctx.push(("messages".into(), JValue::from(msgs)));
        ctx.push((
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        ));
        // transformers passes these as None, so `tools is none` holds.
        ctx.push(("tools".into(), JValue::from(())));
        ctx.push(("documents".into(), JValue::from(())));
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Internal(format!("compiled chat template missing: {e}")))?;
        let mut out = Bounded {
            text: Vec::new(),
            over: false,
        };
        let deadline = Instant::now() + TIME_LIMIT;
        DEADLINE.set(Some(deadline));
        let r = tmpl
            .render_captured_to(JValue::from_pairs(ctx), &mut out)
            .map(|_| ());
        DEADLINE.set(None);
        if let Err(e) = r {
            if crate::interrupt::requested() {
                return Err(Error::Interrupted);
            }
            if out.over {
                return Err(self.source.error(format!(
                    "the template's output grew past the limit of {} MiB; not rendered",
                    MAX_OUTPUT_BYTES >> 20
                )));
            }
            if Instant::now() >= deadline {
                return Err(self.source.error(format!(
                    "{STOPPED}it ran longer than the limit of {} s; not rendered",
                    TIME_LIMIT.as_secs()
                )));
            }
            if e.kind() == ErrorKind::OutOfFuel {
                return Err(self.source.error(format!(
                    "the template did more work than a chat template needs (the limit is {} \
                     million steps of minijinja's fuel): a loop that runs too long, or data \
                     that grows too large; not rendered",
                    MAX_FUEL / 1_000_000
                )));
            }
            return Err(self.source.error(describe(&e)));
        }
        String::from_utf8(out.text).map_err(|e| self.source.error(format!("output: {e}")))
    }
}

/// One line for a Jinja error: what went wrong and where; `raise_exception` says so.
fn describe(e: &minijinja::Error) -> String {
    let what = match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) if d.starts_with(STOPPED) => d.to_string(),
        (ErrorKind::InvalidOperation, Some(d)) if d.starts_with(RAISED) => {
            format!("the template raised an error: {}", &d[RAISED.len()..])
        }
        (k, Some(d)) => format!("{k}: {d}"),
        (k, None) => k.to_string(),
    };
    match e.line() {
        Some(l) if e.name().is_some() => format!("{what} (line {l})"),
        _ => what,
    }
}

const RAISED: &str = "raise_exception: ";

fn raise_exception(msg: String) -> std::result::Result<JValue, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// transformers copies a message's reasoning into both `reasoning_content` and `thinking`
/// (whichever of `reasoning_content`, `thinking`, `reasoning` is set first), so templates that
/// read either name see it.
fn alias_reasoning(m: &Message) -> Message {
    let Some(r) = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|k| m.get(*k).filter(|v| !v.is_null()).cloned())
    else {
        return m.clone();
    };
    let mut out = Message::new();
    out.insert("thinking".into(), r.clone());
    for (k, v) in m {
        out.insert(k.clone(), v.clone());
    }
    out.insert("reasoning_content".into(), r);
    out
}

/// transformers' `{% generation %}…{% endgeneration %}` renders its body unchanged; minijinja has
/// no such tag, so each becomes an always-true `if` with the same whitespace control.
fn rewrite_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        match generation_tag(tag) {
            Some((len, replacement)) => {
                out.push_str(&replacement);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `{%[-+] generation [-+]%}` or `endgeneration` at the start of `tag`: its length and the
/// replacement tag.
fn generation_tag(tag: &str) -> Option<(usize, String)> {
    let b = tag.as_bytes();
    let mut i = 2;
    let open = match b.get(i) {
        Some(b'-') | Some(b'+') => {
            i += 1;
            &tag[2..3]
        }
        _ => "",
    };
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    let start = i;
    while b.get(i).is_some_and(u8::is_ascii_alphabetic) {
        i += 1;
    }
    let word = match &tag[start..i] {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return None,
    };
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    let close = match b.get(i) {
        Some(b'-') | Some(b'+') => {
            i += 1;
            &tag[i - 1..i]
        }
        _ => "",
    };
    tag[i..]
        .starts_with("%}")
        .then(|| (i + 2, format!("{{%{open} {word} {close}%}}")))
}

/// JSON (as parsed from a prompt file) to a template value; objects keep their key order.
fn to_jinja(v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                JValue::from(i)
            } else if let Some(u) = n.as_u64() {
                JValue::from(u)
            } else {
                JValue::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => JValue::from(s.as_str()),
        Value::Array(a) => JValue::from(a.iter().map(to_jinja).collect::<Vec<_>>()),
        Value::Object(m) => JValue::from_pairs(m.iter().map(|(k, v)| (k.as_str(), to_jinja(v)))),
    }
}

fn write_failed(_: std::fmt::Error) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::WriteFailure, "cannot write the output")
}

/// `{{ x }}` as Python's Jinja prints it: `None`, `True`, `False`, Python's float repr, and
/// lists/dicts as their Python repr; everything else as minijinja prints it.
fn python_formatter(
    out: &mut Output,
    state: &mut State,
    v: &JValue,
) -> std::result::Result<(), minijinja::Error> {
    check_limits()?;
    match v.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            py_repr(v, &mut s);
            out.write_str(&s).map_err(write_failed)
        }
        _ => minijinja::escape_formatter(out, state, v),
    }
}

/// Python's `repr` of a template value (strings quoted as Python quotes them).
fn py_repr(v: &JValue, out: &mut String) {
    match v.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&py_number(v)),
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            for (i, x) in v.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&x, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, k) in v.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&k, out);
                out.push_str(": ");
                py_repr(&v.get_item(&k).unwrap_or_default(), out);
            }
            out.push('}');
        }
        ValueKind::Undefined => {}
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// An integer as is, a float as Python's `repr` writes it (`1.0`, `1e-05`, `1e+16`).
fn py_number(v: &JValue) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    match f64::try_from(v.clone()) {
        Ok(x) => py_float(x),
        Err(_) => v.to_string(),
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip (as Rust's), in scientific
/// notation when the decimal exponent is below -4 or at least 16.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    if !(-4..16).contains(&exp) {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{m}e{es}{:02}", exp.abs());
    }
    if exp >= 0 {
        let int_len = exp as usize + 1;
        if digits.len() > int_len {
            format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
        } else {
            format!("{sign}{digits}{}.0", "0".repeat(int_len - digits.len()))
        }
    } else {
        format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
    }
}

/// Settings of the `tojson` filter (Python's `json.dumps` keywords).
struct JsonStyle {
    ensure_ascii: bool,
    /// `None`: one line.
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `x | tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`: the text of
/// Python's `json.dumps` with those settings (transformers' override of Jinja's filter).
fn tojson(v: JValue, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<JValue> = kwargs.get("indent")?;
    let separators: Option<JValue> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(i) if i.is_none() => None,
        Some(i) if i.is_integer() => Some(" ".repeat(i.as_usize().unwrap_or(0))),
        Some(i) => match i.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators.filter(|s| !s.is_none()) {
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
        Some(s) => {
            let parts: Vec<String> = s
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    )
                })?;
            (parts[0].clone(), parts[1].clone())
        }
    };
    let style = JsonStyle {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    dump_json(&v, &style, 0, &mut out)?;
    Ok(out)
}

fn not_serializable(what: impl std::fmt::Display) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: {what} is not JSON serializable"),
    )
}

fn newline_indent(style: &JsonStyle, level: usize, out: &mut String) {
    if let Some(ind) = &style.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn dump_json(
    v: &JValue,
    style: &JsonStyle,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let s = py_number(v);
            out.push_str(match s.as_str() {
                "nan" => "NaN",
                "inf" => "Infinity",
                "-inf" => "-Infinity",
                s => s,
            });
        }
        ValueKind::String => json_str(v.as_str().unwrap_or_default(), style.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(style, level + 1, out);
                dump_json(x, style, level + 1, out)?;
            }
            newline_indent(style, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            // Python converts number/bool/None keys to strings; anything else is an error.
            let key_text = |k: &JValue| -> std::result::Result<String, minijinja::Error> {
                match k.kind() {
                    ValueKind::String => Ok(k.as_str().unwrap_or_default().to_string()),
                    ValueKind::Number => Ok(py_number(k)),
                    ValueKind::Bool => Ok(if k.is_true() { "true" } else { "false" }.into()),
                    ValueKind::None => Ok("null".into()),
                    other => Err(not_serializable(format!("a key of kind {other}"))),
                }
            };
            if style.sort_keys {
                keys.sort_by_key(|k| key_text(k).unwrap_or_default());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(style, level + 1, out);
                json_str(&key_text(k)?, style.ensure_ascii, out);
                out.push_str(&style.key_sep);
                dump_json(&v.get_item(k)?, style, level + 1, out)?;
            }
            newline_indent(style, level, out);
            out.push('}');
        }
        ValueKind::Undefined => return Err(not_serializable("an undefined value")),
        other => return Err(not_serializable(format!("a value of kind {other}"))),
    }
    Ok(())
}

/// A JSON string literal as Python's `json.dumps` writes it.
fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

extern "C" {
    /// POSIX: reads TZ (localtime_r need not).
    fn tzset();
}

/// `strftime_now(format)`: the local time formatted by the C library's `strftime`, as Python's
/// `datetime.now().strftime` does on Linux.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let fail =
        |m: &str| minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {m}"));
    let c_fmt = std::ffi::CString::new(format.as_str()).map_err(|_| fail("NUL in the format"))?;
    // SAFETY: `tm` is plain data filled by localtime_r; strftime writes at most `buf.len()` bytes
    // into `buf` and returns how many it wrote.
    unsafe {
        tzset();
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(fail("cannot read the local time"));
        }
        let mut buf = vec![0u8; 256 + 64 * format.len()];
        // 0 means an empty result (or one past the buffer, which 64 bytes per format byte
        // rules out in practice).
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c_fmt.as_ptr(), &tm);
        buf.truncate(n);
        String::from_utf8(buf).map_err(|_| fail("the formatted time is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(src: &str) -> Result<ChatTemplate> {
        let source = TemplateSource {
            name: "default".into(),
            path: PathBuf::from("tokenizer_config.json"),
            field: "chat_template".into(),
            source: src.into(),
        };
        ChatTemplate::new(source, &[("bos_token".into(), "<s>".into())])
    }

    fn user(text: &str) -> Vec<Message> {
        let mut m = Message::new();
        m.insert("role".into(), "user".into());
        m.insert("content".into(), text.into());
        vec![m]
    }

    /// The issue's template (three nested `range(100000)` loops) ends with the work limit's
    /// error at the full budget, and with output in the loops the output limit holds.
    #[test]
    fn endless_templates_end_with_a_clear_error() {
        let spin = "{% for a in range(100000) %}{% for b in range(100000) %}\
                    {% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
        let e = compiled(spin)
            .unwrap()
            .render(&user("x"), true)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("tokenizer_config.json") && msg.contains("limit"),
            "{msg}"
        );
        let grow = "{% for a in range(100000) %}{% for b in range(100000) %}\
                    {{ 'x' * 100000 }}{% endfor %}{% endfor %}";
        let msg = compiled(grow)
            .unwrap()
            .render(&user("x"), true)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("limit"), "{msg}");
        // A real template is far below the limits.
        let ok = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";
        assert_eq!(
            compiled(ok).unwrap().render(&user("hi"), false).unwrap(),
            "<s><user>hi"
        );
    }

    const FRAGMENTS: &[&str] = &[
        "{% for i in range(100000) %}",
        "{% for i in range(7) %}",
        "{% for i in range(-3, 1000000) %}",
        "{% for m in messages %}",
        "{% endfor %}",
        "{% if loop is defined and loop.index is even %}",
        "{% if true %}",
        "{% endif %}",
        "{% set s = 'ab' %}",
        "{% set s = s ~ s ~ s %}",
        "{{ s }}",
        "{{ 'xy' * 100000 }}",
        "{{ 'z' * 9999999999999 }}",
        "{{ messages[0].content * 1000 }}",
        "{{ range(100000)|list|length }}",
        "{{ range(100000)|sort|reverse|join(',') }}",
        "{{ messages|tojson }}",
        "{{ raise_exception('no') }}",
        "{{ bos_token }}",
        "{%",
        "}}",
        "text",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Random templates (loops, growth, recursion, broken syntax) never panic and never
        /// run past the limits: each ends with its text or a clear error.
        #[test]
        fn random_templates_end_without_panicking(
            parts in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..10)
        ) {
            let src: String = parts.concat();
            if let Ok(t) = compiled(&src) {
                let t = t.with_fuel(200_000);
                match t.render(&user("hello"), true) {
                    Ok(text) => proptest::prop_assert!(text.len() <= MAX_OUTPUT_BYTES),
                    Err(e) => proptest::prop_assert!(
                        e.to_string().contains("tokenizer_config.json"),
                        "{}", e
                    ),
                }
            }
        }
    }

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (123.456, "123.456"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1e15, "1000000000000000.0"),
            (-2.5e-7, "-2.5e-07"),
            (1.2345e100, "1.2345e+100"),
        ] {
            assert_eq!(py_float(x), want, "{x}");
        }
    }

    #[test]
    fn generation_tags_become_ifs() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}"
        );
        assert_eq!(
            rewrite_generation_tags("{% generations %}"),
            "{% generations %}"
        );
    }
}
