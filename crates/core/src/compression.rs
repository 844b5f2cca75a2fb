//! Layer compression: recognised by magic bytes (gzip, zstd, none; BuildKit mislabels zstd,
//! so media types are not trusted), read back, and written as gzip or zstd on every core.
//! Synchronous.
//!
//! gzip is written as pigz writes it: the input is cut into [`GZIP_BLOCK`]-byte blocks, each
//! deflated on its own thread with the 32 KiB before it as its dictionary and ended with a
//! sync flush, and the blocks are joined into one gzip member (RFC 1952) with the CRC and
//! length of the whole. The blocks do not depend on how many threads there are, so the
//! same input at the same level always gives the same bytes, and the same digest. zstd uses
//! the library's own workers, whose output is likewise the same for any number of them.

use std::io::{self, Read, Write};
use std::path::Path;

use crate::hash::HashingWriter;
use crate::reference::Digest;

/// What a layer blob is compressed with, by its first bytes (BuildKit mislabels zstd, so
/// the media type is not trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Zstd,
    None,
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A reader of the uncompressed layer in `path`.
pub(crate) fn open_layer(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head)?;
    let file =
        io::BufReader::with_capacity(256 << 10, io::Cursor::new(head[..n].to_vec()).chain(file));
    Ok(match sniff(&head[..n]) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Compression::None => Box::new(file),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The codec `out` writes the layers it compresses itself with (`params.compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Gzip,
    Zstd,
}

/// A codec and its level (`params.compression_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoding {
    pub codec: Codec,
    pub level: u32,
}

impl Codec {
    /// Levels each codec takes, and the one used when none is given.
    pub(crate) fn levels(self) -> (std::ops::RangeInclusive<u32>, u32) {
        match self {
            Codec::Gzip => (1..=9, 3),
            Codec::Zstd => (1..=19, 3),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

impl Default for Encoding {
    fn default() -> Encoding {
        Encoding {
            codec: Codec::Gzip,
            level: Codec::Gzip.levels().1,
        }
    }
}

/// The size of the blocks gzip is cut into: large enough that a block's own dictionary
/// costs little, small enough that a layer of a few MiB still spreads over the cores.
pub(crate) const GZIP_BLOCK: usize = 1 << 20;
/// What each gzip block starts from: the end of the block before it (deflate's window).
const GZIP_DICTIONARY: usize = 32 << 10;

/// One layer at a time is compressed (it uses every core by itself), so that an archive's
/// layers, read each on its own thread, keep memory at one layer's blocks in flight.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How many threads compress: every core, or `DOCKHAND_THREADS` when set (for measuring).
pub(crate) fn threads() -> usize {
    std::env::var("DOCKHAND_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Writes `input` compressed as `encoding` says to `out`; returns the digest and size of
/// what was written.
pub(crate) fn compress_to(
    input: impl Read,
    out: &Path,
    encoding: Encoding,
) -> io::Result<(Digest, u64)> {
    compress_on(input, out, encoding, threads())
}

fn compress_on(
    input: impl Read,
    out: &Path,
    encoding: Encoding,
    threads: usize,
) -> io::Result<(Digest, u64)> {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::fs::File::create(out)?;
    let mut tee = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
    tracing::debug!(
        "compressing {} with {} level {} on {threads} threads",
        out.display(),
        encoding.codec.name(),
        encoding.level
    );
    match encoding.codec {
        Codec::Gzip => parallel_gzip(input, &mut tee, encoding.level, threads)?,
        Codec::Zstd => {
            let mut input = input;
            let level = i32::try_from(encoding.level).unwrap_or(3);
            let mut z = zstd::stream::write::Encoder::new(&mut tee, level)?;
            // nbWorkers >= 1 even on one core: its output differs from the single-threaded
            // mode's, and must not depend on the machine.
            z.multithread(u32::try_from(threads).unwrap_or(1).max(1))?;
            io::copy(&mut input, &mut z)?;
            z.finish()?;
        }
    }
    tee.flush()?;
    Ok(tee.finish())
}

/// One gzip member of `input`'s blocks, deflated on `threads` threads, written in order.
/// At most two blocks per thread are in flight.
fn parallel_gzip(
    mut input: impl Read,
    out: &mut impl Write,
    level: u32,
    threads: usize,
) -> io::Result<()> {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    type Job = (
        Arc<Vec<u8>>,
        Arc<Vec<u8>>,
        mpsc::SyncSender<io::Result<Vec<u8>>>,
    );
    // The gzip header: deflate, no name, no time, no extra flags, unknown OS.
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    let mut crc = flate2::Crc::new();
    std::thread::scope(|scope| -> io::Result<()> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads {
            let queue = queue.clone();
            scope.spawn(move || loop {
                let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok((block, dictionary, done)) = job else {
                    return;
                };
                let _ = done.send(deflate_block(&block, &dictionary, level));
            });
        }
        let mut pending = std::collections::VecDeque::new();
        let mut previous: Arc<Vec<u8>> = Arc::new(Vec::new());
        let result = (|| -> io::Result<()> {
            loop {
                let block = read_block(&mut input, GZIP_BLOCK)?;
                if block.is_empty() {
                    break;
                }
                crc.update(&block);
                let dictionary =
                    Arc::new(previous[previous.len().saturating_sub(GZIP_DICTIONARY)..].to_vec());
                let block = Arc::new(block);
                let (done, result) = mpsc::sync_channel(1);
                jobs.send((block.clone(), dictionary, done))
                    .map_err(|_| io::Error::other("a compression thread ended"))?;
                pending.push_back(result);
                previous = block;
                if pending.len() >= 2 * threads {
                    write_next(&mut pending, out)?;
                }
            }
            while !pending.is_empty() {
                write_next(&mut pending, out)?;
            }
            Ok(())
        })();
        drop(jobs);
        result
    })?;
    // The last block: empty, final.
    out.write_all(&deflate_final()?)?;
    out.write_all(&crc.sum().to_le_bytes())?;
    out.write_all(&crc.amount().to_le_bytes())?;
    Ok(())
}

fn write_next(
    pending: &mut std::collections::VecDeque<std::sync::mpsc::Receiver<io::Result<Vec<u8>>>>,
    out: &mut impl Write,
) -> io::Result<()> {
    let Some(next) = pending.pop_front() else {
        return Ok(());
    };
    let bytes = next
        .recv()
        .map_err(|_| io::Error::other("a compression thread ended"))??;
    out.write_all(&bytes)
}

/// Up to `size` bytes of `input`, fewer only at its end.
fn read_block(input: &mut impl Read, size: usize) -> io::Result<Vec<u8>> {
    let mut block = Vec::with_capacity(size);
    input.take(size as u64).read_to_end(&mut block)?;
    Ok(block)
}

/// Raw deflate of `block` from `dictionary`, ended by a sync flush (byte-aligned, not final),
/// so that blocks can be joined.
fn deflate_block(block: &[u8], dictionary: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(io::Error::other)?;
    }
    let mut out = Vec::with_capacity(block.len() + block.len() / 8 + 1024);
    loop {
        let consumed = usize::try_from(c.total_in()).unwrap_or(block.len());
        c.compress_vec(&block[consumed..], &mut out, flate2::FlushCompress::Sync)
            .map_err(io::Error::other)?;
        // The flush is complete when all input is in and room was left over.
        if usize::try_from(c.total_in()).ok() == Some(block.len()) && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(64 << 10);
    }
}

/// The empty final block that ends the deflate stream.
fn deflate_final() -> io::Result<Vec<u8>> {
    let mut c = flate2::Compress::new(flate2::Compression::new(1), false);
    let mut out = Vec::with_capacity(64);
    c.compress_vec(&[], &mut out, flate2::FlushCompress::Finish)
        .map_err(io::Error::other)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed(input: &[u8], encoding: Encoding, threads: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("layer");
        let (digest, size) = compress_on(input, &out, encoding, threads).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(digest, Digest::of(&bytes));
        bytes
    }

    /// Bytes that compress somewhat, like a layer: text runs and noise.
    fn layer_like(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if (i / 4096) % 3 == 0 {
                    b"usr/lib/x86_64-linux-gnu/"[i % 25]
                } else {
                    state as u8
                }
            })
            .collect()
    }

    #[test]
    fn parallel_gzip_is_one_valid_member_and_the_same_on_any_number_of_threads() {
        let gzip = Encoding::default();
        for len in [0, 1, GZIP_BLOCK - 1, GZIP_BLOCK, 3 * GZIP_BLOCK + 12345] {
            let input = layer_like(len);
            let one = compressed(&input, gzip, 1);
            let four = compressed(&input, gzip, 4);
            assert_eq!(one, four, "{len} bytes: the output depends on the threads");
            // A single-member decoder reads it all: one member, not several.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, input, "{len} bytes");
            if len > GZIP_BLOCK {
                assert!(one.len() < input.len(), "{len} bytes did not compress");
            }
        }
    }

    #[test]
    fn parallel_zstd_reads_back_and_is_the_same_on_any_number_of_threads() {
        let zstd = Encoding {
            codec: Codec::Zstd,
            level: 3,
        };
        let input = layer_like(5 * GZIP_BLOCK + 7);
        let one = compressed(&input, zstd, 1);
        let three = compressed(&input, zstd, 3);
        assert_eq!(one, three);
        assert_eq!(sniff(&one), Compression::Zstd);
        assert_eq!(zstd::stream::decode_all(&one[..]).unwrap(), input);
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"etc/"), Compression::None);
    }
}
