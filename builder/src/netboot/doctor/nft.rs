//! `nft -j list ruleset` (libnftables' JSON schema, version 1) into a [`Ruleset`]: the base
//! chains on the input path (hooks `prerouting`/`input` in the `ip`, `inet` and `netdev`
//! families, and `ingress`) and every regular chain they may jump to.

use std::io::Read;

use serde_json::Value;

use super::firewall::{Action, Chain, Cond, Rule, Ruleset};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the output of `nft -j list ruleset` is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the output of `nft -j list ruleset` has no \"nftables\" array")]
    Shape,
}

pub fn parse(r: impl Read) -> Result<Ruleset, NftError> {
    let doc: Value = serde_json::from_reader(r)?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or(NftError::Shape)?;
    let mut set = Ruleset {
        source: "nft",
        ..Ruleset::default()
    };
    for item in items {
        if let Some(c) = item.get("chain") {
            add_chain(&mut set, c);
        }
    }
    for item in items {
        if let Some(r) = item.get("rule") {
            add_rule(&mut set, r);
        }
    }
    Ok(set)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn table_key(v: &Value) -> String {
    format!("{} {}", s(v, "family"), s(v, "table"))
}

fn add_chain(set: &mut Ruleset, c: &Value) {
    let family = s(c, "family");
    let on_input_path = matches!(family, "ip" | "inet" | "netdev")
        && matches!(s(c, "hook"), "prerouting" | "input" | "ingress");
    let base = if c.get("hook").is_some() {
        if !on_input_path {
            return;
        }
        Some(s(c, "policy") == "drop")
    } else {
        None
    };
    let location = format!("table {} chain {}", table_key(c), s(c, "name"));
    set.chains.insert(
        (table_key(c), s(c, "name").to_string()),
        Chain {
            base,
            location,
            rules: Vec::new(),
        },
    );
}

fn add_rule(set: &mut Ruleset, r: &Value) {
    let key = (table_key(r), s(r, "chain").to_string());
    let Some(chain) = set.chains.get_mut(&key) else {
        return;
    };
    let handle = r.get("handle").and_then(Value::as_u64).unwrap_or(0);
    let mut conds = Vec::new();
    let mut words = Vec::new();
    let mut action = Action::Continue;
    for e in r
        .get("expr")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(m) = e.get("match") {
            let (c, text) = cond(m);
            conds.push(c);
            words.push(text);
        } else if let Some(a) = statement(e) {
            words.push(a.1);
            action = a.0;
        } else if let Some(name) = e.as_object().and_then(|o| o.keys().next()) {
            words.push(name.clone());
        }
    }
    let location = format!("{} handle {handle}", chain.location);
    chain.rules.push(Rule {
        conds,
        action,
        location,
        text: words.join(" "),
    });
}

/// A verdict statement and its text.
fn statement(e: &Value) -> Option<(Action, String)> {
    let o = e.as_object()?;
    let (k, v) = o.iter().next()?;
    let target = || s(v, "target").to_string();
    let a = match k.as_str() {
        "accept" => Action::Accept,
        "drop" => Action::Drop,
        "reject" => Action::Reject,
        "return" => Action::Return,
        "jump" => Action::Jump(target()),
        "goto" => Action::Goto(target()),
        _ => return None,
    };
    let text = match &a {
        Action::Jump(t) | Action::Goto(t) => format!("{k} {t}"),
        _ => k.clone(),
    };
    Some((a, text))
}

/// A `match` expression: what it tests, and its text.
fn cond(m: &Value) -> (Cond, String) {
    let op = s(m, "op");
    let negated = op == "!=";
    let left = m.get("left").unwrap_or(&Value::Null);
    let right = m.get("right").unwrap_or(&Value::Null);
    let text = format!(
        "{} {}{}",
        describe(left),
        if negated { "!= " } else { "" },
        describe(right)
    );
    let known = op == "==" || op == "in" || op == "!=";
    let c = match (left.get("payload"), left.get("meta"), left.get("ct")) {
        _ if !known => None,
        (Some(p), _, _) if s(p, "field") == "dport" => {
            let proto = match s(p, "protocol") {
                "udp" => Some(Some(17)),
                "tcp" => Some(Some(6)),
                "th" => Some(None),
                _ => None,
            };
            proto.and_then(|proto| {
                ports(right).map(|ranges| Cond::Dport {
                    proto,
                    negated,
                    ranges,
                })
            })
        }
        (Some(p), _, _) if matches!(s(p, "protocol"), "ip" | "ip6") => {
            let f = s(p, "field");
            (f == "protocol" || f == "nexthdr")
                .then(|| protos(right))
                .flatten()
                .map(|protos| Cond::Proto { negated, protos })
        }
        (_, Some(meta), _) if s(meta, "key") == "l4proto" => {
            protos(right).map(|protos| Cond::Proto { negated, protos })
        }
        (_, _, Some(ct)) if s(ct, "key") == "state" => {
            strings(right).map(|states| Cond::CtState { negated, states })
        }
        _ => None,
    };
    (c.unwrap_or_else(|| Cond::Unknown(text.clone())), text)
}

