//! Identifiers derived from the image seed, the way systemd-repart derives them.
//!
//! One 32-byte seed (the caller hashes the resolved profile and the lock into it) determines every
//! identifier in an image: the disk GUID, each partition's GUID, filesystem UUIDs, the ext4
//! directory hash seed, the FAT volume id and the MBR disk signature. Each is
//! `HMAC-SHA256(key = seed, message = fixed label ‖ inputs)`, truncated, so the same profile and
//! lock always give the same identifiers and `root=PARTUUID=…` is known before the image exists.
//!
//! Disk and partition GUIDs use systemd-repart's messages exactly (`"disk-uuid"`; the type GUID in
//! big-endian string order, followed by `le64(n)` for the n-th later partition of the same type),
//! with the RFC 4122 version-4 and variant bits set as repart does. Filesystem identifiers are
//! keyed by the partition GUID under labels of our own (`"fs-uuid"`, `"ext4-hash-seed"`,
//! `"fat-volume-id"`), so two partitions never share one.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A GUID/UUID held in RFC 4122 byte order (the order of its string form).
///
/// GPT stores the first three fields little-endian; use [`Guid::to_gpt_bytes`] for that.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

/// A string that is not a GUID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a GUID (expected 8-4-4-4-12 hex digits)")]
pub struct BadGuid(pub String);

impl Guid {
    /// The bytes in RFC 4122 (string) order.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The on-disk GPT form: time_low, time_mid and time_hi_and_version little-endian.
    pub fn to_gpt_bytes(&self) -> [u8; 16] {
        let mut b = self.0;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }

