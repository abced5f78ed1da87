//! The node templates (`overlays/node/*.j2`, embedded) and their rendering with minijinja.
//!
//! Values reach templates as data, never as template source, so `{{ }}` inside an overlay file or
//! a cloud-init `## template: jinja` part is copied through untouched. Undefined values are errors
//! (strict mode): a template that names a value we do not provide fails with the template's name,
//! the line and the missing name instead of rendering an empty string into a unit file.
//!
//! Every `{{ value }}` is escaped for the language of the file it lands in, by construction
//! ([`Language::of`], from the template's name): shell scripts get each character that means
//! something to the shell backslash-escaped (safe inside double quotes and outside them alike),
//! YAML gets a quoted scalar unless the value is a plain word, and every other file (units,
//! drop-ins, fstab, sshd_config) refuses control characters, so one value can never become two
//! lines. `| sh` and `| yaml` mark their output as already escaped.

use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior, Value};

use super::yaml;
use crate::stock;

/// The stock overlay folder holding the node templates.
pub const STOCK_DIR: &str = "node";

/// Why a template did not render.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error(
        "template {name} is missing (neither the profile's cloud-init.templates folder nor imgbuild has it)"
    )]
    Missing { name: String },
    #[error("template {name} is not UTF-8 text")]
    NotText { name: String },
    #[error("{}", render_message(.name, *.line, .detail, .missing.as_deref()))]
    Render {
        /// The template's file name (`user-data.j2`).
        name: String,
        /// Where the error is, 1-based.
        line: Option<usize>,
        detail: String,
        /// The undefined value the template used, when that was the problem.
        missing: Option<String>,
    },
}

fn render_message(name: &str, line: Option<usize>, detail: &str, missing: Option<&str>) -> String {
    let at = match line {
        Some(l) => format!("{name}:{l}"),
        None => name.to_string(),
    };
    match missing {
        Some(var) => format!(
            "template {at}: `{var}` is not defined\n  help: the values a template can use are listed in overlays/node/README.md; fix the name or remove it"
        ),
        None => format!("template {at}: {detail}"),
    }
}

/// The template set: the stock templates, with a profile's own templates (by file name) taking
/// their place.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    overrides: BTreeMap<String, String>,
}

impl Templates {
    /// Only the stock templates.
    pub fn stock() -> Self {
        Templates::default()
    }

    /// The stock templates, with `overrides` (file name → source) replacing those of the same name.
    pub fn with_overrides(overrides: BTreeMap<String, String>) -> Self {
        Templates { overrides }
    }

    /// Names of the overriding templates (for messages).
    pub fn overridden(&self) -> impl Iterator<Item = &str> {
        self.overrides.keys().map(String::as_str)
    }

    fn source(&self, name: &str) -> Result<String, TemplateError> {
        if let Some(s) = self.overrides.get(name) {
            return Ok(s.clone());
        }
        let file = stock::overlay(STOCK_DIR)
            .and_then(|d| d.get_file(format!("{STOCK_DIR}/{name}")))
            .ok_or_else(|| TemplateError::Missing {
                name: name.to_string(),
            })?;
        file.contents_utf8()
            .map(str::to_string)
            .ok_or_else(|| TemplateError::NotText {
                name: name.to_string(),
            })
    }

    /// Renders template `name` with `ctx`.
    pub fn render(&self, name: &str, ctx: &serde_json::Value) -> Result<String, TemplateError> {
        let source = self.source(name)?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.add_filter("yaml", yaml_filter);
        env.add_filter("sh", sh_filter);
        env.set_auto_escape_callback(|name| AutoEscape::Custom(Language::of(name).name()));
        env.set_formatter(escape_formatter);
        env.add_template_owned(name.to_string(), source.clone())
            .map_err(|e| render_error(name, &source, &e))?;
        let tmpl = env
            .get_template(name)
            .map_err(|e| render_error(name, &source, &e))?;
        tmpl.render(Value::from_serialize(ctx))
            .map_err(|e| render_error(name, &source, &e))
    }
}

/// Turns a minijinja error into one that names the template, the line and, for an undefined
/// value, the expression that was undefined (read from the template source at the error span).
fn render_error(name: &str, source: &str, e: &minijinja::Error) -> TemplateError {
    let line = e.line();
    let missing = (e.kind() == ErrorKind::UndefinedError)
        .then(|| e.range())
        .flatten()
        .and_then(|r| undefined_expr(source, r))
        .filter(|s| !s.is_empty());
    TemplateError::Render {
        name: name.to_string(),
        line,
        detail: e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_string),
        missing,
    }
}

