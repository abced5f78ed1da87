//! Reading bmaptool block maps (format 2.x) strictly: every inconsistency is refused before a
//! byte is written, because a wrong map silently leaves stale data on the target.
//!
//! The XML goes through `roxmltree` (a maintained, dependency-free parser) so comments, entities
//! and attribute quoting are handled by someone else's tested code; what the fields mean and how
//! they must agree is checked here. `bmap-parser` was not used: it never verifies
//! `BmapFileChecksum`, does not check the version, and panics on some malformed ranges.

use crate::disk::bmap::{BlockMap, file_checksum};

/// A block map that cannot be trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BmapError {
    #[error("not valid XML: {0}")]
    Xml(String),
    #[error("the root element is <{0}>, not <bmap>")]
    Root(String),
    #[error(
        "bmap version {0:?} is not supported (only 2.x, as bmaptool 3 writes); regenerate it with `bmaptool create` or rebuild the image"
    )]
    Version(String),
    #[error("<{0}> is missing")]
    Missing(&'static str),
    #[error("<{field}> is {value:?}, not {want}")]
    Field {
        field: &'static str,
        value: String,
        want: &'static str,
    },
    #[error("checksum type {0:?} is not supported (only sha256)")]
    ChecksumType(String),
    #[error(
        "the file's own checksum does not match (BmapFileChecksum {stated}, computed {computed}): the .bmap was edited or damaged"
    )]
    FileChecksum { stated: String, computed: String },
    #[error("<BlocksCount> {stated} disagrees with ImageSize / BlockSize ({computed})")]
    BlocksCount { stated: u64, computed: u64 },
    #[error("<MappedBlocksCount> {stated} disagrees with the ranges ({computed} blocks)")]
    MappedCount { stated: u64, computed: u64 },
    #[error("range {index} ({text:?}): {why}")]
    Range {
        index: usize,
        text: String,
        why: String,
    },
}

fn child_text<'a>(root: roxmltree::Node<'a, 'a>, name: &'static str) -> Result<&'a str, BmapError> {
    root.children()
        .find(|n| n.has_tag_name(name))
        .map(|n| n.text().unwrap_or("").trim())
        .ok_or(BmapError::Missing(name))
}

fn number(root: roxmltree::Node<'_, '_>, name: &'static str) -> Result<u64, BmapError> {
    let t = child_text(root, name)?;
    t.parse().map_err(|_| BmapError::Field {
        field: name,
        value: t.to_string(),
        want: "a whole number",
    })
}

/// Checks `BmapFileChecksum`: the SHA-256 of the file with that value replaced by `0`s.
fn check_file_checksum(text: &str, stated: &str) -> Result<(), BmapError> {
    let bad = || BmapError::FileChecksum {
        stated: stated.to_string(),
        computed: String::new(),
    };
    if stated.len() != 64 || !stated.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let computed = file_checksum(text, stated);
    if !computed.eq_ignore_ascii_case(stated) {
        return Err(BmapError::FileChecksum {
            stated: stated.to_string(),
            computed,
        });
    }
    Ok(())
}

/// `"a-b"` or `"a"` → inclusive block numbers.
fn parse_range(text: &str) -> Option<(u64, u64)> {
    let t = text.trim();
    match t.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => t.parse().ok().map(|a| (a, a)),
    }
}

fn check_version(root: roxmltree::Node<'_, '_>) -> Result<(), BmapError> {
    let v = root.attribute("version").unwrap_or("");
    let major = v.split('.').next().unwrap_or("");
    let minor_ok = v
        .split('.')
        .nth(1)
        .is_some_and(|m| m.parse::<u32>().is_ok());
    if major != "2" || !minor_ok || v.split('.').count() != 2 {
        return Err(BmapError::Version(v.to_string()));
    }
    Ok(())
}

