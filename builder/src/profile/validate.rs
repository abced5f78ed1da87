//! Semantic checks on a merged profile, and filling of board-derived defaults. Each problem names
//! the key and where it was set, and says how to fix it.

use super::schema::*;
use super::{Diagnostic, Location, Origin, Resolved};

struct Checker<'a> {
    resolved: &'a Resolved,
    top: &'a Origin,
    problems: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    /// Where `key` was set; for a missing key, the nearest enclosing table in the profile itself
    /// (where the user would add it), or the top of that file.
    fn at(&self, key: &str) -> Option<Location> {
        if let Some(l) = self.resolved.locations.get(key) {
            return Some(l.clone());
        }
        let mut k = key;
        while let Some(i) = k.rfind(['.', '[']) {
            k = &k[..i];
            if let Some(l) = self.resolved.locations.get(k)
                && (&l.origin == self.top || l.origin == Origin::CommandLine)
            {
                return Some(l.clone());
            }
        }
        Some(Location {
            origin: self.top.clone(),
            line: 1,
            column: 1,
        })
    }

    /// For a conflict between keys: the one set closest to the user (`--set`, then the profile
    /// itself, then its ancestors), since that is the one they most likely just changed.
    fn nearest<'k>(&self, keys: &[&'k str]) -> &'k str {
        let rank = |k: &str| match self.resolved.locations.get(k).map(|l| &l.origin) {
            Some(Origin::CommandLine) => 0,
            Some(o) => {
                1 + self
                    .resolved
                    .chain
                    .iter()
                    .position(|c| c == o)
                    .unwrap_or(usize::MAX - 1)
            }
            None => usize::MAX,
        };
        keys.iter()
            .copied()
            .min_by_key(|k| rank(k))
            .unwrap_or(keys[0])
    }

    fn problem(&mut self, key: &str, message: impl Into<String>, help: impl Into<String>) {
        self.problems.push(Diagnostic {
            location: self.at(key),
            key: Some(key.to_string()),
            message: message.into(),
            help: Some(help.into()),
        });
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            location: self.at(key),
            key: Some(key.to_string()),
            message: message.into(),
            help: None,
        }
    }
}

