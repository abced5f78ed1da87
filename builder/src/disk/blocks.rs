//! Compressing an image unit by unit: each unit of input (one xz block's worth) becomes an xz
//! block ([`xzstream`]) and a zstd frame ([`zst`]), whichever are asked for, compressed on worker
//! threads and handed on in input order.
//!
//! Both formats compress a unit independently of the others, so its compressed bytes depend only
//! on its input and the settings, never on the thread count or on the units around it. That is
//! what lets an all-zero unit be compressed once per length and reused (holes cost nothing but
//! their few bytes of output), and a unit an earlier build compressed come from a
//! [`BlockStore`]: a rebuild compresses only the units whose input changed.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use sha2::{Digest, Sha256};

use crate::disk::xz::XzSettings;
use crate::disk::xzstream;
use crate::disk::zst::{self, ZstSettings};

/// One unit compressed on its own: an xz block (block header, compressed data, padding to 4
/// bytes, CRC64) or a zstd frame (header, blocks, checksum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub bytes: Vec<u8>,
    /// The xz index's "unpadded size" (`bytes` without the padding); a zstd frame's length.
    pub unpadded: u64,
    /// Input bytes this block holds.
    pub uncompressed: u64,
}

/// The format of a [`Block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Xz,
    Zst,
}

/// Where blocks compressed before are kept: by key ([`xzstream::block_key`],
/// [`zst::frame_key`]), across builds. An entry that does not hold exactly what was put there
/// must come back as `None`, never as a block.
pub trait BlockStore: Sync + std::fmt::Debug {
    fn get(&self, kind: Kind, key: &[u8; 32], uncompressed: u64) -> Option<Block>;
    /// Keeps a block; a failure only costs speed, so it is not an error.
    fn put(&self, kind: Kind, key: &[u8; 32], block: &Block);
}

/// One unit's input, in image order.
#[derive(Debug)]
pub enum Input {
    /// `n` zero bytes (a hole, or data that is all zeros).
    Zeros(u64),
    Data(Vec<u8>),
}

/// What every unit is compressed into, and with what.
#[derive(Debug, Clone, Copy)]
pub struct Encoders<'a> {
    /// Make xz blocks (each input at most `block_size` bytes).
    pub xz: Option<&'a XzSettings>,
    /// Make zstd frames.
    pub zst: Option<&'a ZstSettings>,
    /// Blocks of earlier builds.
    pub store: Option<&'a dyn BlockStore>,
    /// Worker threads (at least one is used). Does not change the bytes.
    pub threads: u32,
}

/// One unit compressed into each format asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unit {
    pub xz: Option<Block>,
    pub zst: Option<Block>,
}

impl Encoders<'_> {
    /// Compresses one unit (or takes it from the store). Its input is hashed once for both keys.
    pub fn unit(&self, data: &[u8]) -> io::Result<Unit> {
        let sha: [u8; 32] = Sha256::digest(data).into();
        let len = data.len() as u64;
        let xz = self
            .xz
            .map(|s| {
                self.cached(Kind::Xz, &xzstream::block_key(&sha, s), len, || {
                    xzstream::compress_block(data, s)
                })
            })
            .transpose()?;
        let zst = self
            .zst
            .map(|s| {
                self.cached(Kind::Zst, &zst::frame_key(&sha, s), len, || {
                    zst::compress_frame(data, s)
                })
            })
            .transpose()?;
        Ok(Unit { xz, zst })
    }

    fn cached(
        &self,
        kind: Kind,
        key: &[u8; 32],
        len: u64,
        compress: impl FnOnce() -> io::Result<Block>,
    ) -> io::Result<Block> {
        let Some(store) = self.store else {
            return compress();
        };
        if let Some(b) = store.get(kind, key, len) {
            return Ok(b);
        }
        let block = compress()?;
        store.put(kind, key, &block);
        Ok(block)
    }
}

type Done = (usize, io::Result<Arc<Unit>>);

