//! The node templates (`overlays/node/*.j2`, embedded) and their rendering with minijinja.
//!
//! Values reach templates as data, never as template source, so `{{ }}` inside an overlay file or
//! a cloud-init `## template: jinja` part is copied through untouched. Undefined values are errors
//! (strict mode): a template that names a value we do not provide fails with the template's name,
//! the line and the missing name instead of rendering an empty string into a unit file.

use std::collections::BTreeMap;

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

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
fn sh_filter(v: &Value) -> Result<String, minijinja::Error> {
    defined(v)?;
    let s = match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    };
    Ok(shell_quote(&s))
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
    fn shell_quoting() {
        assert_eq!(shell_quote("tag:k3s,tag:b"), "tag:k3s,tag:b");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }
}
