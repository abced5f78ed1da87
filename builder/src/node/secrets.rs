//! The secrets file (`secrets.toml`, mode 0600): k3s tokens and mesh keys, by the names profiles
//! reference (`token = { secret = "k3s-token" }`). Values may be given per node (one-off mesh keys
//! are) and overridden from the environment (`IMGBUILD_SECRET_<NAME>`). Secrets go into seeds and
//! user-data only, never into an image, a manifest or a log.
//!
//! ```toml
//! k3s-token = "…"
//! tailscale-authkey = "tskey-auth-…"
//!
//! [node.pi-03]
//! tailscale-authkey = "tskey-auth-…"   # this node's one-off key
//! ```

use std::collections::BTreeMap;
use std::fmt;

use crate::profile::{Resolved, Role};

use super::files::paths;

/// Values still set to this prefix were never filled in.
pub const PLACEHOLDER: &str = "REPLACE-ME";

/// Problems with the secrets file or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "{file} can be read by other users (mode {mode:04o}); it holds cluster credentials\n  help: run `chmod 600 {file}`"
    )]
    TooOpen { file: String, mode: u32 },
    #[error("{file}:{line}:{column}: {message}\n  help: {help}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
        help: String,
    },
    #[error("{}", missing_message(.name, .key, .file, .node.as_deref(), *.placeholder))]
    Missing {
        /// The secret's name.
        name: String,
        /// The profile key that references it (`k3s.token`).
        key: String,
        file: String,
        node: Option<String>,
        /// The file has it, but still with the placeholder of `secrets init`.
        placeholder: bool,
    },
    #[error(
        "the environment variable {var} (secret {name:?}) holds a control character such as a newline; a secret is one line\n  help: set it again without the line break (e.g. `export {var}=\"$(tr -d '\\n' < FILE)\"`)"
    )]
    BadEnvValue { name: String, var: String },
}

fn missing_message(
    name: &str,
    key: &str,
    file: &str,
    node: Option<&str>,
    placeholder: bool,
) -> String {
    let what = if placeholder {
        format!("secret {name:?} (needed by {key}) is still the placeholder in {file}")
    } else {
        format!("secret {name:?} (needed by {key}) is missing")
    };
    let per_node = node
        .map(|n| format!(" (or under [node.{n}] for this node only)"))
        .unwrap_or_default();
    format!(
        "{what}\n  help: add `{name} = \"…\"` to {file}{per_node}, or set the environment variable {}",
        env_var(name)
    )
}