/// Compresses `inputs` on `enc.threads` workers and hands every unit to `emit` in input order.
/// An all-zero unit is compressed once per length and then reused.
pub fn compress_units<I, F>(enc: &Encoders<'_>, inputs: I, mut emit: F) -> io::Result<()>
where
    I: Iterator<Item = io::Result<Input>>,
    F: FnMut(&Unit) -> io::Result<()>,
{
    let threads = enc.threads.max(1) as usize;
    // Bounded: at most `threads` inputs wait besides the ones being compressed.
    let (job_tx, job_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(threads);
    let job_rx = Mutex::new(job_rx);
    thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        for _ in 0..threads {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            scope.spawn(move || worker(enc, job_rx, done_tx));
        }
        drop(done_tx);
        let mut order = InOrder::new(&mut emit);
        let mut zeros: HashMap<u64, Arc<Unit>> = HashMap::new();
        for (i, input) in inputs.enumerate() {
            match input? {
                Input::Zeros(n) => {
                    let unit = match zeros.get(&n) {
                        Some(u) => u.clone(),
                        None => zero_unit(enc, n, &mut zeros)?,
                    };
                    order.put(i, unit)?;
                }
                Input::Data(d) => job_tx
                    .send((i, d))
                    .map_err(|_| io::Error::other("a compression worker stopped"))?,
            }
            while let Ok((j, unit)) = done_rx.try_recv() {
                order.put(j, unit?)?;
            }
        }
        // Dropping the sender (also on an early error above) ends the workers.
        drop(job_tx);
        for (j, unit) in done_rx {
            order.put(j, unit?)?;
        }
        order.finish()
    })
}

fn worker(
    enc: &Encoders<'_>,
    jobs: &Mutex<mpsc::Receiver<(usize, Vec<u8>)>>,
    done: mpsc::Sender<Done>,
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => break,
        };
        let Ok((i, data)) = job else { break };
        if done.send((i, enc.unit(&data).map(Arc::new))).is_err() {
            break;
        }
    }
}

fn zero_unit(
    enc: &Encoders<'_>,
    n: u64,
    memo: &mut HashMap<u64, Arc<Unit>>,
) -> io::Result<Arc<Unit>> {
    let len = usize::try_from(n).map_err(|_| io::Error::other("unit too large"))?;
    let unit = Arc::new(enc.unit(&vec![0u8; len])?);
    memo.insert(n, unit.clone());
    Ok(unit)
}

/// Units arrive out of order from the workers; they are handed on in order.
struct InOrder<'f, F> {
    emit: &'f mut F,
    next: usize,
    waiting: BTreeMap<usize, Arc<Unit>>,
}

impl<'f, F: FnMut(&Unit) -> io::Result<()>> InOrder<'f, F> {
    fn new(emit: &'f mut F) -> Self {
        InOrder {
            emit,
            next: 0,
            waiting: BTreeMap::new(),
        }
    }

