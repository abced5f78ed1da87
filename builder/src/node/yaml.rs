//! A small YAML writer for the config we generate (k3s `config.yaml`, cloud-config values).
//!
//! Every string is written quoted (JSON-style double quotes, which YAML 1.1 and 1.2 both read), so
//! no value can turn into a bool, number, null or date on the way (`on`, `no`, `0600`, `1e3`,
//! `2024-01-01`, `~` stay strings) — the classic YAML traps for k3s and cloud-init files. Multi-line
//! text may instead be a literal block scalar, which is byte-exact too.

use serde_json::Value;

/// A double-quoted YAML scalar for `s`.
pub fn quote(s: &str) -> String {
    let json = serde_json::to_string(s).expect("strings always serialise");
    // JSON leaves these unescaped, but YAML 1.1 treats them as line breaks or a BOM.
    if json.contains(['\u{85}', '\u{2028}', '\u{2029}', '\u{feff}']) {
        json.replace('\u{85}', "\\N")
            .replace('\u{2028}', "\\L")
            .replace('\u{2029}', "\\P")
            .replace('\u{feff}', "\\uFEFF")
    } else {
        json
    }
}

/// A flow-style YAML value: scalars, `[a, b]`, `{k: v}`.
pub fn flow(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", quote(k), flow(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// `s` as a literal block scalar (`|`, `|-` or `|+` by its trailing newlines) whose lines are
/// indented by `indent` spaces, when that reads back byte-exact; otherwise a quoted scalar.
pub fn block_or_quoted(s: &str, indent: usize) -> String {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let block_safe = s.contains('\n')
        && !body.is_empty()
        && !body.starts_with([' ', '\t', '\n'])
        && s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control())
        && !s.contains(['\u{85}', '\u{2028}', '\u{2029}', '\u{feff}']);
    if !block_safe {
        return quote(s);
    }
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let pad = " ".repeat(indent);
    let mut out = format!("|{chomp}");
    for line in s.split_inclusive('\n') {
        out.push('\n');
        let text = line.trim_end_matches('\n');
        if !text.is_empty() {
            out.push_str(&pad);
            out.push_str(text);
        }
    }
    out
}

/// A mapping key: plain when it cannot be read as anything but this string, quoted otherwise.
pub fn key(k: &str) -> String {
    const YAML11_WORDS: &[&str] = &[
        "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~",
    ];
    let plain = k.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.+".contains(&b))
        && !YAML11_WORDS.contains(&k.to_ascii_lowercase().as_str());
    if plain { k.to_string() } else { quote(k) }
}

/// A block mapping document: one `key: value` line per entry, lists as block sequences, other
/// values in flow style.
pub fn mapping(entries: &[(String, Value)]) -> String {
    let mut out = String::new();
    for (k, v) in entries {
        match v {
            Value::Array(items) if !items.is_empty() => {
                out.push_str(&format!("{}:\n", key(k)));
                for item in items {
                    out.push_str(&format!("  - {}\n", flow(item)));
                }
            }
            _ => out.push_str(&format!("{}: {}\n", key(k), flow(v))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_stay_strings() {
        for s in [
            "on",
            "no",
            "0600",
            "1e3",
            "~",
            "2024-01-01",
            "a: b",
            "#x",
            "- y",
        ] {
            assert_eq!(quote(s), format!("\"{s}\""));
        }
        assert_eq!(quote("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(quote("x\u{2028}"), "\"x\\L\"");
    }

    #[test]
    fn block_scalars_keep_every_byte() {
        assert_eq!(block_or_quoted("a\nb\n", 2), "|\n  a\n  b");
        assert_eq!(block_or_quoted("a\n\nb", 4), "|-\n    a\n\n    b");
        assert_eq!(block_or_quoted("a\n\n", 2), "|+\n  a\n");
        // Not representable as a plain literal block: quoted instead.
        assert_eq!(block_or_quoted(" lead\n", 2), "\" lead\\n\"");
        assert_eq!(block_or_quoted("one line", 2), "\"one line\"");
        assert_eq!(block_or_quoted("a\r\nb\n", 2), "\"a\\r\\nb\\n\"");
    }

    #[test]
    fn mapping_uses_block_lists() {
        let doc = mapping(&[
            ("token-file".into(), json!("/etc/rancher/k3s/token")),
            ("cluster-init".into(), json!(true)),
            ("node-label".into(), json!(["a=b", "c=d"])),
            ("etcd-snapshot-retention".into(), json!(10)),
        ]);
        assert_eq!(
            doc,
            "token-file: \"/etc/rancher/k3s/token\"\ncluster-init: true\nnode-label:\n  - \"a=b\"\n  - \"c=d\"\netcd-snapshot-retention: 10\n"
        );
        assert_eq!(key("node-label+"), "node-label+");
        assert_eq!(key("on"), "\"on\"");
        assert_eq!(key("A b"), "\"A b\"");
    }
}
