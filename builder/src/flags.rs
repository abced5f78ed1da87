//! The flag sets of the pinned k3s and Tailscale releases (`builder/data/flags/`, generated from
//! the upstream sources by `scripts/gen-flags`), and the lookups the profile checks make: is this
//! a flag of that release, for which role, taking what kind of value, and which valid name is
//! nearest to a misspelt one.

use serde::Deserialize;

/// k3s releases whose flag sets ship in the binary, newest last.
const K3S: &[(&str, &str)] = &[(
    "v1.36.2+k3s1",
    include_str!("../data/flags/k3s-v1.36.2+k3s1.toml"),
)];

/// Tailscale releases whose `tailscale up` flag sets ship in the binary, newest last.
const TAILSCALE: &[(&str, &str)] = &[(
    "1.96.4",
    include_str!("../data/flags/tailscale-1.96.4.toml"),
)];

/// The `tailscale up` flags imgbuild's join script (`overlays/node/mesh-join-tailscale.sh.j2`)
/// passes; a test below keeps this list and the script in step.
pub const TAILSCALE_UP_FLAGS: &[&str] = &[
    "auth-key",
    "accept-dns",
    "hostname",
    "advertise-tags",
    "login-server",
];

/// How a flag takes its value: in `config.yaml` a list, one value, or `true`/`false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Bool,
    Scalar,
    List,
}

/// Which `k3s` subcommand accepts a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagRole {
    Server,
    Agent,
    Both,
}

impl FlagRole {
    /// Whether a node of `role` (`server` or `agent`) accepts the flag.
    pub fn accepts(self, role: &str) -> bool {
        match self {
            FlagRole::Both => true,
            FlagRole::Server => role == "server",
            FlagRole::Agent => role == "agent",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub kind: Kind,
    /// k3s only; `tailscale up` flags have none.
    pub role: Option<FlagRole>,
    #[serde(default)]
    pub hidden: bool,
}

/// One release's flags, and where they were read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSet {
    pub program: String,
    pub version: String,
    pub repo: String,
    pub tag: String,
    pub commit: String,
    #[serde(rename = "flag")]
    pub flags: Vec<Flag>,
}

/// The k3s flag set of `version`, if imgbuild has it.
pub fn k3s(version: &str) -> Option<FlagSet> {
    find(K3S, version)
}

/// The `tailscale up` flag set of `version` (without the leading `v`), if imgbuild has it.
pub fn tailscale_up(version: &str) -> Option<FlagSet> {
    find(TAILSCALE, version.trim_start_matches('v'))
}

/// The releases imgbuild has flag sets for, for messages.
pub fn known_versions(program: &str) -> Vec<&'static str> {
    let table = if program == "k3s" { K3S } else { TAILSCALE };
    table.iter().map(|(v, _)| *v).collect()
}

fn find(table: &[(&str, &str)], version: &str) -> Option<FlagSet> {
    let (_, text) = table.iter().find(|(v, _)| *v == version)?;
    // The files are ours and checked by the tests below; a broken one is a build defect.
    Some(toml::from_str(text).expect("builder/data/flags file parses"))
}

impl FlagSet {
    /// The flag named `name` (its long name, not an alias).
    pub fn get(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    /// The flag that has `name` as an alias.
    pub fn by_alias(&self, name: &str) -> Option<&Flag> {
        self.flags
            .iter()
            .find(|f| f.aliases.iter().any(|a| a == name))
    }

    /// The flags of [`TAILSCALE_UP_FLAGS`] this (`tailscale up`) flag set lacks.
    pub fn missing_up_flags(&self) -> Vec<&'static str> {
        TAILSCALE_UP_FLAGS
            .iter()
            .copied()
            .filter(|f| self.get(f).is_none())
            .collect()
    }