/// The environment variable that overrides secret `name`: `IMGBUILD_SECRET_` + upper case, `-`→`_`.
pub fn env_var(name: &str) -> String {
    format!(
        "IMGBUILD_SECRET_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// Refuses a secrets file that group or others can read or write.
pub fn check_mode(mode: u32, file: &str) -> Result<(), SecretsError> {
    if mode & 0o077 != 0 {
        return Err(SecretsError::TooOpen {
            file: file.to_string(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// The parsed secrets file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    file: String,
    shared: BTreeMap<String, String>,
    nodes: BTreeMap<String, BTreeMap<String, String>>,
}

/// Never print values.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("file", &self.file)
            .field("names", &self.shared.keys().collect::<Vec<_>>())
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A secret the profile needs: its name, the profile key and where the node reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub name: String,
    pub key: &'static str,
    pub path: &'static str,
}

/// The secrets a node of `resolved` needs in its seed.
pub fn needed(resolved: &Resolved) -> Vec<Needed> {
    let k = &resolved.profile.k3s;
    let mut out = Vec::new();
    if let Some(t) = &k.token {
        out.push(Needed {
            name: t.secret.clone(),
            key: "k3s.token",
            path: paths::K3S_TOKEN,
        });
    }
    if k.role == Some(Role::Server)
        && let Some(t) = &k.agent_token
    {
        out.push(Needed {
            name: t.secret.clone(),
            key: "k3s.agent-token",
            path: paths::K3S_AGENT_TOKEN,
        });
    }
    if let Some(a) = &resolved.profile.mesh.auth_key {
        out.push(Needed {
            name: a.secret.clone(),
            key: "mesh.auth-key",
            path: paths::MESH_KEY,
        });
    }
    out
}

impl Secrets {
    /// No file: only the environment can provide secrets.
    pub fn empty(file: &str) -> Self {
        Secrets {
            file: file.to_string(),
            ..Secrets::default()
        }
    }

    /// Parses the file's text; `file` names it in messages. Error messages never quote values.
    pub fn parse(text: &str, file: &str) -> Result<Self, SecretsError> {
        let syntax = |offset: usize, message: String, help: &str| {
            let before = &text[..offset.min(text.len())];
            SecretsError::Syntax {
                file: file.to_string(),
                line: before.matches('\n').count() + 1,
                column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
                message,
                help: help.to_string(),
            }
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            // toml's message may quote the offending line, which could be a secret: keep only
            // the first line of its description.
            let message = e.message().lines().next().unwrap_or("").trim().to_string();
            syntax(
                e.span().map_or(0, |s| s.start),
                message,
                "write one `name = \"value\"` per line; per-node values go under [node.<name>]",
            )
        })?;
        let mut s = Secrets::empty(file);
        let bad_value = |name: &str| {
            syntax(
                find_key(text, name),
                format!("{name} must be a string on one line"),
                "quote the value: name = \"value\"",
            )
        };
        for (name, v) in table {
            match (name.as_str(), v) {
                ("node", toml::Value::Table(nodes)) => {
                    for (node, values) in nodes {
                        let toml::Value::Table(values) = values else {
                            return Err(syntax(
                                find_key(text, &node),
                                format!("node.{node} must be a table"),
                                "write [node.<name>] followed by name = \"value\" lines",
                            ));
                        };
                        let mut m = BTreeMap::new();
                        for (k, v) in values {
                            match v {
                                toml::Value::String(v) if is_value(&v) => {
                                    m.insert(k, v);
                                }
                                _ => return Err(bad_value(&k)),
                            }
                        }
                        s.nodes.insert(node, m);
                    }
                }
                (_, toml::Value::String(v)) if is_value(&v) => {
                    s.shared.insert(name, v);
                }
                _ => return Err(bad_value(&name)),
            }
        }
        Ok(s)
    }

    /// The value of secret `name` for `node`: the environment first, then the node's own table,
    /// then the shared value. Placeholders count as missing.
    pub fn get(
        &self,
        name: &str,
        node: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, GetError> {
        if let Some(v) = env(&env_var(name)).filter(|v| !v.is_empty()) {
            // Same rule as the file: one line, no control characters.
            return if is_value(&v) {
                Ok(v)
            } else {
                Err(GetError::BadEnv)
            };
        }
        let v = node
            .and_then(|n| self.nodes.get(n))
            .and_then(|m| m.get(name))
            .or_else(|| self.shared.get(name));
        match v {
            Some(v) if !v.starts_with(PLACEHOLDER) && !v.is_empty() => Ok(v.clone()),
            Some(_) => Err(GetError::Placeholder),
            None => Err(GetError::Missing),
        }
    }

    /// The value of a secret the profile needs, or an error naming the secret, the profile key
    /// and both ways to provide it.
    pub fn require(
        &self,
        need: &Needed,
        node: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, SecretsError> {
        self.get(&need.name, node, env).map_err(|e| match e {
            GetError::BadEnv => SecretsError::BadEnvValue {
                name: need.name.clone(),
                var: env_var(&need.name),
            },
            GetError::Missing | GetError::Placeholder => SecretsError::Missing {
                name: need.name.clone(),
                key: need.key.to_string(),
                file: self.file.clone(),
                node: node.map(str::to_string),
                placeholder: e == GetError::Placeholder,
            },
        })
    }
}

/// Why [`Secrets::get`] found no usable value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetError {
    Missing,
    /// The file still holds the placeholder of `secrets init`.
    Placeholder,
    /// The environment's value has a control character.
    BadEnv,
}

fn is_value(v: &str) -> bool {
    !v.chars().any(char::is_control)
}

fn find_key(text: &str, key: &str) -> usize {
    text.find(key).unwrap_or(0)
}

/// The text of a new secrets file: fresh k3s server and agent tokens from `random` (the OS RNG in
/// the command; any bytes in tests) and a placeholder for the mesh key the user must create.
pub fn init_text(random: &mut dyn FnMut(&mut [u8])) -> String {
    let mut token = || {
        let mut b = [0u8; 32];
        random(&mut b);
        hex::encode(b)
    };
    let server = token();
    let agent = token();
    format!(
        "# imgbuild secrets. Never commit this file; keep it mode 0600.\n\
         # Every value can also come from the environment: IMGBUILD_SECRET_<NAME> (upper case, - → _).\n\
         \n\
         # The cluster (server) token: full admin, and the key of the cluster's bootstrap data;\n\
         # back it up with the etcd snapshots. Profiles read it as k3s.token. Agents should not\n\
         # carry it: give each agent a bootstrap token (`k3s token create --ttl 2h`, run on a\n\
         # server) as k3s-token under [node.<name>] below, or the agent token.\n\
         k3s-token = \"{server}\"\n\
         # The token agents may join with; servers get it as agent-token.\n\
         k3s-agent-token = \"{agent}\"\n\
         \n\
         # A one-off, pre-approved, tagged Tailscale auth key with a short expiry (tskey-auth-…),\n\
         # or a headscale pre-auth key. One-off keys work once: give each node its own below.\n\
         tailscale-authkey = \"{PLACEHOLDER}: create a one-off auth key in the Tailscale admin console\"\n\
         \n\
         # Per-node values override the ones above:\n\
         # [node.pi-03]\n\
         # k3s-token = \"K10…::….…\"\n\
         # tailscale-authkey = \"tskey-auth-…\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn lookup_order_env_node_shared() {
        let s = Secrets::parse(
            "a = \"shared\"\nb = \"REPLACE-ME: x\"\n[node.n1]\na = \"n1\"\n",
            "s.toml",
        )
        .unwrap();
        assert_eq!(s.get("a", None, &no_env).unwrap(), "shared");
        assert_eq!(s.get("a", Some("n1"), &no_env).unwrap(), "n1");
        assert_eq!(s.get("a", Some("n2"), &no_env).unwrap(), "shared");
        let env = |k: &str| (k == "IMGBUILD_SECRET_A").then(|| "env".to_string());
        assert_eq!(s.get("a", Some("n1"), &env).unwrap(), "env");
        assert_eq!(s.get("b", None, &no_env), Err(GetError::Placeholder));
        assert_eq!(
            env_var("tailscale-authkey"),
            "IMGBUILD_SECRET_TAILSCALE_AUTHKEY"
        );
    }

    #[test]
    fn missing_secret_says_how_to_provide_it() {
        let s = Secrets::empty("./secrets.toml");
        let need = Needed {
            name: "k3s-token".into(),
            key: "k3s.token",
            path: paths::K3S_TOKEN,
        };
        let msg = s
            .require(&need, Some("pi-03"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("secret \"k3s-token\" (needed by k3s.token) is missing"),
            "{msg}"
        );
        assert!(msg.contains("./secrets.toml"), "{msg}");
        assert!(msg.contains("[node.pi-03]"), "{msg}");
        assert!(msg.contains("IMGBUILD_SECRET_K3S_TOKEN"), "{msg}");
    }

    #[test]
    fn mode_and_syntax_errors_never_show_values() {
        assert!(check_mode(0o600, "s").is_ok());
        assert!(check_mode(0o400, "s").is_ok());
        let msg = check_mode(0o644, "secrets.toml").unwrap_err().to_string();
        assert!(msg.contains("chmod 600 secrets.toml"), "{msg}");
        let err = Secrets::parse("tok = \"supersecret\nx", "s.toml").unwrap_err();
        assert!(!err.to_string().contains("supersecret"), "{err}");
        let err = Secrets::parse("tok = 5\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.toml:1:1: tok must be a string"), "{err}");
        let dbg = format!("{:?}", Secrets::parse("a = \"hidden\"", "s").unwrap());
        assert!(!dbg.contains("hidden"));
    }

    #[test]
    fn init_makes_distinct_tokens_and_a_placeholder() {
        let mut n = 0u8;
        let text = init_text(&mut |b: &mut [u8]| {
            for x in b.iter_mut() {
                n = n.wrapping_add(1);
                *x = n;
            }
        });
        let s = Secrets::parse(&text, "s").unwrap();
        let a = s.get("k3s-token", None, &no_env).unwrap();
        let b = s.get("k3s-agent-token", None, &no_env).unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(
            s.get("tailscale-authkey", None, &no_env),
            Err(GetError::Placeholder)
        );
    }

    #[test]
    fn environment_values_are_one_line_like_the_files() {
        let s = Secrets::parse("k3s-token = \"fromfile\"\n", "s").unwrap();
        let need = Needed {
            name: "k3s-token".into(),
            key: "k3s.token",
            path: "/etc/rancher/k3s/token",
        };
        for bad in ["a\nb", "a\rb", "tok\u{1b}[2J", "x\0"] {
            let env = |_: &str| Some(bad.to_string());
            let err = s.require(&need, None, &env).unwrap_err().to_string();
            assert!(err.contains("IMGBUILD_SECRET_K3S_TOKEN"), "{err}");
            assert!(!err.contains(bad), "the value must not be quoted: {err}");
        }
        let good = |_: &str| Some("fromenv".to_string());
        assert_eq!(s.require(&need, None, &good).unwrap(), "fromenv");
        // The file refuses the same values.
        assert!(Secrets::parse("k3s-token = \"a\\nb\"\n", "s").is_err());
    }
}
