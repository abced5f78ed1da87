//! Does the host's firewall let a boot client's first packet to one of our ports in? Rules from
//! nft ([`super::nft`]) or iptables-save ([`super::iptables`]) become [`Rule`]s; [`verdict`]
//! walks the input-path base chains the way the kernel does, for a new packet whose only known
//! attributes are its protocol and destination port. A condition we cannot judge (source address,
//! interface, a named set) makes a rule only a "may drop", never a silent pass.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }

    pub fn number(self) -> u16 {
        match self {
            Proto::Udp => 17,
            Proto::Tcp => 6,
        }
    }
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The layer-4 protocol is (or with `negated`, is not) one of these.
    Proto { negated: bool, protos: Vec<u16> },
    /// The destination port is (not) in one of these inclusive ranges; `proto` is the protocol
    /// the port belongs to (`None`: any transport header, nft's `th`).
    Dport {
        proto: Option<u16>,
        negated: bool,
        ranges: Vec<(u16, u16)>,
    },
    /// Connection tracking state is (not) one of these (a first packet is `new`).
    CtState { negated: bool, states: Vec<String> },
    /// Anything else (addresses, interfaces, marks, named sets): may or may not hold.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Reject,
    Jump(String),
    Goto(String),
    Return,
    /// Counters, logs, marks: the packet goes on to the next rule.
    Continue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub conds: Vec<Cond>,
    pub action: Action,
    /// Where it is, for the user (`table inet filter chain input handle 5`).
    pub location: String,
    /// The rule as the user would write it, as far as we read it.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// `Some(policy_drops)` for a base chain on the input path; `None` for a regular chain.
    pub base: Option<bool>,
    pub location: String,
    pub rules: Vec<Rule>,
}

/// The chains that matter, by (table, name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Which tool it came from (`nft` or `iptables-save`).
    pub source: &'static str,
    pub chains: BTreeMap<(String, String), Chain>,
}

/// What happens to the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every input-path chain lets it through (some rules might still drop it: `maybe`).
    Passes { maybe: Vec<Rule> },
    /// This rule drops or rejects it.
    Dropped(Rule),
    /// This base chain's policy is drop and no rule accepted it.
    Policy(String),
}

enum Tri {
    Yes,
    No,
    Unknown,
}

fn judge(c: &Cond, proto: Proto, port: u16) -> Tri {
    let b = |v: bool| if v { Tri::Yes } else { Tri::No };
    match c {
        Cond::Proto { negated, protos } => b(protos.contains(&proto.number()) != *negated),
        Cond::Dport {
            proto: p,
            negated,
            ranges,
        } => {
            if p.is_some_and(|p| p != proto.number()) {
                return Tri::No;
            }
            let inside = ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&port));
            b(inside != *negated)
        }
        Cond::CtState { negated, states } => b(states.iter().any(|s| s == "new") != *negated),
        Cond::Unknown(_) => Tri::Unknown,
    }
}

/// How a rule applies: surely, maybe, or not at all.
fn applies(r: &Rule, proto: Proto, port: u16) -> Option<bool> {
    let mut sure = true;
    for c in &r.conds {
        match judge(c, proto, port) {
            Tri::No => return None,
            Tri::Unknown => sure = false,
            Tri::Yes => {}
        }
    }
    Some(sure)
}

enum Outcome {
    Accepted,
    Dropped(Rule),
    /// Fell off the end or returned.
    Next,
}

const MAX_DEPTH: usize = 16;

fn walk(
    set: &Ruleset,
    table: &str,
    chain: &Chain,
    proto: Proto,
    port: u16,
    maybe: &mut Vec<Rule>,
    depth: usize,
) -> Outcome {
    for r in &chain.rules {
        let Some(sure) = applies(r, proto, port) else {
            continue;
        };
        match (&r.action, sure) {
            (Action::Accept, true) => return Outcome::Accepted,
            (Action::Drop | Action::Reject, true) => return Outcome::Dropped(r.clone()),
            (Action::Drop | Action::Reject, false) => maybe.push(r.clone()),
            (Action::Return, true) => return Outcome::Next,
            (Action::Jump(t) | Action::Goto(t), _) if depth < MAX_DEPTH => {
                let Some(target) = set.chains.get(&(table.to_string(), t.clone())) else {
                    continue;
                };
                let mut inner = Vec::new();
                let out = walk(set, table, target, proto, port, &mut inner, depth + 1);
                maybe.extend(inner);
                match (out, sure) {
                    (Outcome::Next, _) if matches!(r.action, Action::Goto(_)) && sure => {
                        return Outcome::Next;
                    }
                    (Outcome::Next, _) => {}
                    (Outcome::Dropped(d), false) => maybe.push(d),
                    (Outcome::Accepted, false) => {}
                    (out, true) => return out,
                }
            }
            _ => {}
        }
    }
    Outcome::Next
}

