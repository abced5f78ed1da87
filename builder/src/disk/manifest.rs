//! `manifest.json`: what an image holds, for people, `imgbuild inspect` and `--verify-repro`.
//!
//! The resolved profile (which only ever holds *references* to secrets, never their values),
//! every input with its URL and SHA-256, every partition with offsets, type and GUIDs, and every
//! file of every filesystem with size, mode, owner, SHA-256, link count (files with several
//! names) and xattr names. No host path, clock or user.

use serde::{Deserialize, Serialize};

use crate::disk::image::{FsReport, ImageReport};
use crate::disk::layout::TableKind;
use crate::fs::FileRecord;

pub const FILE_NAME: &str = "manifest.json";
/// Bumped when a field changes meaning.
pub const FORMAT: u32 = 1;

/// One input of a build (base image, artifact), as pinned in the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    pub name: String,
    pub url: String,
    pub sha256: String,
}

/// The raw image the manifest describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// File name of the raw image (`pi-worker.img`), relative to the manifest.
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// A file of a filesystem (the manifest form of [`FileRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub kind: String,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
    /// Regular files with several names: the link count.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub links: Option<u32>,
    /// Names of the extended attributes (`security.capability`), sorted.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub xattrs: Vec<String>,
}

impl From<&FileRecord> for ManifestFile {
    fn from(r: &FileRecord) -> Self {
        ManifestFile {
            path: r.path.clone(),
            kind: r.kind.to_string(),
            mode: r.mode.clone(),
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            sha256: r.sha256.clone(),
            target: r.target.clone(),
            links: r.links,
            xattrs: r.xattrs.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPartition {
    pub number: usize,
    pub label: String,
    #[serde(rename = "type")]
    pub ptype: String,
    pub type_id: String,
    pub offset: u64,
    pub size: u64,
    pub partuuid: String,
    pub fs: FsReport,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub image: ImageEntry,
    pub source_date_epoch: u64,
    pub profile: serde_json::Value,
    pub inputs: Vec<InputRecord>,
    pub table: TableKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub disk_guid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub disk_signature: Option<String>,
    pub partitions: Vec<ManifestPartition>,
}

/// What replaces a value that looks like a secret.
pub const REDACTED: &str = "<redacted>";

/// Does a key name look like it holds a secret? Matched on words of the key, so `k3s_token`,
/// `authKey` and `password-file` match but `keyboard` does not.
fn secret_key(name: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in name.chars() {
        if (!c.is_ascii_alphanumeric() || c.is_ascii_uppercase()) && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        if c.is_ascii_alphanumeric() {
            cur.push(c.to_ascii_lowercase());
        }
    }
    words.push(cur);
    words.iter().any(|w| {
        matches!(
            w.as_str(),
            "token" | "tokens" | "key" | "keys" | "password" | "passwd" | "secret" | "secrets"
        )
    })
}

/// The profile with every value under a secret-looking key replaced by [`REDACTED`]. Profiles
/// hold only references to secrets; this is a second line of defence.
pub fn redact(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if secret_key(k) && !v.is_null() {
                        Value::String(REDACTED.into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

impl Manifest {
    pub fn new(
        report: &ImageReport,
        image: ImageEntry,
        epoch: u64,
        profile: &serde_json::Value,
        inputs: &[InputRecord],
    ) -> Manifest {
        Manifest {
            format: FORMAT,
            image,
            source_date_epoch: epoch,
            profile: redact(profile),
            inputs: inputs.to_vec(),
            table: report.table,
            disk_guid: report.disk_guid.map(|g| g.to_string()),
            disk_signature: report.disk_signature.clone(),
            partitions: report
                .partitions
                .iter()
                .map(|p| ManifestPartition {
                    number: p.number,
                    label: p.label.clone(),
                    ptype: p.ptype.name().to_string(),
                    type_id: p.type_id.clone(),
                    offset: p.offset,
                    size: p.size,
                    partuuid: p.partuuid.clone(),
                    fs: p.fs.clone(),
                    files: p.files.iter().map(ManifestFile::from).collect(),
                })
                .collect(),
        }
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secret_looking_keys_only() {
        let p = serde_json::json!({
            "k3s": {"token": {"secret": "k3s-token"}, "server": "https://h:6443"},
            "mesh": {"authKey": "tskey-abc", "keyboard": "us"},
            "users": [{"password-hash": "x", "name": "pi"}],
        });
        let r = redact(&p);
        assert_eq!(r["k3s"]["token"], REDACTED);
        assert_eq!(r["k3s"]["server"], "https://h:6443");
        assert_eq!(r["mesh"]["authKey"], REDACTED);
        assert_eq!(r["mesh"]["keyboard"], "us");
        assert_eq!(r["users"][0]["password-hash"], REDACTED);
        assert_eq!(r["users"][0]["name"], "pi");
        assert!(!r.to_string().contains("tskey"));
    }
}
