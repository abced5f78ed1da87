//! `iptables-save` output into a [`Ruleset`], for hosts without nft: the built-in `INPUT` and
//! `PREROUTING` chains of the filter, raw and mangle tables are base chains (their policy
//! counts), user chains are reached by `-j`/`-g`.

use std::io::{BufRead, BufReader, Read};

use super::firewall::{Action, Chain, Cond, Rule, Ruleset};

pub fn parse(r: impl Read) -> std::io::Result<Ruleset> {
    let mut set = Ruleset {
        source: "iptables-save",
        ..Ruleset::default()
    };
    let mut table = String::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in BufReader::new(r).lines() {
        let line = line?;
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut f = decl.split_whitespace();
            let (name, policy) = (f.next().unwrap_or(""), f.next().unwrap_or("-"));
            let input_path = matches!(table.as_str(), "filter" | "raw" | "mangle")
                && matches!(name, "INPUT" | "PREROUTING");
            let base = match policy {
                "-" => None,
                _ if input_path => Some(policy == "DROP"),
                // Output, forwarding: not on a boot client's way in.
                _ => continue,
            };
            let location = format!("iptables -t {table} chain {name}");
            set.chains.insert(
                (table.clone(), name.to_string()),
                Chain {
                    base,
                    location,
                    rules: Vec::new(),
                },
            );
        } else if let Some(spec) = line.strip_prefix("-A ") {
            let words = split(spec);
            let Some(chain_name) = words.first() else {
                continue;
            };
            let Some(chain) = set.chains.get_mut(&(table.clone(), chain_name.clone())) else {
                continue;
            };
            let n = counts.entry(format!("{table} {chain_name}")).or_default();
            *n += 1;
            let (conds, action) = rule(&words[1..]);
            chain.rules.push(Rule {
                conds,
                action,
                location: format!("{} rule {n}", chain.location),
                text: format!("-A {spec}"),
            });
        }
    }
    Ok(set)
}

/// Words, with iptables-save's double quotes (comments) kept together.
fn split(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn rule(words: &[String]) -> (Vec<Cond>, Action) {
    let mut conds = Vec::new();
    let mut action = Action::Continue;
    let mut proto = None;
    let mut negated = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let value = words.get(i + 1).map(String::as_str).unwrap_or("");
        i += 2;
        match w {
            "!" => {
                negated = true;
                i -= 1;
                continue;
            }
            "-p" | "--protocol" => {
                let n = proto_number(value);
                proto = Some(n);
                conds.push(Cond::Proto {
                    negated,
                    protos: vec![n],
                });
            }
            "--dport" | "--destination-port" | "--dports" | "--destination-ports" => {
                match ranges(value) {
                    Some(r) => conds.push(Cond::Dport {
                        proto,
                        negated,
                        ranges: r,
                    }),
                    None => conds.push(Cond::Unknown(format!("{w} {value}"))),
                }
            }
            "--state" | "--ctstate" => conds.push(Cond::CtState {
                negated,
                states: value.split(',').map(str::to_ascii_lowercase).collect(),
            }),
            "-m" | "--match" | "-c" | "--comment" => {}
            // The target comes last; what follows are its own options.
            "-j" | "--jump" | "-g" | "--goto" => {
                action = target(w, value);
                break;
            }
            _ if w.starts_with('-') && !value.starts_with('-') => {
                conds.push(Cond::Unknown(format!("{w} {value}")));
            }
            _ => {
                conds.push(Cond::Unknown(w.to_string()));
                i -= 1;
            }
        }
        negated = false;
    }
    (conds, action)
}

fn target(w: &str, t: &str) -> Action {
    match t {
        "ACCEPT" => Action::Accept,
        "DROP" => Action::Drop,
        "REJECT" => Action::Reject,
        "RETURN" => Action::Return,
        // Extensions that let the packet go on.
        "LOG" | "NFLOG" | "MARK" | "CONNMARK" | "TRACE" | "CT" | "NOTRACK" => Action::Continue,
        chain if w == "-g" || w == "--goto" => Action::Goto(chain.to_string()),
        chain => Action::Jump(chain.to_string()),
    }
}

fn proto_number(p: &str) -> u16 {
    match p {
        "udp" | "17" => 17,
        "tcp" | "6" => 6,
        _ => u16::MAX,
    }
}

/// `69`, `60:70`, `67,4011` (multiport).
fn ranges(v: &str) -> Option<Vec<(u16, u16)>> {
    v.split(',')
        .map(|part| match part.split_once(':') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => part.parse().ok().map(|p| (p, p)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::firewall::{Proto, Verdict, verdict};
    use super::*;

    /// Captured from iptables-save by tests/fixtures/doctor/make-fixtures.
    const SAVED: &str = include_str!("../../../../tests/fixtures/doctor/iptables-save.txt");

    #[test]
    fn reads_the_captured_rules() {
        let set = parse(SAVED.as_bytes()).unwrap();
        let Verdict::Dropped(r) = verdict(&set, Proto::Udp, 69) else {
            panic!("{set:#?}")
        };
        assert_eq!(r.text, "-A INPUT -p udp -m udp --dport 69 -j DROP");
        assert_eq!(r.location, "iptables -t filter chain INPUT rule 3");
        assert!(
            matches!(verdict(&set, Proto::Udp, 4011), Verdict::Dropped(r) if r.text.contains("multiport"))
        );
        assert!(
            matches!(verdict(&set, Proto::Tcp, 8080), Verdict::Dropped(r) if r.text.contains("REJECT"))
        );
        // The source-restricted drop in a user chain only may apply.
        let Verdict::Passes { maybe } = verdict(&set, Proto::Tcp, 80) else {
            panic!()
        };
        assert_eq!(maybe.len(), 1, "{maybe:?}");
        assert!(
            maybe[0].text.starts_with("-A EXTRA -s 10.0.0.0/8"),
            "{maybe:?}"
        );
        assert!(
            matches!(verdict(&set, Proto::Tcp, 22), Verdict::Passes { maybe } if maybe.is_empty())
        );
    }
}
