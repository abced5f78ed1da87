use std::io::Cursor;

use super::*;
use crate::blockio::region::VecSink;
use crate::disk::bmap::{BLOCK_SIZE, BlockMap, mapped_blocks};
use crate::disk::gpt::{GptEntry, GptTable};
use crate::disk::layout::PartType;
use crate::flash::plan::{MIB, mapped_from_bmap, mapped_whole, plan};
use crate::flash::table::partitions;

const IMAGE: u64 = 40 * MIB;

/// A GPT image: a "FAT" partition at 1 MiB and a data partition at 20 MiB, a few scattered
/// regions written, everything else a hole; and its block map.
fn image() -> (Vec<u8>, BlockMap) {
    let mut s = VecSink::default();
    let entry = |t: PartType, n: u8, first: u64, last: u64| GptEntry {
        type_guid: t.gpt_type(),
        unique_guid: format!("11111111-2222-4333-8444-5555555555{n:02}")
            .parse()
            .unwrap(),
        first_lba: first,
        last_lba: last,
        attributes: 0,
        name: format!("p{n}"),
    };
    GptTable {
        disk_guid: "01234567-89ab-4def-8123-456789abcdef".parse().unwrap(),
        sectors: IMAGE / 512,
        entries: vec![
            entry(PartType::Esp, 1, 2048, 40959),
            entry(PartType::LinuxGeneric, 2, 40960, 79999),
        ],
    }
    .write(&mut s)
    .unwrap();
    for (at, len, v) in [(MIB, 5000, 1u8), (3 * MIB, 9000, 2), (25 * MIB, 70000, 3)] {
        let data: Vec<u8> = (0..len).map(|i| v.wrapping_add((i % 251) as u8)).collect();
        s.write_at(at, &data).unwrap();
    }
    s.buf.resize(IMAGE as usize, 0);
    let ranges = mapped_blocks(&s.written, BLOCK_SIZE)
        .into_iter()
        .map(|(f, l)| {
            let end = ((l + 1) * BLOCK_SIZE).min(IMAGE) as usize;
            let sum = hex::encode(Sha256::digest(&s.buf[(f * BLOCK_SIZE) as usize..end]));
            (f, l, sum)
        })
        .collect();
    let map = BlockMap {
        image_size: IMAGE,
        block_size: BLOCK_SIZE,
        ranges,
    };
    (s.buf, map)
}

fn flash(img: &[u8], p: &Plan, target: &mut Cursor<Vec<u8>>) -> Result<Written, FlashError> {
    wipe_table(p, target)?;
    let w = write(
        p,
        &mut Seekable(Cursor::new(img)),
        target,
        None,
        &Progress::quiet(),
    )?;
    let mut checks = w.checks.clone();
    verify(target, &checks, &Progress::quiet())?;
    checks.extend(finish(&w, target)?);
    verify(target, &checks, &Progress::quiet())?;
    Ok(w)
}