/// Parses and checks a block map. The result's ranges are in ascending order, disjoint, inside
/// the image, each with a 64-digit SHA-256.
pub fn parse(text: &str) -> Result<BlockMap, BmapError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| BmapError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("bmap") {
        return Err(BmapError::Root(root.tag_name().name().to_string()));
    }
    check_version(root)?;
    let kind = child_text(root, "ChecksumType")?;
    if !kind.eq_ignore_ascii_case("sha256") {
        return Err(BmapError::ChecksumType(kind.to_string()));
    }
    check_file_checksum(text, child_text(root, "BmapFileChecksum")?)?;
    let image_size = number(root, "ImageSize")?;
    let block_size = number(root, "BlockSize")?;
    if block_size == 0 || block_size % 512 != 0 || block_size > 1 << 24 {
        return Err(BmapError::Field {
            field: "BlockSize",
            value: block_size.to_string(),
            want: "a multiple of 512 up to 16 MiB",
        });
    }
    let blocks = image_size.div_ceil(block_size);
    let stated = number(root, "BlocksCount")?;
    if stated != blocks {
        return Err(BmapError::BlocksCount {
            stated,
            computed: blocks,
        });
    }
    let map = root
        .children()
        .find(|n| n.has_tag_name("BlockMap"))
        .ok_or(BmapError::Missing("BlockMap"))?;
    let ranges = parse_ranges(map, blocks)?;
    let mapped: u64 = ranges.iter().map(|(f, l, _)| l - f + 1).sum();
    let stated = number(root, "MappedBlocksCount")?;
    if stated != mapped {
        return Err(BmapError::MappedCount {
            stated,
            computed: mapped,
        });
    }
    Ok(BlockMap {
        image_size,
        block_size,
        ranges,
    })
}

fn parse_ranges(
    map: roxmltree::Node<'_, '_>,
    blocks: u64,
) -> Result<Vec<(u64, u64, String)>, BmapError> {
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    for (index, r) in map.children().filter(|n| n.is_element()).enumerate() {
        let text = r.text().unwrap_or("").trim().to_string();
        let bad = |why: String| BmapError::Range {
            index,
            text: text.clone(),
            why,
        };
        if !r.has_tag_name("Range") {
            return Err(bad(format!("unexpected <{}>", r.tag_name().name())));
        }
        let (first, last) = parse_range(&text).ok_or_else(|| bad("not `N` or `N-M`".into()))?;
        if first > last {
            return Err(bad("its first block is after its last".into()));
        }
        if last >= blocks {
            return Err(bad(format!(
                "block {last} is past the end of the image ({blocks} blocks)"
            )));
        }
        if let Some(prev) = out.last()
            && first <= prev.1
        {
            return Err(bad(format!(
                "overlaps or comes before the previous range (which ends at block {})",
                prev.1
            )));
        }
        let sum = r
            .attribute("chksum")
            .ok_or_else(|| bad("no chksum attribute".into()))?;
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("chksum {sum:?} is not a SHA-256")));
        }
        out.push((first, last, sum.to_ascii_lowercase()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::bmap::stated_checksum;

    fn sample() -> BlockMap {
        BlockMap {
            image_size: 40960 + 100,
            block_size: 4096,
            ranges: vec![
                (0, 1, "ab".repeat(32)),
                (5, 5, "cd".repeat(32)),
                (10, 10, "ef".repeat(32)),
            ],
        }
    }

    /// Rewrites the XML and re-signs it, so only the semantic check can catch the change.
    fn resign(xml: &str) -> String {
        let stated = stated_checksum(xml).unwrap();
        let sum = file_checksum(xml, stated);
        xml.replacen(stated, &sum, 1)
    }

    #[test]
    fn round_trips_our_writer() {
        let m = sample();
        assert_eq!(parse(&m.to_xml()).unwrap(), m);
    }

    #[test]
    fn refuses_hostile_maps() {
        let xml = sample().to_xml();
        let cases = [
            ("> 10 </Range>", "> 11 </Range>", "past the end"),
            ("> 5 </Range>", "> 1-6 </Range>", "overlaps"),
            ("> 10 </Range>", "> 3 </Range>", "comes before"),
            ("> 5 </Range>", "> 7-6 </Range>", "first block is after"),
            ("version=\"2.0\"", "version=\"3.0\"", "version"),
            ("version=\"2.0\"", "version=\"1.3\"", "version"),
            ("sha256 </Checksum", "sha512 </Checksum", "sha512"),
            (
                "<MappedBlocksCount> 4",
                "<MappedBlocksCount> 5",
                "MappedBlocksCount",
            ),
            ("<BlocksCount> 11", "<BlocksCount> 12", "BlocksCount"),
            ("chksum=\"cdcd", "chksum=\"zzcd", "not a SHA-256"),
        ];
        for (from, to, want) in cases {
            assert!(xml.contains(from), "{from}");
            let bad = resign(&xml.replacen(from, to, 1));
            let e = parse(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{from} → {to}: {e}");
        }
        // An edit without re-signing: the file checksum catches it.
        let e = parse(&xml.replacen("> 10 </Range>", "> 9 </Range>", 1)).unwrap_err();
        assert!(matches!(e, BmapError::FileChecksum { .. }), "{e}");
        assert!(matches!(parse("<bmap"), Err(BmapError::Xml(_))));
    }
}