    /// Reads the on-disk GPT form.
    pub fn from_gpt_bytes(bytes: [u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(bytes).to_gpt_bytes())
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Upper-case form, as the Discoverable Partitions Specification and sgdisk print it.
    pub fn to_upper(&self) -> String {
        self.to_string().to_ascii_uppercase()
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = BadGuid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadGuid(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(groups.concat(), &mut out).map_err(|_| bad())?;
        Ok(Guid(out))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The identifiers of one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsIds {
    /// Filesystem UUID (ext4 `s_uuid`).
    pub uuid: Guid,
    /// ext4 directory hash seed (`s_hash_seed`).
    pub hash_seed: Guid,
    /// FAT volume id (serial number, shown as `XXXX-XXXX`).
    pub volume_id: u32,
}

/// The 32-byte seed every identifier of an image is derived from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ImageSeed([u8; 32]);

impl fmt::Debug for ImageSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageSeed({})", hex::encode(self.0))
    }
}

impl ImageSeed {
    pub fn new(bytes: [u8; 32]) -> Self {
        ImageSeed(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn hmac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    fn uuid(&self, parts: &[&[u8]]) -> Guid {
        let h = self.hmac(parts);
        let mut b = [0u8; 16];
        b.copy_from_slice(&h[..16]);
        // RFC 4122 version 4 and variant bits, as systemd's id128_make_v4_uuid().
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        Guid(b)
    }

    /// The GPT disk GUID.
    pub fn disk_guid(&self) -> Guid {
        self.uuid(&[b"disk-uuid"])
    }

    /// The unique GUID of the `index`-th partition (0-based) of type `type_guid`.
    pub fn partition_guid(&self, type_guid: Guid, index: u64) -> Guid {
        if index == 0 {
            self.uuid(&[type_guid.as_bytes()])
        } else {
            self.uuid(&[type_guid.as_bytes(), &index.to_le_bytes()])
        }
    }

    /// The identifiers of the filesystem in the partition whose GUID is `partition`.
    pub fn fs_ids(&self, partition: Guid) -> FsIds {
        let v = self.hmac(&[b"fat-volume-id", partition.as_bytes()]);
        FsIds {
            uuid: self.uuid(&[b"fs-uuid", partition.as_bytes()]),
            hash_seed: self.uuid(&[b"ext4-hash-seed", partition.as_bytes()]),
            volume_id: u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
        }
    }

    /// The MBR disk signature (offset 0x1B8). Never zero: zero means "no signature" to some tools,
    /// and `PARTUUID=00000000-02` would not identify the disk.
    pub fn mbr_disk_signature(&self) -> u32 {
        let h = self.hmac(&[b"mbr-disk-signature"]);
        h.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .find(|&s| s != 0)
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const ROOT_ARM64: &str = "b921b045-1df0-41c3-af44-4c6f280d3fae";
    const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

    fn seed() -> ImageSeed {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        ImageSeed::new(b)
    }

    #[test]
    fn guid_round_trips_and_swaps_for_gpt() {
        let g: Guid = ESP.parse().unwrap();
        assert_eq!(g.to_string(), ESP);
        assert_eq!(g.to_upper(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        let gpt = g.to_gpt_bytes();
        assert_eq!(&gpt[..4], &[0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(Guid::from_gpt_bytes(gpt), g);
        assert!("c12a7328-f81f-11d2-ba4b".parse::<Guid>().is_err());
        assert!(
            "z12a7328-f81f-11d2-ba4b-00a0c93ec93b"
                .parse::<Guid>()
                .is_err()
        );
    }

    /// Golden values: a change to the derivation changes every image, so it must be deliberate.
    /// Cross-checked with Python's `hmac` module (`hmac.new(bytes(range(32)), msg, sha256)`).
    #[test]
    fn derivations_are_stable() {
        let s = seed();
        let root: Guid = ROOT_ARM64.parse().unwrap();
        let p0 = s.partition_guid(root, 0);
        let fs = s.fs_ids(p0);
        let got = format!(
            "disk {}\npart0 {}\npart1 {}\nfs {}\nhash {}\nvol {:08x}\nmbr {:08x}\n",
            s.disk_guid(),
            p0,
            s.partition_guid(root, 1),
            fs.uuid,
            fs.hash_seed,
            fs.volume_id,
            s.mbr_disk_signature()
        );
        assert_eq!(
            got,
            "disk 55032aa1-72fe-49b9-8291-8fd49a28763e\n\
             part0 51efb6dd-cbc0-46f5-b988-5a59c86e7640\n\
             part1 19263825-bc38-4e70-91ff-3bf9c24ffbb1\n\
             fs ee3eeb8d-2165-4460-8cb4-63a9c7d256ca\n\
             hash 92de143c-9904-4fec-a188-69a4e22aa0a2\n\
             vol 6a8c7443\n\
             mbr 9dbd894d\n"
        );
    }

    /// Matches systemd-repart's derivation: HMAC-SHA256(seed, type UUID bytes), v4 bits.
    #[test]
    fn partition_guid_matches_repart_scheme() {
        let s = seed();
        let t: Guid = ESP.parse().unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(s.as_bytes()).unwrap();
        mac.update(t.as_bytes());
        let h = mac.finalize().into_bytes();
        let mut want = [0u8; 16];
        want.copy_from_slice(&h[..16]);
        want[6] = (want[6] & 0x0F) | 0x40;
        want[8] = (want[8] & 0x3F) | 0x80;
        assert_eq!(s.partition_guid(t, 0).0, want);
        let g = s.partition_guid(t, 3);
        assert_eq!(g.0[6] >> 4, 4, "version 4");
        assert_eq!(g.0[8] >> 6, 0b10, "RFC 4122 variant");
    }

    #[test]
    fn all_identifiers_are_distinct() {
        let s = seed();
        let types: Vec<Guid> = [ESP, ROOT_ARM64]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let mut seen = BTreeSet::new();
        assert!(seen.insert(s.disk_guid()));
        let mut vols = BTreeSet::new();
        for t in &types {
            for i in 0..4 {
                let p = s.partition_guid(*t, i);
                let f = s.fs_ids(p);
                assert!(seen.insert(p));
                assert!(seen.insert(f.uuid));
                assert!(seen.insert(f.hash_seed));
                assert!(vols.insert(f.volume_id));
            }
        }
        let other = ImageSeed::new([7; 32]);
        assert_ne!(other.disk_guid(), s.disk_guid());
        assert_ne!(other.mbr_disk_signature(), s.mbr_disk_signature());
    }
}