/// The expression an undefined-value error is about. For a filter that refused an undefined
/// input, minijinja points at the filter's name; the expression is what is piped into it.
fn undefined_expr(source: &str, range: std::ops::Range<usize>) -> Option<String> {
    let at = source.get(range.clone())?;
    let before = source.get(..range.start)?;
    let piped = before.trim_end().strip_suffix('|');
    match piped {
        Some(head) => {
            let open = head.rfind("{{").max(head.rfind("{%")).map_or(0, |i| i + 2);
            Some(head[open..].trim().to_string())
        }
        None => Some(at.trim().to_string()),
    }
}

/// `{{ v | yaml }}`: a YAML scalar that reads back as exactly this string (or number/bool for
/// those types); `{{ v | yaml(N) }}` may use a literal block indented by N spaces for multi-line
/// text.
fn yaml_filter(v: &Value, indent: Option<usize>) -> Result<Value, minijinja::Error> {
    defined(v)?;
    let json: serde_json::Value = serde_json::to_value(v).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("yaml filter: {e}"))
    })?;
    let text = match (&json, indent) {
        (serde_json::Value::String(s), Some(n)) => yaml::block_or_quoted(s, n),
        _ => yaml::flow(&json),
    };
    Ok(Value::from_safe_string(text))
}

/// `{{ v | sh }}`: one single-quoted POSIX shell word.
fn sh_filter(v: &Value) -> Result<Value, minijinja::Error> {
    defined(v)?;
    let s = match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    };
    refuse_control(&s)?;
    Ok(Value::from_safe_string(shell_quote(&s)))
}

/// The language of a rendered file, which decides how `{{ value }}` is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// POSIX shell (scripts, and the `KEY="value"` defaults files they and systemd read).
    Shell,
    /// YAML (cloud-init user-data, meta-data, network-config, cloud.cfg).
    Yaml,
    /// Line-oriented config: systemd units and drop-ins, fstab, sshd_config.
    Lines,
}

impl Language {
    /// By template name: `*.sh.j2` and `*.defaults.j2` are shell; cloud-init's files are YAML.
    pub fn of(template: &str) -> Language {
        let stem = template.strip_suffix(".j2").unwrap_or(template);
        if stem.ends_with(".sh") || stem.ends_with(".defaults") {
            Language::Shell
        } else if stem.ends_with(".yaml")
            || stem.ends_with(".cfg")
            || ["user-data", "meta-data", "network-config", "vendor-data"].contains(&stem)
        {
            Language::Yaml
        } else {
            Language::Lines
        }
    }

    fn name(self) -> &'static str {
        match self {
            Language::Shell => "sh",
            Language::Yaml => "yaml",
            Language::Lines => "lines",
        }
    }
}

/// Writes `{{ value }}` escaped for the template's language (see the module doc).
fn escape_formatter(
    out: &mut minijinja::Output<'_>,
    state: &State<'_, '_>,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::from(ErrorKind::UndefinedError));
    }
    let text = match value.as_str() {
        Some(s) => s.to_string(),
        None if value.is_none() => String::new(),
        None => value.to_string(),
    };
    let escaped = if value.is_safe() {
        text
    } else {
        refuse_control(&text)?;
        match state.auto_escape() {
            AutoEscape::Custom("sh") => shell_escape_chars(&text),
            AutoEscape::Custom("yaml") if !is_plain_yaml(&text) => {
                yaml::flow(&serde_json::Value::String(text))
            }
            _ => text,
        }
    };
    out.write_str(&escaped)
        .map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string()))
}

/// A value with a control character (a newline above all) would become two lines of a unit,
/// two `authorized_keys` entries or two shell commands: refuse it.
fn refuse_control(s: &str) -> Result<(), minijinja::Error> {
    match s.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "the value {s:?} holds the control character {c:?}, which would split or corrupt the line it is written into; remove it"
            ),
        )),
    }
}

/// Backslash before every character the shell treats specially, so the value is literal text
/// both outside quotes and inside double quotes (`$`, `` ` ``, `"` and `\` included).
pub fn shell_escape_chars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c.is_ascii_alphanumeric() || "-_./:,=@+%".contains(c)) {
            out.push('\\');
        }
        out.push(c);
    }
    if out.is_empty() {
        "''".to_string()
    } else {
        out
    }
}

/// A string YAML reads back as itself without quotes: words of safe characters, single spaces
/// between them, that are not a keyword, number or other typed scalar.
fn is_plain_yaml(s: &str) -> bool {
    !s.is_empty()
        && !s.ends_with(' ')
        && !s.contains("  ")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./ ".contains(&b))
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'/')
        && ![
            "true", "false", "yes", "no", "on", "off", "null", "y", "n", "~",
        ]
        .contains(&s.to_ascii_lowercase().as_str())
}

/// Strict mode lets undefined values into filters; ours refuse them like printing would.
fn defined(v: &Value) -> Result<(), minijinja::Error> {
    if v.is_undefined() {
        return Err(minijinja::Error::from(ErrorKind::UndefinedError));
    }
    Ok(())
}