#[test]
fn sparse_flash_onto_dirty_media_relocates_the_gpt_and_verifies() {
    let (img, map) = image();
    let target_size = 2 * IMAGE;
    let mut target = Cursor::new(vec![0xAAu8; target_size as usize]);
    let (gpt, parts) = partitions(&img[..MIB as usize]).unwrap();
    let p = plan(
        IMAGE,
        target_size,
        mapped_from_bmap(&map),
        &parts,
        None,
        gpt,
    )
    .unwrap();
    flash(&img, &p, &mut target).unwrap();
    let t = target.get_ref();
    // Table readable at the target's size; every mapped byte and every metadata zone equal.
    let back = GptTable::read(&mut Cursor::new(t), target_size).unwrap();
    assert_eq!(back.sectors, target_size / 512);
    assert_eq!(back.entries.len(), 2);
    let same = |a: u64, b: u64| t[a as usize..b as usize] == img[a as usize..b as usize];
    assert!(same(MIB, 18 * MIB), "the FAT zone differs");
    assert!(same(25 * MIB, 25 * MIB + 70000), "the mapped data differs");
    // Don't-care holes keep their stale bytes: the flash was sparse.
    assert!(
        t[30 * MIB as usize..31 * MIB as usize]
            .iter()
            .all(|&b| b == 0xAA)
    );
    assert!(
        t[(2 * IMAGE - MIB) as usize..(2 * IMAGE - 17 * 1024) as usize]
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn same_size_target_gets_the_image_bytes_from_a_stream_too() {
    let (img, map) = image();
    let mut target = Cursor::new(vec![0u8; IMAGE as usize]);
    let (gpt, parts) = partitions(&img[..MIB as usize]).unwrap();
    let p = plan(IMAGE, IMAGE, mapped_from_bmap(&map), &parts, None, gpt).unwrap();
    wipe_table(&p, &mut target).unwrap();
    let w = write(
        &p,
        &mut Streamed::new(&img[..]),
        &mut target,
        None,
        &Progress::quiet(),
    )
    .unwrap();
    finish(&w, &mut target).unwrap();
    assert!(
        target.get_ref() == &img,
        "flashed bytes differ from the image"
    );
    // Without a map, every byte is written.
    let mut raw = Cursor::new(vec![0x55u8; IMAGE as usize]);
    let p = plan(IMAGE, IMAGE, mapped_whole(IMAGE), &parts, None, gpt).unwrap();
    flash(&img, &p, &mut raw).unwrap();
    assert!(raw.get_ref() == &img);
}

#[test]
fn a_damaged_image_or_a_bad_read_back_is_caught() {
    let (mut img, map) = image();
    let (gpt, parts) = partitions(&img[..MIB as usize]).unwrap();
    let p = plan(IMAGE, IMAGE, mapped_from_bmap(&map), &parts, None, gpt).unwrap();
    let mut target = Cursor::new(vec![0u8; IMAGE as usize]);
    let w = write(
        &p,
        &mut Seekable(Cursor::new(&img)),
        &mut target,
        None,
        &Progress::quiet(),
    )
    .unwrap();
    target.get_mut()[25 * MIB as usize + 10] ^= 1;
    let e = verify(&mut target, &w.checks, &Progress::quiet()).unwrap_err();
    assert!(
        matches!(e, FlashError::Mismatch { start, .. } if start == 25 * MIB),
        "{e}"
    );
    img[3 * MIB as usize + 1] ^= 1;
    let e = write(
        &p,
        &mut Seekable(Cursor::new(&img)),
        &mut target,
        None,
        &Progress::quiet(),
    )
    .unwrap_err();
    assert!(
        matches!(e, FlashError::SourceMismatch { start, .. } if start == 3 * MIB),
        "{e}"
    );
    img[3 * MIB as usize + 1] ^= 1;
    let e = write(
        &p,
        &mut Streamed::new(&img[..30 * MIB as usize]),
        &mut target,
        None,
        &Progress::quiet(),
    )
    .unwrap_err();
    assert!(matches!(e, FlashError::Truncated { .. }), "{e}");
}

#[test]
fn the_boot_partition_is_rebuilt_and_its_zone_holes_zeroed() {
    let (img, map) = image();
    let (gpt, parts) = partitions(&img[..MIB as usize]).unwrap();
    let p = plan(IMAGE, IMAGE, mapped_from_bmap(&map), &parts, Some(0), gpt).unwrap();
    let mut target = Cursor::new(vec![0xAAu8; IMAGE as usize]);
    wipe_table(&p, &mut target).unwrap();
    let mut rebuild = |s: &mut dyn Sink| -> Result<(), String> {
        s.write_at(0, b"new boot sector")
            .map_err(|e| e.to_string())?;
        s.write_at(4 * MIB, b"seed").map_err(|e| e.to_string())
    };
    let w = write(
        &p,
        &mut Seekable(Cursor::new(&img)),
        &mut target,
        Some(&mut rebuild),
        &Progress::quiet(),
    )
    .unwrap();
    verify(&mut target, &w.checks, &Progress::quiet()).unwrap();
    let t = target.get_ref();
    assert_eq!(&t[MIB as usize..MIB as usize + 15], b"new boot sector");
    assert_eq!(&t[5 * MIB as usize..5 * MIB as usize + 4], b"seed");
    // The old content of the partition is gone (zeroed zone), not copied.
    assert!(
        t[3 * MIB as usize..4 * MIB as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        t[19 * MIB as usize..20 * MIB as usize]
            .iter()
            .all(|&b| b == 0xAA || b == 0)
    );
}