/// The elements of a right-hand side: a value, an anonymous set or a list.
fn elements(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) if o.contains_key("set") => match &o["set"] {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        },
        one => vec![one],
    }
}

fn ports(v: &Value) -> Option<Vec<(u16, u16)>> {
    let port = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok());
    elements(v)
        .into_iter()
        .map(|e| match e.get("range").and_then(Value::as_array) {
            Some(r) if r.len() == 2 => Some((port(&r[0])?, port(&r[1])?)),
            Some(_) => None,
            None => port(e).map(|p| (p, p)),
        })
        .collect()
}

fn protos(v: &Value) -> Option<Vec<u16>> {
    elements(v)
        .into_iter()
        .map(|e| match e {
            Value::String(n) => match n.as_str() {
                "udp" => Some(17),
                "tcp" => Some(6),
                "icmp" => Some(1),
                "icmpv6" | "ipv6-icmp" => Some(58),
                _ => Some(u16::MAX),
            },
            _ => e.as_u64().and_then(|n| u16::try_from(n).ok()),
        })
        .collect()
}

fn strings(v: &Value) -> Option<Vec<String>> {
    elements(v)
        .into_iter()
        .map(|e| e.as_str().map(str::to_string))
        .collect()
}

/// nft's own words for an expression, near enough for a user to find the rule.
fn describe(v: &Value) -> String {
    if let Some(p) = v.get("payload") {
        return format!("{} {}", s(p, "protocol"), s(p, "field"));
    }
    if let Some(m) = v.get("meta") {
        return format!("meta {}", s(m, "key"));
    }
    if let Some(c) = v.get("ct") {
        return format!("ct {}", s(c, "key"));
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        let parts: Vec<String> = r.iter().map(describe).collect();
        return parts.join("-");
    }
    if let Some(p) = v.get("prefix") {
        return format!("{}/{}", describe(&p["addr"]), describe(&p["len"]));
    }
    match v {
        Value::String(t) => t.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(_) => {
            let parts: Vec<String> = elements(v).into_iter().map(describe).collect();
            parts.join(",")
        }
        Value::Object(o) if o.contains_key("set") => {
            let parts: Vec<String> = elements(v).into_iter().map(describe).collect();
            format!("{{ {} }}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::firewall::{Proto, Verdict, verdict};
    use super::*;

    /// Captured from nft 1.0.6 by tests/fixtures/doctor/make-fixtures.
    const RULESET: &str = include_str!("../../../../tests/fixtures/doctor/nft-ruleset.json");

    #[test]
    fn reads_the_captured_ruleset() {
        let set = parse(RULESET.as_bytes()).unwrap();
        let Verdict::Dropped(r) = verdict(&set, Proto::Udp, 69) else {
            panic!("{set:#?}")
        };
        assert_eq!(r.text, "udp dport 69 counter drop");
        assert_eq!(r.location, "table inet filter chain input handle 6");
        let Verdict::Dropped(r) = verdict(&set, Proto::Udp, 4011) else {
            panic!()
        };
        assert_eq!(r.text, "udp dport { 67, 4011 } reject");
        let Verdict::Dropped(r) = verdict(&set, Proto::Tcp, 8080) else {
            panic!()
        };
        assert_eq!(r.text, "tcp dport 8000-8100 drop");
        // Not dropped for sure, but a rule with a source-address condition in a jumped-to chain
        // may drop it.
        let Verdict::Passes { maybe } = verdict(&set, Proto::Tcp, 80) else {
            panic!()
        };
        assert_eq!(maybe.len(), 1, "{maybe:?}");
        assert_eq!(maybe[0].text, "ip saddr 10.0.0.0/8 tcp dport != 22 drop");
        // The established/related accept and the loopback accept do not let a new packet in.
        assert!(
            set.chains
                .values()
                .any(|c| c.rules.iter().any(|r| r.text == "iifname lo accept"))
                || set
                    .chains
                    .values()
                    .any(|c| c.rules.iter().any(|r| r.text == "meta iifname lo accept"))
        );
    }

    #[test]
    fn a_drop_policy_chain_is_reported() {
        let json = r#"{"nftables": [{"chain": {"family": "ip", "table": "f", "name": "in",
            "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
            {"rule": {"family": "ip", "table": "f", "chain": "in", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
            "right": 69}}, {"accept": null}]}}]}"#;
        let set = parse(json.as_bytes()).unwrap();
        assert!(matches!(
            verdict(&set, Proto::Udp, 69),
            Verdict::Passes { .. }
        ));
        assert_eq!(
            verdict(&set, Proto::Udp, 67),
            Verdict::Policy("table ip f chain in".into())
        );
        assert!(matches!(parse(&b"[]"[..]), Err(NftError::Shape)));
        assert!(matches!(parse(&b"{"[..]), Err(NftError::Json(_))));
    }
}