    /// The valid name nearest to `name` among the flags `usable` allows, if one is near enough
    /// to be a likely misspelling (edit distance at most a third of the length, at least 2).
    pub fn nearest(&self, name: &str, usable: impl Fn(&Flag) -> bool) -> Option<&str> {
        let limit = (name.chars().count() / 3).max(2);
        self.flags
            .iter()
            .filter(|f| !f.hidden && usable(f))
            .map(|f| (strsim::levenshtein(name, &f.name), &f.name))
            .filter(|(d, _)| *d <= limit)
            .min()
            .map(|(_, n)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_file_parses_and_names_its_release() {
        for (program, table) in [("k3s", K3S), ("tailscale", TAILSCALE)] {
            for (version, _) in table {
                let set = find(table, version).unwrap();
                assert_eq!(set.program, program);
                assert_eq!(&set.version, version);
                assert_eq!(
                    set.commit.len(),
                    40,
                    "{program} {version}: a full commit id"
                );
                assert!(
                    set.flags.len() > 20,
                    "{program} {version}: {}",
                    set.flags.len()
                );
                let mut names: Vec<_> = set.flags.iter().map(|f| &f.name).collect();
                names.dedup();
                assert_eq!(names.len(), set.flags.len(), "sorted, no duplicates");
                assert_eq!(set.flags.iter().all(|f| f.role.is_some()), program == "k3s");
            }
        }
    }

    #[test]
    fn k3s_roles_and_kinds_match_upstream() {
        let k = k3s("v1.36.2+k3s1").unwrap();
        let role = |n: &str| k.get(n).and_then(|f| f.role);
        assert_eq!(role("cluster-init"), Some(FlagRole::Server));
        assert_eq!(role("kube-apiserver-arg"), Some(FlagRole::Server));
        assert_eq!(role("disable"), Some(FlagRole::Server));
        assert_eq!(role("node-label"), Some(FlagRole::Both));
        assert_eq!(role("disable-apiserver-lb"), Some(FlagRole::Agent));
        assert_eq!(k.get("node-label").unwrap().kind, Kind::List);
        assert_eq!(k.get("node-ip").unwrap().kind, Kind::List);
        assert_eq!(k.get("server").unwrap().kind, Kind::Scalar);
        assert_eq!(k.get("cluster-init").unwrap().kind, Kind::Bool);
        assert_eq!(k.by_alias("s").unwrap().name, "server");
        assert!(k.get("no-such-flag").is_none());
        assert!(k3s("v0.0.1+k3s1").is_none());
    }

    #[test]
    fn nearest_suggests_close_names_only() {
        let k = k3s("v1.36.2+k3s1").unwrap();
        let all = |_: &Flag| true;
        assert_eq!(k.nearest("node-lable", all), Some("node-label"));
        assert_eq!(k.nearest("kubelet-args", all), Some("kubelet-arg"));
        assert_eq!(k.nearest("completely-different", all), None);
        // An agent is not pointed at a server-only flag.
        let agent = |f: &Flag| f.role.is_some_and(|r| r.accepts("agent"));
        assert_eq!(k.nearest("cluster-inti", all), Some("cluster-init"));
        assert_eq!(k.nearest("cluster-inti", agent), None);
    }

    #[test]
    fn tailscale_up_has_the_flags_of_that_release() {
        let t = tailscale_up("v1.96.4").unwrap();
        assert_eq!(t.get("accept-dns").unwrap().kind, Kind::Bool);
        assert_eq!(t.get("advertise-tags").unwrap().kind, Kind::Scalar);
        assert_eq!(t.by_alias("authkey").unwrap().name, "auth-key");
        // Windows-only and `login`-only flags are not `up` flags on Linux.
        assert!(t.get("unattended").is_none());
        assert!(t.get("nickname").is_none());
    }

    #[test]
    fn the_join_script_passes_exactly_the_listed_tailscale_flags() {
        let script = include_str!("../../overlays/node/mesh-join-tailscale.sh.j2");
        let mut passed: Vec<&str> = script
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter_map(|w| w.strip_prefix("--"))
            .filter(|f| !f.is_empty())
            .collect();
        passed.sort();
        passed.dedup();
        let mut listed = TAILSCALE_UP_FLAGS.to_vec();
        listed.sort();
        assert_eq!(passed, listed);
        let mut t = tailscale_up("1.96.4").unwrap();
        assert!(t.missing_up_flags().is_empty());
        // A release whose `up` lacks one (before 1.40 it was only --authkey) is caught.
        t.flags.retain(|f| f.name != "auth-key");
        assert_eq!(t.missing_up_flags(), ["auth-key"]);
    }
}
