//! Comparing two output folders (`imgbuild build --verify-repro`): on a difference, name the
//! first differing output and, through the manifests, the partition and file responsible, or the
//! byte range.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::disk::manifest::{self, Manifest, ManifestPartition};
use crate::output::MARKER;

/// The first difference found between two builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The output file that differs (or is missing on one side).
    pub file: String,
    /// What differs, as specific as the manifests allow.
    pub detail: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.detail)
    }
}

/// Output files of a folder: everything but the marker and temporary (dot) files, sorted.
fn outputs(dir: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != MARKER && !name.starts_with('.') && e.file_type()?.is_file() {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

fn load_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read(dir.join(manifest::FILE_NAME)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The first differing byte range of two readers: `(start, end)`, `end` where the bytes agree
/// again (or one ends). `None` when identical.
pub fn first_difference<A: Read, B: Read>(mut a: A, mut b: B) -> io::Result<Option<(u64, u64)>> {
    const CHUNK: usize = 1 << 20;
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut pos = 0u64;
    let mut start: Option<u64> = None;
    loop {
        let na = crate::blockio::read_up_to(&mut a, &mut ba)?;
        let nb = crate::blockio::read_up_to(&mut b, &mut bb)?;
        let n = na.min(nb);
        for i in 0..n {
            match (start, ba[i] == bb[i]) {
                (None, false) => start = Some(pos + i as u64),
                (Some(s), true) => return Ok(Some((s, pos + i as u64))),
                _ => {}
            }
        }
        pos += n as u64;
        if na != nb {
            // One side ended: everything from here (or from the open range) differs.
            let s = start.unwrap_or(pos);
            return Ok(Some((s, pos + (na.max(nb) - n) as u64)));
        }
        if na == 0 {
            return Ok(start.map(|s| (s, pos)));
        }
    }
}

fn partition_at(m: &Manifest, offset: u64) -> Option<&ManifestPartition> {
    m.partitions
        .iter()
        .find(|p| offset >= p.offset && offset < p.offset + p.size)
}

/// The first partition (and file in it) whose manifest entries differ.
fn manifest_difference(a: &Manifest, b: &Manifest) -> Option<String> {
    if a.source_date_epoch != b.source_date_epoch {
        return Some(format!(
            "SOURCE_DATE_EPOCH differs ({} vs {})",
            a.source_date_epoch, b.source_date_epoch
        ));
    }
    if a.table != b.table || a.disk_guid != b.disk_guid || a.disk_signature != b.disk_signature {
        return Some("the partition table differs (type or disk identifier)".into());
    }
    if a.partitions.len() != b.partitions.len() {
        return Some(format!(
            "{} partitions in one build, {} in the other",
            a.partitions.len(),
            b.partitions.len()
        ));
    }
    for (pa, pb) in a.partitions.iter().zip(&b.partitions) {
        let name = format!("partition {} ({:?})", pa.number, pa.label);
        if (pa.offset, pa.size, &pa.partuuid, &pa.type_id, &pa.fs)
            != (pb.offset, pb.size, &pb.partuuid, &pb.type_id, &pb.fs)
        {
            return Some(format!(
                "{name}: placement or identifiers differ (offset {} vs {}, size {} vs {}, PARTUUID {} vs {})",
                pa.offset, pb.offset, pa.size, pb.size, pa.partuuid, pb.partuuid
            ));
        }
        let mut fa = pa.files.iter();
        let mut fb = pb.files.iter();
        loop {
            match (fa.next(), fb.next()) {
                (None, None) => break,
                (Some(x), None) | (None, Some(x)) => {
                    return Some(format!("{name}: {} exists in only one build", x.path));
                }
                (Some(x), Some(y)) if x.path != y.path => {
                    return Some(format!(
                        "{name}: file lists diverge at {} vs {}",
                        x.path, y.path
                    ));
                }
                (Some(x), Some(y)) if x != y => {
                    return Some(format!(
                        "{name}: file {} differs (size {:?} vs {:?}, mode {} vs {}, owner {}:{} vs {}:{}, sha256 {} vs {})",
                        x.path,
                        x.size,
                        y.size,
                        x.mode,
                        y.mode,
                        x.uid,
                        x.gid,
                        y.uid,
                        y.gid,
                        x.sha256.as_deref().unwrap_or("-"),
                        y.sha256.as_deref().unwrap_or("-"),
                    ));
                }
                _ => {}
            }
        }
    }
    if a.inputs != b.inputs {
        return Some("the recorded inputs differ".into());
    }
    if a.profile != b.profile {
        return Some("the recorded profile differs".into());
    }
    None
}

/// Compares the outputs of two builds. `Ok(None)` when every output is byte-identical.
pub fn compare_dirs(a: &Path, b: &Path) -> io::Result<Option<Difference>> {
    let (la, lb) = (outputs(a)?, outputs(b)?);
    if let Some(name) = la
        .iter()
        .find(|n| !lb.contains(n))
        .or_else(|| lb.iter().find(|n| !la.contains(n)))
    {
        return Ok(Some(Difference {
            file: name.clone(),
            detail: "written by only one of the builds".into(),
        }));
    }
    let (ma, mb) = (load_manifest(a), load_manifest(b));
    let explained = match (&ma, &mb) {
        (Some(x), Some(y)) => manifest_difference(x, y),
        _ => None,
    };
    // The raw image first: its offsets map onto partitions.
    let raw = ma.as_ref().map(|m| m.image.file.clone());
    let mut order: Vec<&String> = la.iter().filter(|n| Some(*n) == raw.as_ref()).collect();
    order.extend(la.iter().filter(|n| Some(*n) != raw.as_ref()));
    for name in order {
        let diff = first_difference(File::open(a.join(name))?, File::open(b.join(name))?)?;
        let Some((start, end)) = diff else { continue };
        let mut detail = format!("bytes {start}..{end} differ");
        if Some(name) == raw.as_ref() {
            if let Some(p) = ma.as_ref().and_then(|m| partition_at(m, start)) {
                detail.push_str(&format!(
                    ", in partition {} ({:?}) at offset {} of it",
                    p.number,
                    p.label,
                    start - p.offset
                ));
            } else {
                detail.push_str(", in the partition table area");
            }
        }
        if let Some(why) = &explained {
            detail.push_str("; the manifests show the cause: ");
            detail.push_str(why);
        }
        return Ok(Some(Difference {
            file: name.clone(),
            detail,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(motd_sha: &str) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": 1,
            "image": {"file": "n.img", "size": 1, "sha256": "00"},
            "source_date_epoch": 1,
            "profile": {},
            "inputs": [],
            "table": "gpt",
            "disk_guid": "55032aa1-72fe-49b9-8291-8fd49a28763e",
            "partitions": [{
                "number": 2, "label": "root", "type": "root-arm64",
                "type_id": "b921b045-1df0-41c3-af44-4c6f280d3fae",
                "offset": 1048576, "size": 1048576,
                "partuuid": "51efb6dd-cbc0-46f5-b988-5a59c86e7640",
                "fs": {"kind": "ext4"},
                "files": [
                    {"path": "/etc/hostname", "kind": "file", "mode": "0644", "uid": 0, "gid": 0,
                     "size": 3, "sha256": "aa"},
                    {"path": "/etc/motd", "kind": "file", "mode": "0644", "uid": 0, "gid": 0,
                     "size": 3, "sha256": motd_sha},
                ],
            }],
        }))
        .unwrap()
    }

    #[test]
    fn names_the_partition_and_file_that_differ() {
        assert_eq!(manifest_difference(&manifest("bb"), &manifest("bb")), None);
        let d = manifest_difference(&manifest("bb"), &manifest("cc")).unwrap();
        assert!(
            d.starts_with("partition 2 (\"root\"): file /etc/motd differs"),
            "{d}"
        );
        assert!(d.contains("sha256 bb vs cc"), "{d}");
    }

    #[test]
    fn finds_the_first_differing_range() {
        let a = vec![0u8; 3 << 20];
        let mut b = a.clone();
        b[(1 << 20) + 5..(1 << 20) + 9].fill(1);
        b[2 << 20] = 1;
        assert_eq!(
            first_difference(&a[..], &b[..]).unwrap(),
            Some(((1 << 20) + 5, (1 << 20) + 9))
        );
        assert_eq!(first_difference(&a[..], &a[..]).unwrap(), None);
        assert_eq!(
            first_difference(&a[..10], &a[..12]).unwrap(),
            Some((10, 12))
        );
    }
}