/// Quotes `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_stock_template_is_text() {
        let dir = stock::overlay(STOCK_DIR).expect("overlays/node is embedded");
        let mut n = 0;
        for f in dir.files() {
            assert!(f.contents_utf8().is_some(), "{:?}", f.path());
            n += 1;
        }
        assert!(n > 10);
    }

    #[test]
    fn values_are_data_not_template_source() {
        let t = Templates::with_overrides(BTreeMap::from([(
            "t.j2".to_string(),
            "a: {{ v | yaml }}\nb: {{ s | sh }}\n".to_string(),
        )]));
        let out = t
            .render(
                "t.j2",
                &json!({ "v": "{{ v1.instance_id }}", "s": "it's {{ x }}" }),
            )
            .unwrap();
        assert_eq!(out, "a: \"{{ v1.instance_id }}\"\nb: 'it'\\''s {{ x }}'\n");
    }

    #[test]
    fn undefined_value_names_template_line_and_value() {
        let t = Templates::with_overrides(BTreeMap::from([(
            "user-data.j2".to_string(),
            "#cloud-config\nhostname: {{ node.hostname }}\nfqdn: {{ node.fqdn }}\n".to_string(),
        )]));
        let err = t
            .render("user-data.j2", &json!({ "node": { "hostname": "a" } }))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("user-data.j2:3"), "{msg}");
        assert!(msg.contains("`node.fqdn` is not defined"), "{msg}");
        // Through a filter, too.
        for filter in ["yaml", "sh"] {
            let t = Templates::with_overrides(BTreeMap::from([(
                "f.j2".to_string(),
                format!("a\nb: {{{{ node.zone | {filter} }}}}\n"),
            )]));
            let msg = t
                .render("f.j2", &json!({ "node": {} }))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("f.j2:2: `node.zone` is not defined"), "{msg}");
        }
    }

    #[test]
    fn syntax_error_names_the_template() {
        let t = Templates::with_overrides(BTreeMap::from([(
            "x.j2".to_string(),
            "ok\n{% if %}\n".to_string(),
        )]));
        let msg = t.render("x.j2", &json!({})).unwrap_err().to_string();
        assert!(msg.starts_with("template x.j2:2:"), "{msg}");
        assert!(matches!(
            Templates::stock().render("nope.j2", &json!({})),
            Err(TemplateError::Missing { .. })
        ));
    }

    #[test]
    fn values_are_escaped_for_the_language_of_their_file() {
        let hostile = "$(touch /tmp/pwned) `id` \"x\" 'y' a;b|c&d";
        let render = |name: &str, src: &str, v: &str| {
            Templates::with_overrides(BTreeMap::from([(name.to_string(), src.to_string())]))
                .render(name, &json!({ "v": v }))
        };
        // Shell: the value is literal inside double quotes and outside them.
        let out = render(
            "t.sh.j2",
            "echo \"in {{ v }}\"\necho out {{ v }}\n",
            hostile,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let got = std::process::Command::new("sh")
            .arg("-c")
            .arg(&out)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(got.status.success(), "{out}");
        let stdout = String::from_utf8(got.stdout).unwrap();
        assert_eq!(
            stdout.lines().nth(1),
            Some(format!("out {hostile}").as_str()),
            "{out}"
        );
        // Inside double quotes the value stays literal too (shown with its backslashes).
        assert!(stdout.starts_with("in $\\(touch"), "{stdout}");
        assert!(!stdout.contains("uid="), "{stdout}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        // YAML: quoted when it must be, plain when it can be.
        for (name, src, v, want) in [
            ("user-data.j2", "a: {{ v }}\n", "pi-1", "a: pi-1\n"),
            ("user-data.j2", "a: {{ v }}\n", "yes", "a: \"yes\"\n"),
            (
                "user-data.j2",
                "# {{ v }}\n",
                "First seed",
                "# First seed\n",
            ),
            ("user-data.j2", "a: {{ v }}\n", "a #b", "a: \"a #b\"\n"),
            ("meta-data.j2", "a: {{ v }}\n", "x: y", "a: \"x: y\"\n"),
        ] {
            assert_eq!(render(name, src, v).unwrap(), want, "{v:?}");
        }
        // Every language: no control characters.
        for name in ["t.sh.j2", "user-data.j2", "k3s.service.j2", "fstab.j2"] {
            let err = render(name, "X={{ v }}\n", "a\nExecStartPre=/bin/evil").unwrap_err();
            assert!(
                err.to_string().contains("control character"),
                "{name}: {err}"
            );
            let err = render(name, "X={{ v | sh }}\n", "a\rb").unwrap_err();
            assert!(
                err.to_string().contains("control character"),
                "{name}: {err}"
            );
        }
        assert_eq!(
            render("k3s.service.j2", "X={{ v }}\n", "a b").unwrap(),
            "X=a b\n"
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("tag:k3s,tag:b"), "tag:k3s,tag:b");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }
}