    fn put(&mut self, i: usize, unit: Arc<Unit>) -> io::Result<()> {
        self.waiting.insert(i, unit);
        while let Some(u) = self.waiting.remove(&self.next) {
            (self.emit)(&u)?;
            self.next += 1;
        }
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        if !self.waiting.is_empty() {
            return Err(io::Error::other("a compressed unit went missing"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use crate::disk::xz;

    fn xz_settings(threads: u32) -> XzSettings {
        XzSettings {
            preset: 1,
            block_size: 1 << 16,
            threads,
        }
    }

    /// Data, zeros, data, and a short last unit.
    fn sample() -> Vec<u8> {
        let mut data: Vec<u8> = (0..150_000u32).map(|i| (i * 31 % 253) as u8).collect();
        data.extend(std::iter::repeat_n(0u8, 300_000));
        data.extend((0..9_999u32).map(|i| (i % 7) as u8));
        data
    }

    fn inputs(data: &[u8], unit: usize) -> impl Iterator<Item = io::Result<Input>> + '_ {
        data.chunks(unit).map(|c| {
            Ok(if c.iter().all(|&b| b == 0) {
                Input::Zeros(c.len() as u64)
            } else {
                Input::Data(c.to_vec())
            })
        })
    }

    /// The `.xz` and `.zst` streams of `data` in units of 64 KiB.
    fn streams(data: &[u8], threads: u32, store: Option<&dyn BlockStore>) -> (Vec<u8>, Vec<u8>) {
        let (xs, zs) = (xz_settings(threads), ZstSettings::default());
        let enc = Encoders {
            xz: Some(&xs),
            zst: Some(&zs),
            store,
            threads,
        };
        let mut x = xzstream::StreamWriter::new(Vec::new()).unwrap();
        let mut z = Vec::new();
        compress_units(&enc, inputs(data, 1 << 16), |u| {
            x.push(u.xz.as_ref().unwrap())?;
            z.extend(&u.zst.as_ref().unwrap().bytes);
            Ok(())
        })
        .unwrap();
        (x.finish().unwrap(), z)
    }

    #[test]
    fn parallel_units_equal_liblzmas_stream_and_decode_from_zstd_frames() {
        let data = sample();
        let mut whole = xz::encoder(Vec::new(), &xz_settings(2)).unwrap();
        whole.write_all(&data).unwrap();
        let want_xz = whole.finish().unwrap();
        let (x, z) = streams(&data, 2, None);
        assert_eq!(x, want_xz);
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&z[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
        // Serially, one frame per unit: the same bytes.
        let serial: Vec<u8> = data
            .chunks(1 << 16)
            .flat_map(|c| {
                zst::compress_frame(c, &ZstSettings::default())
                    .unwrap()
                    .bytes
            })
            .collect();
        assert_eq!(z, serial);
        // The thread count changes nothing.
        assert_eq!(streams(&data, 1, None), (x.clone(), z.clone()));
        assert_eq!(streams(&data, 5, None), (x, z));
    }

    #[test]
    fn a_failing_input_stops_the_pass_with_its_error() {
        let s = xz_settings(2);
        let enc = Encoders {
            xz: Some(&s),
            zst: None,
            store: None,
            threads: 2,
        };
        let inputs = (0..10).map(|i| {
            if i == 5 {
                Err(io::Error::other("read failed"))
            } else {
                Ok(Input::Data(vec![i as u8; 1000]))
            }
        });
        let e = compress_units(&enc, inputs, |_| Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "read failed");
    }

    /// Counts what it was asked, by kind; hands out what was put.
    #[derive(Default, Debug)]
    struct MemStore {
        blocks: Mutex<HashMap<(Kind, [u8; 32]), Block>>,
        xz_hits: AtomicUsize,
        zst_hits: AtomicUsize,
    }

    impl BlockStore for MemStore {
        fn get(&self, kind: Kind, key: &[u8; 32], _: u64) -> Option<Block> {
            let b = self.blocks.lock().unwrap().get(&(kind, *key)).cloned();
            if b.is_some() {
                match kind {
                    Kind::Xz => &self.xz_hits,
                    Kind::Zst => &self.zst_hits,
                }
                .fetch_add(1, SeqCst);
            }
            b
        }
        fn put(&self, kind: Kind, key: &[u8; 32], block: &Block) {
            self.blocks
                .lock()
                .unwrap()
                .insert((kind, *key), block.clone());
        }
    }

    #[test]
    fn stored_blocks_and_frames_are_reused_and_give_the_same_streams() {
        let data = sample();
        let store = MemStore::default();
        let cold = streams(&data, 2, Some(&store));
        assert_eq!(store.xz_hits.load(SeqCst), 0);
        // Five data units and one length of zero unit, each in both formats.
        assert_eq!(store.blocks.lock().unwrap().len(), 2 * 6);
        let warm = streams(&data, 2, Some(&store));
        assert_eq!(warm, cold);
        assert_eq!(streams(&data, 2, None), cold);
        // The three zero units are asked for once (then memoized): 5 + 1 hits per format.
        assert_eq!(store.xz_hits.load(SeqCst), 6);
        assert_eq!(store.zst_hits.load(SeqCst), 6);
        // Another preset is another key: nothing reused.
        let sha = [0u8; 32];
        let (s, s9) = (
            xz_settings(1),
            XzSettings {
                preset: 9,
                ..xz_settings(1)
            },
        );
        assert_ne!(
            xzstream::block_key(&sha, &s),
            xzstream::block_key(&sha, &s9)
        );
    }
}