/// What the input path does to a new `proto` packet to `port`.
pub fn verdict(set: &Ruleset, proto: Proto, port: u16) -> Verdict {
    let mut maybe = Vec::new();
    for ((table, _), chain) in &set.chains {
        let Some(policy_drops) = chain.base else {
            continue;
        };
        match walk(set, table, chain, proto, port, &mut maybe, 0) {
            Outcome::Accepted => {}
            Outcome::Dropped(r) => return Verdict::Dropped(r),
            Outcome::Next if policy_drops => return Verdict::Policy(chain.location.clone()),
            Outcome::Next => {}
        }
    }
    Verdict::Passes { maybe }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(conds: Vec<Cond>, action: Action) -> Rule {
        Rule {
            conds,
            action,
            location: "t".into(),
            text: "r".into(),
        }
    }

    fn udp(ports: &[u16]) -> Cond {
        Cond::Dport {
            proto: Some(17),
            negated: false,
            ranges: ports.iter().map(|&p| (p, p)).collect(),
        }
    }

    fn set(rules: Vec<Rule>, policy_drops: bool) -> Ruleset {
        let mut s = Ruleset::default();
        s.chains.insert(
            ("t".into(), "input".into()),
            Chain {
                base: Some(policy_drops),
                location: "chain input".into(),
                rules,
            },
        );
        s
    }

    #[test]
    fn first_sure_rule_decides_and_unknowns_only_warn() {
        let established = Cond::CtState {
            negated: false,
            states: vec!["established".into(), "related".into()],
        };
        let s = set(
            vec![
                rule(vec![established], Action::Accept),
                rule(
                    vec![Cond::Unknown("iifname lo".into()), udp(&[69])],
                    Action::Drop,
                ),
                rule(vec![udp(&[67, 69])], Action::Drop),
            ],
            false,
        );
        assert!(matches!(verdict(&s, Proto::Udp, 69), Verdict::Dropped(_)));
        assert!(
            matches!(verdict(&s, Proto::Tcp, 69), Verdict::Passes { maybe } if maybe.is_empty())
        );
        let Verdict::Passes { maybe } = verdict(&s, Proto::Udp, 4011) else {
            panic!()
        };
        assert!(maybe.is_empty());
        // An accept with a condition we cannot judge does not hide a later drop.
        let s = set(
            vec![
                rule(
                    vec![Cond::Unknown("ip saddr 10.0.0.0/8".into())],
                    Action::Accept,
                ),
                rule(vec![udp(&[69])], Action::Reject),
            ],
            false,
        );
        assert!(matches!(verdict(&s, Proto::Udp, 69), Verdict::Dropped(_)));
    }

    #[test]
    fn drop_policy_needs_an_accept() {
        let s = set(vec![rule(vec![udp(&[69])], Action::Accept)], true);
        assert!(matches!(
            verdict(&s, Proto::Udp, 69),
            Verdict::Passes { .. }
        ));
        assert!(matches!(verdict(&s, Proto::Udp, 67), Verdict::Policy(_)));
    }

    #[test]
    fn jumps_are_followed() {
        let mut s = set(
            vec![rule(
                vec![Cond::Proto {
                    negated: false,
                    protos: vec![17],
                }],
                Action::Jump("u".into()),
            )],
            false,
        );
        s.chains.insert(
            ("t".into(), "u".into()),
            Chain {
                base: None,
                location: "chain u".into(),
                rules: vec![rule(
                    vec![Cond::Dport {
                        proto: None,
                        negated: true,
                        ranges: vec![(53, 53)],
                    }],
                    Action::Drop,
                )],
            },
        );
        assert!(matches!(verdict(&s, Proto::Udp, 69), Verdict::Dropped(_)));
        assert!(matches!(
            verdict(&s, Proto::Udp, 53),
            Verdict::Passes { .. }
        ));
        assert!(matches!(
            verdict(&s, Proto::Tcp, 69),
            Verdict::Passes { .. }
        ));
    }
}