/// Checks a merged profile and fills `image.{name,arch,formats,partition-table}`. Abstract
/// profiles (only meant to be extended) skip the checks for required values.
pub(super) fn validate(resolved: &mut Resolved, top: &Origin) -> Vec<Diagnostic> {
    let p = resolved.profile.clone();
    let mut c = Checker {
        resolved,
        top,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let concrete = !p.r#abstract;

    let (board, arch) = check_image(&mut c, &p, concrete);
    check_base(&mut c, &p);
    check_k3s(&mut c, &p, concrete, board);
    check_mesh(&mut c, &p, concrete);
    check_users(&mut c, &p);
    check_kernel_and_pi(&mut c, &p, board);
    check_time(&mut c, &p);

    let problems = std::mem::take(&mut c.problems);
    let warnings = std::mem::take(&mut c.warnings);
    resolved.warnings.extend(warnings);
    // Fill the board-derived defaults so consumers and `profiles show` see concrete values.
    let img = &mut resolved.profile.image;
    if img.name.is_none() {
        img.name = Some(resolved.name.clone());
    }
    img.arch = arch.or(img.arch);
    let time = &mut resolved.profile.time;
    time.sync_wait = Some(time.sync_wait());
    if let Some(b) = board {
        if img.formats.is_empty() {
            img.formats = b.default_formats().to_vec();
        }
        if img.partition_table.is_none() {
            img.partition_table = Some(b.default_partition_table());
        }
    }
    problems
}

/// `[image]`: board, arch, sizes, formats. Returns the board and the arch it implies.
fn check_image(c: &mut Checker<'_>, p: &Profile, concrete: bool) -> (Option<Board>, Option<Arch>) {
    let board = p.image.board;
    if board.is_none() && concrete {
        c.problem(
            "image.board",
            "image.board is missing",
            "set image.board to one of rpi4, rpi5, rpi, efi, cloud",
        );
    }
    let arch = match (board.and_then(Board::implied_arch), p.image.arch) {
        (Some(implied), Some(a)) if implied != a => {
            let key = c.nearest(&["image.arch", "image.board"]);
            c.problem(
                key,
                format!(
                    "image.arch is {a}, but board {} is {implied}",
                    board.map_or("?", Board::as_str)
                ),
                format!("remove image.arch or set it to {implied}"),
            );
            Some(implied)
        }
        (Some(implied), _) => Some(implied),
        (None, Some(a)) => Some(a),
        (None, None) => {
            if concrete && board.is_some() {
                c.problem(
                    "image.arch",
                    format!(
                        "image.arch is missing (board {} runs on more than one architecture)",
                        board.map_or("?", Board::as_str)
                    ),
                    "set image.arch to amd64 or arm64",
                );
            }
            None
        }
    };
    if let Some(name) = &p.image.name
        && !super::is_profile_name(name)
    {
        c.problem(
            "image.name",
            format!("image.name {name:?} is not a usable file name"),
            "use lowercase letters, digits and `-`",
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in p.image.formats.iter().enumerate() {
        if !seen.insert(f) {
            c.problem(
                &format!("image.formats[{i}]"),
                format!("format {f} is listed twice"),
                "list each output format once",
            );
        }
    }
    if let (Some(b), Some(PartitionTable::Gpt)) = (board, p.image.partition_table)
        && b == Board::Rpi4
    {
        // The Pi 4 EEPROM boots GPT since 2020-09; nothing to refuse, but worth saying.
        let w = c.warn(
            "image.partition-table",
            "GPT on a Raspberry Pi 4 needs a bootloader EEPROM from 2020-09-03 or later",
        );
        c.warnings.push(w);
    }
    if let Size::Bytes(b) = p.image.boot_size
        && b < 32 << 20
    {
        c.problem(
            "image.boot-size",
            format!(
                "image.boot-size {} is too small for a FAT32 boot partition",
                p.image.boot_size
            ),
            "use at least 64MiB (FAT32 needs 65525 clusters); 512MiB is the default",
        );
    }
    if let (Size::Bytes(total), Size::Bytes(boot)) = (p.image.size, p.image.boot_size)
        && total <= boot + (64 << 20)
    {
        c.problem(
            "image.size",
            format!(
                "image.size {} leaves no room for a root filesystem next to the {} boot partition",
                p.image.size, p.image.boot_size
            ),
            "use `auto` or a larger size, e.g. 4GiB",
        );
    }
    (board, arch)
}

/// `[base]`: one source, a valid checksum, partitions.
fn check_base(c: &mut Checker<'_>, p: &Profile) {
    if p.base.url.is_some() && p.base.path.is_some() {
        let key = c.nearest(&["base.path", "base.url"]);
        c.problem(
            key,
            "base.url and base.path are both set",
            "keep one: url to download the base, path for a local file",
        );
    }
    if let Some(url) = &p.base.url {
        check_url(c, "base.url", url, &["https", "http", "file"]);
    }
    if let Some(url) = &p.base.checksums_url {
        check_url(c, "base.checksums-url", url, &["https", "http", "file"]);
    }
    for (key, value) in [
        ("base.boot-partition", &p.base.boot_partition),
        ("base.root-partition", &p.base.root_partition),
        ("base.path", &p.base.path),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            c.problem(
                key,
                format!("{key} is empty"),
                format!("remove {key} or give it a value"),
            );
        }
    }
    if let Some(sha) = &p.base.sha256
        && !is_sha256(sha)
    {
        c.problem(
            "base.sha256",
            format!("base.sha256 {sha:?} is not a SHA-256"),
            "write 64 hexadecimal digits, or remove it and let the lockfile pin the base",
        );
    }
}

/// `[k3s]`: version, role, server, tokens, and what the board allows.
fn check_k3s(c: &mut Checker<'_>, p: &Profile, concrete: bool, board: Option<Board>) {
    let k = &p.k3s;
    if let Some(v) = &k.version
        && !is_k3s_version(v)
    {
        c.problem(
            "k3s.version",
            format!("k3s.version {v:?} is not a k3s release"),
            "write the release tag, e.g. v1.33.5+k3s1",
        );
    }
    if concrete && k.version.is_none() {
        c.problem(
            "k3s.version",
            "k3s.version is missing",
            "pin a k3s release, e.g. version = \"v1.33.5+k3s1\"",
        );
    }
    match k.role {
        None if concrete => c.problem(
            "k3s.role",
            "k3s.role is missing",
            "set k3s.role to server or agent",
        ),
        Some(Role::Agent) => {
            if k.server.is_none() {
                c.problem(
                    "k3s.server",
                    "an agent needs k3s.server, the URL of the server it joins",
                    "set k3s.server = \"https://<server>:6443\" (a mesh address or name)",
                );
            }
            if k.cluster_init {
                let key = c.nearest(&["k3s.cluster-init", "k3s.role"]);
                c.problem(
                    key,
                    "k3s.cluster-init is for servers; this profile's role is agent",
                    "remove cluster-init, or set k3s.role = \"server\"",
                );
            }
            if k.agent_token.is_some() {
                c.problem(
                    "k3s.agent-token",
                    "k3s.agent-token is a server setting; an agent joins with k3s.token",
                    "remove agent-token and reference the agent token as k3s.token",
                );
            }
        }
        Some(Role::Server) => {
            if !k.cluster_init && k.server.is_none() {
                c.problem(
                    "k3s.server",
                    "a server that does not start the cluster must join one: k3s.server is missing",
                    "set k3s.cluster-init = true on the first server, or k3s.server = \"https://<server>:6443\" on the others",
                );
            }
            if k.cluster_init && k.server.is_some() {
                let key = c.nearest(&["k3s.server", "k3s.cluster-init"]);
                c.problem(
                    key,
                    "k3s.cluster-init starts a new cluster, but k3s.server is set to join one",
                    "remove one of them: the first server has cluster-init, the others a server URL",
                );
            }
        }
        None => {}
    }
    if k.role == Some(Role::Server) && board.is_some_and(Board::is_raspberry_pi) {
        let w = c.warn(
            "k3s.role",
            "a k3s server on a Raspberry Pi runs etcd: flash this image to an SSD (USB or NVMe), \
             not an SD card — etcd's fsync load makes SD cards slow and wears them out",
        );
        c.warnings.push(w);
    }
    if k.role == Some(Role::Server) && board == Some(Board::Cloud) && k.server.is_some() {
        let w = c.warn(
            "k3s.server",
            "this cloud server joins an existing control plane: if that cluster's servers are at \
             home, etcd runs across the WAN, which k3s does not support; prefer cloud agents, or a \
             control plane of its own (cluster-init)",
        );
        c.warnings.push(w);
    }
    if concrete && k.role.is_some() && k.token.is_none() {
        c.problem(
            "k3s.token",
            "k3s.token is missing",
            "reference the cluster token by name: token = { secret = \"k3s-token\" }",
        );
    }
    if let Some(server) = &k.server {
        check_url(c, "k3s.server", server, &["https"]);
    }
    if let Some(url) = &k.url {
        check_download_url(c, "k3s.url", url);
    }
    for (i, l) in k.labels.iter().enumerate() {
        if !is_label(l) {
            c.problem(
                &format!("k3s.labels[{i}]"),
                format!("node label {l:?} is not key=value"),
                "write labels as \"key=value\", e.g. \"node.kubernetes.io/role=worker\"",
            );
        }
    }
    for (i, t) in k.taints.iter().enumerate() {
        if !is_taint(t) {
            c.problem(
                &format!("k3s.taints[{i}]"),
                format!("taint {t:?} is not key=value:Effect"),
                "write taints as \"key=value:NoSchedule\" (effects: NoSchedule, PreferNoSchedule, NoExecute)",
            );
        }
    }
    check_k3s_config(c, k);
}

/// The profile field that owns a `config.yaml` key imgbuild writes itself, for the help text.
fn owned_by(key: &str) -> Option<&'static str> {
    Some(match key {
        "token" | "token-file" | "agent-token" | "agent-token-file" => {
            "set k3s.token / k3s.agent-token (as secret references)"
        }
        "server" => "set k3s.server",
        "cluster-init" => "set k3s.cluster-init",
        "node-label" => "set k3s.labels (per node: labels in nodes.toml)",
        "node-taint" => "set k3s.taints (per node: taints in nodes.toml)",
        "node-ip" | "node-name" => {
            "set nothing: imgbuild sets it for each node from its mesh address and name"
        }
        "flannel-iface" => "set mesh.interface (imgbuild points flannel at the mesh)",
        "write-kubeconfig-mode" => {
            "set nothing: imgbuild writes the admin kubeconfig 0600, readable by root only"
        }
        _ => return None,
    })
}

/// `[k3s.config]`: every key a flag of the pinned k3s release, for this role, with a value of
/// the flag's kind; keys imgbuild writes itself are refused with the field that owns them.
/// Real k3s only warns about an unknown key (the setting is silently not applied) and an agent
/// with a server flag does not start, so both are caught here, before an image exists.
fn check_k3s_config(c: &mut Checker<'_>, k: &K3sSpec) {
    if k.config.is_empty() {
        return;
    }
    let set = k.version.as_deref().and_then(crate::flags::k3s);
    if set.is_none()
        && let Some(v) = &k.version
    {
        let w = c.warn(
            "k3s.version",
            format!(
                "k3s.config is not checked: imgbuild has no flag set for k3s {v} (it has {}); a misspelt key would be ignored by k3s",
                crate::flags::known_versions("k3s").join(", ")
            ),
        );
        c.warnings.push(w);
    }
    for (key, value) in &k.config {
        let at = format!("k3s.config.{key}");
        let (base, append) = match key.strip_suffix('+') {
            Some(b) => (b, true),
            None => (key.as_str(), false),
        };
        if let Some(instead) = owned_by(base) {
            c.problem(
                &at,
                format!("k3s.config.{key} is managed by imgbuild"),
                format!("remove it from k3s.config; {instead}"),
            );
            continue;
        }
        if let Some(set) = &set {
            check_k3s_key(c, set, k.role, &at, key, base, append, value);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_k3s_key(
    c: &mut Checker<'_>,
    set: &crate::flags::FlagSet,
    role: Option<Role>,
    at: &str,
    key: &str,
    base: &str,
    append: bool,
    value: &toml::Value,
) {
    use crate::flags::Kind;
    let v = &set.version;
    let for_role = |f: &crate::flags::Flag| {
        role.is_none_or(|r| f.role.is_some_and(|fr| fr.accepts(r.as_str())))
    };
    let Some(flag) = set.get(base) else {
        let (message, help) = match set.by_alias(base) {
            Some(f) => (
                format!("k3s.config.{key} is the one-letter form of {}", f.name),
                format!("write the full name: {}", f.name),
            ),
            None => (
                format!("k3s.config.{key} is not a setting of k3s {v}"),
                match set.nearest(base, for_role) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!(
                        "remove it; the settings are the flags of `k3s {} --help` of {v}",
                        role.map_or("server", |r| r.as_str())
                    ),
                },
            ),
        };
        c.problem(at, message, help);
        return;
    };
    if let (Some(r), Some(fr)) = (role, flag.role)
        && !fr.accepts(r.as_str())
    {
        let only = if r == Role::Agent { "server" } else { "agent" };
        c.problem(
            at,
            format!(
                "k3s.config.{key} is a k3s {only} setting; this profile's role is {} (k3s {} does not start with it)",
                r.as_str(),
                r.as_str()
            ),
            format!("remove it from this profile, or set k3s.role = \"{only}\""),
        );
        return;
    }
    let scalar = |v: &toml::Value| !matches!(v, toml::Value::Array(_) | toml::Value::Table(_));
    let wrong = match flag.kind {
        _ if append && flag.kind != Kind::List => Some((
            format!("k3s.config.{key}: `+` appends to a list, but {base} is not a list"),
            format!("write {base} without the `+`"),
        )),
        Kind::List => match value {
            toml::Value::Array(items) if items.iter().all(scalar) => None,
            toml::Value::Array(_) => Some((
                format!("k3s.config.{key} is a list of values, not of tables or lists"),
                format!("write {key} = [\"value\", …]"),
            )),
            other => Some((
                format!("k3s.config.{key} takes a list, but a single value is given"),
                format!("write it as a list: {key} = [{other}]"),
            )),
        },
        Kind::Scalar if !scalar(value) => Some((
            format!("k3s.config.{key} takes one value, but a list or table is given"),
            format!("write {key} = \"value\" (k3s would keep only one of the list's values)"),
        )),
        Kind::Bool if !matches!(value, toml::Value::Boolean(_)) => Some((
            format!("k3s.config.{key} is a switch: it takes true or false"),
            format!("write {key} = true"),
        )),
        _ => None,
    };
    if let Some((message, help)) = wrong {
        c.problem(at, message, help);
    }
}

/// The `tailscale up` flags our join script passes, checked against the pinned release.
fn check_tailscale_flags(c: &mut Checker<'_>, m: &MeshSpec) {
    let Some(version) = &m.version else { return };
    let Some(set) = crate::flags::tailscale_up(version) else {
        let w = c.warn(
            "mesh.version",
            format!(
                "the tailscale up flags imgbuild passes are not checked: imgbuild has no flag set \
                 for Tailscale {version} (it has {})",
                crate::flags::known_versions("tailscale").join(", ")
            ),
        );
        c.warnings.push(w);
        return;
    };
    let latest = crate::flags::known_versions("tailscale");
    for name in set.missing_up_flags() {
        c.problem(
            "mesh.version",
            format!(
                "tailscale up of Tailscale {version} has no --{name}, which imgbuild's join passes"
            ),
            format!(
                "pin a release that has it, e.g. version = \"{}\"",
                latest.last().unwrap_or(&"1.96.4")
            ),
        );
    }
}

/// `[mesh]`: the provider's required values.
fn check_mesh(c: &mut Checker<'_>, p: &Profile, concrete: bool) {
    let m = &p.mesh;
    if let Some(url) = &m.url {
        check_download_url(c, "mesh.url", url);
    }
    match m.provider {
        MeshProvider::Tailscale => {
            check_tailscale_flags(c, m);
            if concrete && m.version.is_none() {
                c.problem(
                    "mesh.version",
                    "mesh.version is missing",
                    "pin a Tailscale release, e.g. version = \"1.88.3\"",
                );
            }
            if concrete && m.auth_key.is_none() {
                c.problem(
                    "mesh.auth-key",
                    "mesh.auth-key is missing: a Tailscale node joins with a one-off auth key",
                    "reference it by name: auth-key = { secret = \"tailscale-authkey\" }",
                );
            }
            if m.network.is_some() {
                c.problem(
                    "mesh.network",
                    "mesh.network is a ZeroTier setting; this profile uses Tailscale",
                    "remove mesh.network",
                );
            }
            for (i, t) in m.tags.iter().enumerate() {
                if !t.starts_with("tag:") || t.len() <= 4 {
                    c.problem(
                        &format!("mesh.tags[{i}]"),
                        format!("Tailscale tag {t:?} must start with `tag:`"),
                        format!("write \"tag:{}\"", t.trim_start_matches("tag:")),
                    );
                }
            }
            if let Some(ls) = &m.login_server {
                check_url(c, "mesh.login-server", ls, &["https", "http"]);
            }
        }
        MeshProvider::Zerotier => {
            match &m.network {
                None if concrete => c.problem(
                    "mesh.network",
                    "mesh.network is missing: ZeroTier needs the network id to join",
                    "set mesh.network to the 16-hex-digit network id",
                ),
                Some(n) if n.len() != 16 || !n.bytes().all(|b| b.is_ascii_hexdigit()) => c.problem(
                    "mesh.network",
                    format!("ZeroTier network id {n:?} is not 16 hexadecimal digits"),
                    "copy the network id from ZeroTier Central",
                ),
                _ => {}
            }
            if concrete && m.version.is_none() {
                c.problem(
                    "mesh.version",
                    "mesh.version is missing",
                    "pin a ZeroTier release, e.g. version = \"1.14.2\"",
                );
            }
            for (key, set) in [
                ("mesh.auth-key", m.auth_key.is_some()),
                ("mesh.login-server", m.login_server.is_some()),
                ("mesh.tags", !m.tags.is_empty()),
            ] {
                if set {
                    c.problem(
                        key,
                        format!("{key} is a Tailscale setting; this profile uses ZeroTier"),
                        format!("remove {key} (ZeroTier members are authorised in the controller)"),
                    );
                }
            }
        }
        MeshProvider::None => {
            for (key, set) in [
                ("mesh.version", m.version.is_some()),
                ("mesh.auth-key", m.auth_key.is_some()),
                ("mesh.network", m.network.is_some()),
                ("mesh.tags", !m.tags.is_empty()),
                ("mesh.login-server", m.login_server.is_some()),
            ] {
                if set {
                    c.problem(
                        key,
                        format!("{key} is set, but mesh.provider is none"),
                        "set mesh.provider to tailscale or zerotier, or remove the mesh settings",
                    );
                }
            }
        }
    }
}

/// `[[users]]`: names and SSH keys.
fn check_users(c: &mut Checker<'_>, p: &Profile) {
    let mut names = std::collections::BTreeSet::new();
    for (i, u) in p.users.iter().enumerate() {
        if !is_user_name(&u.name) {
            c.problem(
                &format!("users[{i}].name"),
                format!("user name {:?} is not a valid Linux user name", u.name),
                "use lowercase letters, digits, `_` and `-`, starting with a letter, at most 32 characters",
            );
        } else if !names.insert(u.name.clone()) {
            c.problem(
                &format!("users[{i}].name"),
                format!("user {:?} is defined twice", u.name),
                "merge the two [[users]] entries",
            );
        }
        for (j, g) in u.groups.iter().enumerate() {
            if !is_user_name(g) {
                c.problem(
                    &format!("users[{i}].groups[{j}]"),
                    format!("group name {g:?} is not a valid Linux group name"),
                    "list one group per string (\"adm\", \"docker\"), each lowercase letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters",
                );
            }
        }
        if let Some(sh) = &u.shell
            && !is_shell_path(sh)
        {
            c.problem(
                &format!("users[{i}].shell"),
                format!("shell {sh:?} is not an absolute path to a program"),
                "give the login shell's path, e.g. \"/bin/bash\" (letters, digits and `/._+-` only)",
            );
        }
        for (j, key) in u.ssh_keys.iter().enumerate() {
            if !is_ssh_public_key(key) {
                c.problem(
                    &format!("users[{i}].ssh-keys[{j}]"),
                    "this is not an OpenSSH public key line",
                    "paste the whole line of the .pub file, e.g. \"ssh-ed25519 AAAA… you@host\" (never a private key)",
                );
            }
        }
    }
}

/// `[kernel]` and `[pi.config-txt]`.
fn check_kernel_and_pi(c: &mut Checker<'_>, p: &Profile, board: Option<Board>) {
    for (i, a) in p.kernel.cmdline.iter().enumerate() {
        if a.is_empty()
            || a.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"')
        {
            c.problem(
                &format!("kernel.cmdline[{i}]"),
                format!("kernel argument {a:?} is empty or contains white space, a quote or a control character"),
                "list one argument per string: [\"quiet\", \"console=ttyS0\"]",
            );
        }
    }
    let ct = &p.pi.config_txt;
    let has_pi = !(ct.all.is_empty() && ct.pi4.is_empty() && ct.pi5.is_empty());
    if has_pi && board.is_some_and(|b| !b.is_raspberry_pi()) {
        let key = c.nearest(&["pi.config-txt", "image.board"]);
        c.problem(
            key,
            "pi.config-txt is only used on Raspberry Pi boards",
            "remove the [pi.config-txt] section, or set image.board to rpi4, rpi5 or rpi",
        );
    }
    for (section, lines) in [("all", &ct.all), ("pi4", &ct.pi4), ("pi5", &ct.pi5)] {
        for (i, l) in lines.iter().enumerate() {
            if l.contains('\n') || l.trim_start().starts_with('[') {
                c.problem(
                    &format!("pi.config-txt.{section}[{i}]"),
                    format!("config.txt line {l:?} must be one setting, not a section or several lines"),
                    "put each setting in its own string; sections come from the key (all, pi4, pi5)",
                );
            }
        }
    }
}

fn check_time(c: &mut Checker<'_>, p: &Profile) {
    let max = TimeSpec::MAX_SYNC_WAIT;
    if let Some(w) = p.time.sync_wait.filter(|w| !(1..=max).contains(w)) {
        c.problem(
            "time.sync-wait",
            format!("time.sync-wait = {w} is outside 1..={max} seconds"),
            format!(
                "set the seconds the boot waits for NTP, e.g. time.sync-wait = {}; 0 would \
                 make timeout(1) wait forever",
                TimeSpec::DEFAULT_SYNC_WAIT
            ),
        );
    }
}

fn check_url(c: &mut Checker<'_>, key: &str, url: &str, schemes: &[&str]) {
    if !super::is_url(url, schemes) {
        c.problem(
            key,
            format!("{key} {url:?} is not a usable URL"),
            format!(
                "write a full URL starting with {}://",
                schemes.join("://, ")
            ),
        );
    }
}

/// A download URL template: `{version}` and `{arch}` are substituted, the rest must be a URL.
fn check_download_url(c: &mut Checker<'_>, key: &str, url: &str) {
    let filled = url.replace("{version}", "v").replace("{arch}", "a");
    check_url(c, key, &filled, &["https", "http", "file"]);
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_k3s_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let (semver, build) = rest.split_once('+').unwrap_or((rest, ""));
    let parts: Vec<&str> = semver.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && build.starts_with("k3s")
        && build[3..].bytes().all(|b| b.is_ascii_digit())
        && build.len() > 3
}

/// A Kubernetes node label `key=value` (shared with the inventory's checks).
pub(crate) fn is_label(l: &str) -> bool {
    l.split_once('=').is_some_and(|(k, v)| {
        !k.is_empty()
            && k.len() <= 317
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    })
}

/// A Kubernetes taint `key[=value]:Effect`.
pub(crate) fn is_taint(t: &str) -> bool {
    let Some((kv, effect)) = t.rsplit_once(':') else {
        return false;
    };
    let kv_ok = if kv.contains('=') {
        is_label(kv)
    } else {
        is_label(&format!("{kv}="))
    };
    kv_ok && matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
}

fn is_user_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_shell_path(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 256
        && !s.contains("//")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
}

/// One `authorized_keys` line: type, base64 blob, optional comment; a line break would make it
/// two lines (the second could carry `command=` options), so control characters are refused.
fn is_ssh_public_key(k: &str) -> bool {
    if k.chars().any(char::is_control) {
        return false;
    }
    let mut parts = k.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return false;
    };
    let kind_ok = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-");
    kind_ok
        && blob.starts_with("AAAA")
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        && !k.contains("PRIVATE KEY")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k3s_versions() {
        assert!(is_k3s_version("v1.33.5+k3s1"));
        assert!(!is_k3s_version("1.33.5+k3s1"));
        assert!(!is_k3s_version("v1.33+k3s1"));
        assert!(!is_k3s_version("v1.33.5"));
        assert!(!is_k3s_version("v1.33.5+k3s"));
    }

    #[test]
    fn labels_and_taints() {
        assert!(is_label("node.kubernetes.io/role=worker"));
        assert!(is_label("a="));
        assert!(!is_label("novalue"));
        assert!(!is_label("a=b c"));
        assert!(is_taint("dedicated=gpu:NoSchedule"));
        assert!(is_taint("node-role.kubernetes.io/control-plane:NoSchedule"));
        assert!(!is_taint("dedicated=gpu"));
        assert!(!is_taint("dedicated=gpu:Never"));
    }

    #[test]
    fn ssh_keys() {
        assert!(is_ssh_public_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx me@host"
        ));
        assert!(!is_ssh_public_key("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(!is_ssh_public_key("ssh-ed25519"));
    }
}
