//! Layers applied in order while the next ones decompress. Each layer's decompression starts
//! as soon as it is downloaded, in whatever order the downloads end, on as many threads as
//! there are cores (the lowest layers first when more are waiting). The layer being written
//! streams to the writer through a small bounded queue of chunks. A layer ahead of the writer
//! does not wait for it: it inflates into a spill file (unlinked, beside the rootfs, so mostly
//! in the page cache) that the writer reads as it grows once it gets there.
//!
//! The spill is bounded: the layers ahead wait once 1 GiB is spilled and not yet read back,
//! and a layer that spilled and is now being written waits at 2 GiB (so a layer that inflates
//! to terabytes fills the disk no faster than the writer). Memory stays flat, decompression
//! does not wait on the writer short of those bounds, and the writer waits on decompression
//! only when it has caught up. Each layer's uncompressed bytes are hashed, on a thread of
//! their own beside the writer, and checked against the config's `diff_id`. Synchronous.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sha2::Digest as _;

use super::unpack::{Skipped, UnpackError, Unpacker};
use super::{LayerIds, RootfsError};
use crate::compression::open_layer;
use crate::reference::Digest;

/// Threads that decompress, at the least: one core writes while another inflates.
const MIN_INFLATERS: usize = 2;
const CHUNK: usize = 256 << 10;
/// Chunks queued between the layer being written and its decompressor (2 MiB).
const QUEUED_CHUNKS: usize = 8;
/// Chunks the writer has read and the layer's hashing thread has not yet hashed (2 MiB).
const HASHED_CHUNKS: usize = 8;
/// Bytes spilled and not yet read back, across layers, beyond which the layers ahead of the
/// writer wait; the layer being written waits beyond twice as many.
const SPILL_LIMIT: u64 = 1 << 30;

/// Applies the layers that arrive on `ready` (each as `(index in layers, path)`, in any order)
/// to `target` in order, decompressing ahead of the writer on every core (see the module's
/// comment). A layer whose uncompressed bytes (all of them, read to the end after the tar's)
/// do not hash to its `diff_id` fails the whole rootfs.
pub(crate) fn unpack_layers(
    target: &Path,
    ready: Receiver<(usize, PathBuf)>,
    layers: &[LayerIds],
) -> Result<Skipped, RootfsError> {
    unpack_spilling_at_most(target, ready, layers, SPILL_LIMIT)
}

fn unpack_spilling_at_most(
    target: &Path,
    ready: Receiver<(usize, PathBuf)>,
    layers: &[LayerIds],
    spill_limit: u64,
) -> Result<Skipped, RootfsError> {
    std::fs::create_dir_all(target)?;
    let mut unpacker = Unpacker::new(target)?;
    let spill_dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let inflaters = crate::compression::threads().max(MIN_INFLATERS);
    tracing::debug!(
        "rootfs: one thread writes, {inflaters} threads decompress; layers ahead of the writer \
         spill to {}",
        spill_dir.display()
    );
    let ahead = Arc::new(Ahead::new(spill_dir, inflaters, spill_limit));
    let _stop = Stop(ahead.clone());
    let arrivals = ahead.clone();
    std::thread::spawn(move || {
        for (index, path) in ready {
            if !Ahead::arrived(&arrivals, index, path) {
                return;
            }
        }
        arrivals.lock().all_arrived = true;
        arrivals.changed.notify_all();
    });
    for (i, layer) in layers.iter().enumerate() {
        let inflating = Ahead::next(&ahead, i).ok_or(RootfsError::Stopped)?;
        let mut reader = LayerReader::new(inflating);
        let in_layer = |source| RootfsError::Layer {
            layer: layer.digest.clone(),
            source,
        };
        unpacker.apply_layer(&mut reader).map_err(in_layer)?;
        io::copy(&mut reader, &mut io::sink()).map_err(|e| in_layer(UnpackError::Archive(e)))?;
        let actual = reader
            .digest()
            .map_err(|e| in_layer(UnpackError::Archive(e)))?;
        if actual != layer.diff_id {
            return Err(RootfsError::DiffId {
                layer: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual,
            });
        }
        tracing::debug!("applied layer {}/{}", i + 1, layers.len());
    }
    tracing::debug!(
        "rootfs: at most {} MiB were spilled ahead of the writer",
        ahead.lock().peak >> 20
    );
    Ok(unpacker.finish()?)
}

/// The layers' decompressions, shared by the writer, the decompressors and the thread that
/// hands over downloaded layers: which layer is written, which are downloaded, which
/// decompress, and how much is spilled.
struct Ahead {
    state: Mutex<AheadState>,
    changed: Condvar,
    spill_dir: PathBuf,
    /// Decompressions that run at once, besides the layer being written.
    inflaters: usize,
    /// Unread spilled bytes beyond which the layers ahead wait (the layer being written, at
    /// twice as many).
    limit: u64,
}

#[derive(Default)]
struct AheadState {
    /// The index of the layer being written: its decompressor queues chunks, the others spill.
    writing: usize,
    /// Downloaded layers not yet decompressing, by index.
    waiting: BTreeMap<usize, PathBuf>,
    /// Every layer has been downloaded (or the downloads have stopped).
    all_arrived: bool,
    /// Decompressions started, by index, until the writer takes them.
    started: BTreeMap<usize, Inflating>,
    /// Decompressing threads running.
    running: usize,
    /// Spilled bytes not yet read back, over every layer.
    unread: u64,
    peak: u64,
    /// The writer has returned: every decompressor stops.
    stopped: bool,
}

impl Ahead {
    fn new(spill_dir: PathBuf, inflaters: usize, limit: u64) -> Ahead {
        Ahead {
            state: Mutex::default(),
            changed: Condvar::new(),
            spill_dir,
            inflaters,
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, AheadState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Layer `index` is downloaded, at `path`. False when the writer has stopped.
    fn arrived(this: &Arc<Ahead>, index: usize, path: PathBuf) -> bool {
        let mut state = this.lock();
        if state.stopped {
            return false;
        }
        state.waiting.insert(index, path);
        Ahead::schedule(this, &mut state);
        true
    }

    /// The writer moves on to layer `index`: its decompression, once started. None when it
    /// never will be (the downloads ended without it).
    fn next(this: &Arc<Ahead>, index: usize) -> Option<Inflating> {
        let mut state = this.lock();
        state.writing = index;
        Ahead::schedule(this, &mut state);
        // Layers waiting on the spill limit look again: this one may be among them.
        this.changed.notify_all();
        loop {
            if let Some(inflating) = state.started.remove(&index) {
                return Some(inflating);
            }
            if state.all_arrived && !state.waiting.contains_key(&index) {
                return None;
            }
            state = this.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Starts what may start: the layer being written whatever else runs (the layers ahead
    /// may all be waiting on the spill limit, which only the writer's reading lowers), then
    /// the lowest downloaded layers while there are free threads.
    fn schedule(this: &Arc<Ahead>, state: &mut AheadState) {
        let writing = state.writing;
        let mut started = false;
        if let Some(path) = state.waiting.remove(&writing) {
            Ahead::start(this, state, writing, path);
            started = true;
        }
        while state.running < this.inflaters {
            let Some((index, path)) = state.waiting.pop_first() else {
                break;
            };
            Ahead::start(this, state, index, path);
            started = true;
        }
        if started {
            this.changed.notify_all();
        }
    }

    fn start(this: &Arc<Ahead>, state: &mut AheadState, index: usize, path: PathBuf) {
        state.running += 1;
        let inflating = Inflating::start(path, index, this.clone());
        state.started.insert(index, inflating);
    }

    /// A decompressing thread has ended, however it ended.
    fn finished(this: &Arc<Ahead>) {
        let mut state = this.lock();
        state.running = state.running.saturating_sub(1);
        if !state.stopped {
            Ahead::schedule(this, &mut state);
        }
    }

    /// Counts `n` more bytes about to be spilled by layer `index`, first waiting while that
    /// would put the unread spill over the limit, or over twice the limit when `index` is the
    /// layer being written. The layers ahead hold at most the limit between them, so the
    /// layer being written waits only on bytes of its own, which the writer is reading: it
    /// never waits forever. False when the writer has stopped.
    fn spilling(&self, index: usize, n: usize) -> bool {
        let mut state = self.lock();
        loop {
            let limit = if state.writing == index {
                2 * self.limit
            } else {
                self.limit
            };
            if state.stopped || state.unread == 0 || state.unread + n as u64 <= limit {
                break;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.unread += n as u64;
        state.peak = state.peak.max(state.unread);
        !state.stopped
    }

    fn read_back(&self, n: usize) {
        let mut state = self.lock();
        state.unread = state.unread.saturating_sub(n as u64);
        drop(state);
        self.changed.notify_all();
    }
}

/// Stops every decompressor when the writer returns, however it returns, and drops what the
/// writer did not take (which also ends the references the decompressions hold back).
struct Stop(Arc<Ahead>);

impl Drop for Stop {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.stopped = true;
        let untaken = std::mem::take(&mut state.started);
        state.waiting.clear();
        drop(state);
        self.0.changed.notify_all();
        drop(untaken);
    }
}

/// The writer's end of one layer's decompression: the queue, then the spill file.
struct Inflating {
    chunks: Receiver<Vec<u8>>,
    spill: Arc<Spill>,
    ahead: Arc<Ahead>,
}

/// What a decompressor has spilled, shared with the writer.
#[derive(Default)]
struct Spill {
    state: Mutex<SpillState>,
    grew: Condvar,
}

#[derive(Default)]
struct SpillState {
    /// Created when the decompressor first finds itself ahead of the writer; from then on
    /// every byte goes there, after those already queued.
    file: Option<Arc<File>>,
    /// Bytes written to `file`.
    len: u64,
    /// The decompressor has ended: with `error`, or at the end of the layer.
    done: bool,
    error: Option<io::Error>,
}

impl Spill {
    fn lock(&self) -> MutexGuard<'_, SpillState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inflating {
    /// Starts decompressing the layer at `path`, the `index`th, on a thread of its own.
    fn start(path: PathBuf, index: usize, ahead: Arc<Ahead>) -> Inflating {
        let (tx, chunks) = sync_channel(QUEUED_CHUNKS);
        let spill = Arc::new(Spill::default());
        let mut ended = Ended {
            spill: spill.clone(),
            ahead: ahead.clone(),
            result: None,
        };
        std::thread::spawn(move || {
            let result = inflate(&path, index, &ended.ahead, tx, &ended.spill);
            ended.result = Some(result);
            drop(ended);
        });
        Inflating {
            chunks,
            spill,
            ahead,
        }
    }
}

/// The end of a decompressing thread, however it ends (a panic too: the writer must not wait
/// for bytes that will never come): the layer is done, with the thread's error if it had one,
/// and its place goes to the next layer.
struct Ended {
    spill: Arc<Spill>,
    ahead: Arc<Ahead>,
    result: Option<io::Result<()>>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        let mut state = self.spill.lock();
        state.done = true;
        state.error = match self.result.take() {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(e),
            None => Some(io::Error::other("the decompressing thread stopped")),
        };
        drop(state);
        self.spill.grew.notify_all();
        Ahead::finished(&self.ahead);
    }
}

/// Decompresses the layer at `path`: into the queue while it is the layer being written, into
/// the spill file from the first chunk that finds it ahead of the writer.
fn inflate(
    path: &Path,
    index: usize,
    ahead: &Ahead,
    queue: SyncSender<Vec<u8>>,
    spill: &Spill,
) -> io::Result<()> {
    let mut reader = open_layer(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut n;
    loop {
        n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if ahead.lock().writing != index {
            break;
        }
        let mut chunk = std::mem::replace(&mut buf, vec![0u8; CHUNK]);
        chunk.truncate(n);
        if queue.send(chunk).is_err() {
            return Ok(()); // the writer stopped
        }
    }
    let file = Arc::new(tempfile::tempfile_in(&ahead.spill_dir)?);
    spill.lock().file = Some(file.clone());
    // The writer reads the spill file once the queue is closed and empty.
    drop(queue);
    let mut len = 0u64;
    while n > 0 {
        if !ahead.spilling(index, n) {
            return Ok(());
        }
        file.write_all_at(&buf[..n], len)?;
        len += n as u64;
        spill.lock().len = len;
        spill.grew.notify_all();
        n = read_full(&mut reader, &mut buf)?;
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One layer's uncompressed bytes in order: the queued chunks, then the spill file as it
/// grows, then the decompressor's error if it had one. Each chunk is also handed to a
/// thread that hashes it, so the sha256 of the layer is not on the writer's path.
struct LayerReader {
    inflating: Inflating,
    queue_closed: bool,
    /// Where the next read of the spill file starts.
    offset: u64,
    current: Arc<Vec<u8>>,
    pos: usize,
    hashing: SyncSender<Arc<Vec<u8>>>,
    hashed: std::thread::JoinHandle<Digest>,
}

impl LayerReader {
    fn new(inflating: Inflating) -> LayerReader {
        let (tx, chunks) = sync_channel::<Arc<Vec<u8>>>(HASHED_CHUNKS);
        let hashed = std::thread::spawn(move || {
            let mut hasher = sha2::Sha256::new();
            for chunk in chunks {
                hasher.update(&chunk[..]);
            }
            Digest::from_sha256(&hasher.finalize())
        });
        LayerReader {
            inflating,
            queue_closed: false,
            offset: 0,
            current: Arc::default(),
            pos: 0,
            hashing: tx,
            hashed,
        }
    }

    /// The sha256 of every byte read, once the layer has been read to its end.
    fn digest(self) -> io::Result<Digest> {
        let LayerReader {
            hashing, hashed, ..
        } = self;
        drop(hashing);
        hashed
            .join()
            .map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    /// Makes `chunk` the one being read, and hands it to the hashing thread.
    fn read_next(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.current = Arc::new(chunk);
        self.pos = 0;
        self.hashing
            .send(self.current.clone())
            .map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    /// Refills `current`; false at the end of the layer.
    fn fill(&mut self) -> io::Result<bool> {
        if !self.queue_closed {
            match self.inflating.chunks.recv() {
                Ok(chunk) => {
                    self.read_next(chunk)?;
                    return Ok(true);
                }
                Err(_) => self.queue_closed = true,
            }
        }
        let spill = &self.inflating.spill;
        let mut state = spill.lock();
        loop {
            if let Some(file) = &state.file {
                if state.len > self.offset {
                    let file = file.clone();
                    let want = (state.len - self.offset).min(CHUNK as u64) as usize;
                    drop(state);
                    let mut chunk = vec![0u8; want];
                    let n = file.read_at(&mut chunk, self.offset)?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    chunk.truncate(n);
                    self.offset += n as u64;
                    self.inflating.ahead.read_back(n);
                    self.read_next(chunk)?;
                    return Ok(true);
                }
            }
            if state.done {
                return match state.error.take() {
                    Some(e) => Err(e),
                    None => Ok(false),
                };
            }
            state = spill.grew.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Digest;

    /// A one-file layer, uncompressed, with `trailer` after the tar's end.
    fn layer(trailer: &[u8]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        tar.append_data(&mut h, "hi", &b"hi"[..]).unwrap();
        let mut bytes = tar.into_inner().unwrap();
        bytes.extend_from_slice(trailer);
        bytes
    }

    fn unpack(blob: &[u8], diff_id: Digest) -> (tempfile::TempDir, Result<Skipped, RootfsError>) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("blob");
        std::fs::write(&path, blob).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send((0, path)).unwrap();
        drop(tx);
        let ids = [LayerIds {
            digest: Digest::of(blob),
            diff_id,
        }];
        let result = unpack_layers(&tmp.path().join("rootfs"), rx, &ids);
        (tmp, result)
    }

    #[test]
    fn a_layer_matching_its_diff_id_is_applied() {
        let blob = layer(b"");
        let (tmp, result) = unpack(&blob, Digest::of(&blob));
        result.unwrap();
        assert_eq!(std::fs::read(tmp.path().join("rootfs/hi")).unwrap(), b"hi");
    }

    #[test]
    fn a_layer_not_matching_its_diff_id_is_refused_naming_both() {
        let blob = layer(b"");
        let wrong = Digest::of(b"something else");
        let (_tmp, result) = unpack(&blob, wrong.clone());
        let e = result.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "layer {} uncompresses to {}, not to the config's diff_id {wrong}",
                Digest::of(&blob),
                Digest::of(&blob)
            )
        );
    }

    /// `len` bytes that do not repeat in any short period.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Starts decompressing `blob` as layer 1 while the writer is on layer `writing`.
    fn inflating(blob: &[u8], writing: usize) -> (tempfile::TempDir, Inflating) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("blob");
        std::fs::write(&path, blob).unwrap();
        let ahead = Ahead::new(tmp.path().to_path_buf(), 1, SPILL_LIMIT);
        ahead.lock().writing = writing;
        let inflating = Inflating::start(path, 1, Arc::new(ahead));
        (tmp, inflating)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_decompressor_that_panics_ends_its_layer_with_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let ahead = Arc::new(Ahead::new(tmp.path().to_path_buf(), 1, SPILL_LIMIT));
        let spill = Arc::new(Spill::default());
        let (tx, chunks) = sync_channel::<Vec<u8>>(QUEUED_CHUNKS);
        let ended = Ended {
            spill: spill.clone(),
            ahead: ahead.clone(),
            result: None,
        };
        let thread = std::thread::spawn(move || {
            let _ended = ended;
            drop(tx);
            panic!("a bug in a decoder");
        });
        assert!(thread.join().is_err());
        let inflating = Inflating {
            chunks,
            spill,
            ahead,
        };
        let e = LayerReader::new(inflating)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.to_string(), "the decompressing thread stopped");
    }

    #[test]
    fn a_layer_that_never_arrives_stops_the_writer() {
        // The downloads failed: the sender is gone without layer 0.
        let tmp = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<(usize, PathBuf)>();
        drop(tx);
        let ids = [LayerIds {
            digest: Digest::of(b"a"),
            diff_id: Digest::of(b"b"),
        }];
        let result = unpack_layers(&tmp.path().join("rootfs"), rx, &ids);
        assert!(matches!(result, Err(RootfsError::Stopped)));
    }

    /// `raw`, gzipped, decompressed as layer 1 with the writer on layer `writing` and read
    /// to the end: what was read, and whether it went through a spill file.
    fn read_through(raw: &[u8], writing: usize) -> (Vec<u8>, bool) {
        let (_tmp, inflating) = inflating(&gzip(raw), writing);
        let spill = inflating.spill.clone();
        let mut got = Vec::new();
        LayerReader::new(inflating).read_to_end(&mut got).unwrap();
        let spilled = spill.lock().file.is_some();
        (got, spilled)
    }

    #[test]
    fn a_layer_ahead_of_the_writer_spills_and_is_read_back_whole() {
        let raw = noise((QUEUED_CHUNKS + 2) * CHUNK, 7);
        let (got, spilled) = read_through(&raw, 0);
        assert!(got == raw, "the spilled layer reads back as it was");
        assert!(spilled, "a layer ahead spills");
    }

    #[test]
    fn the_layer_being_written_streams_through_the_queue() {
        let raw = noise((QUEUED_CHUNKS + 2) * CHUNK, 9);
        let (got, spilled) = read_through(&raw, 1);
        assert!(got == raw);
        assert!(!spilled, "the layer being written does not spill");
    }

    #[test]
    fn a_spilled_layer_being_written_spills_at_most_twice_the_limit_ahead_of_the_writer() {
        let raw = noise((QUEUED_CHUNKS + 2) * CHUNK, 13);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("blob");
        std::fs::write(&path, gzip(&raw)).unwrap();
        let ahead = Arc::new(Ahead::new(tmp.path().to_path_buf(), 1, CHUNK as u64));
        let inflating = Inflating::start(path, 1, ahead.clone());
        let spill = inflating.spill.clone();
        while spill.lock().file.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Ahead of the writer it stops at the limit; being written, at twice the limit.
        ahead.lock().writing = 1;
        ahead.changed.notify_all();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while spill.lock().len < 2 * CHUNK as u64 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(spill.lock().len, 2 * CHUNK as u64);
        let mut got = Vec::new();
        LayerReader::new(inflating).read_to_end(&mut got).unwrap();
        assert!(got == raw, "and it goes on as the writer reads");
    }

    #[test]
    fn a_decompression_error_after_spilling_reaches_the_writer() {
        let raw = noise((QUEUED_CHUNKS + 2) * CHUNK, 11);
        let gz = gzip(&raw);
        for writing in [0, 1] {
            let (_tmp, inflating) = inflating(&gz[..gz.len() / 2], writing);
            let mut got = Vec::new();
            let e = LayerReader::new(inflating).read_to_end(&mut got);
            assert!(
                e.is_err(),
                "a truncated layer is an error (writer on {writing})"
            );
        }
    }

    #[test]
    fn layers_decompressed_ahead_are_applied_in_order() {
        applied_in_order(SPILL_LIMIT);
    }

    #[test]
    fn layers_ahead_wait_when_the_spill_is_full_and_the_layer_written_does_not() {
        // A limit of one chunk: each layer ahead stops after its first, and the layer being
        // written must go on regardless, or the writer would wait forever.
        applied_in_order(CHUNK as u64);
    }

    /// Four layers, each larger than the queue (so those ahead of the writer spill) and each
    /// rewriting `f` (so only the order of application decides what stays), applied with
    /// `spill_limit`.
    fn applied_in_order(spill_limit: u64) {
        let size = (QUEUED_CHUNKS + 1) * CHUNK;
        let contents: Vec<Vec<u8>> = (0..4).map(|i| noise(size, 100 + i)).collect();
        let tmp = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut ids = Vec::new();
        let mut paths = Vec::new();
        for (i, content) in contents.iter().enumerate() {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, "f", &content[..]).unwrap();
            tar.append_data(&mut h.clone(), format!("only-{i}"), &content[..])
                .unwrap();
            let raw = tar.into_inner().unwrap();
            let blob = gzip(&raw);
            let path = tmp.path().join(format!("blob{i}"));
            std::fs::write(&path, &blob).unwrap();
            paths.push(path);
            ids.push(LayerIds {
                digest: Digest::of(&blob),
                diff_id: Digest::of(&raw),
            });
        }
        // Downloads end in any order: the last layer arrives first.
        for (i, path) in paths.into_iter().enumerate().rev() {
            tx.send((i, path)).unwrap();
        }
        drop(tx);
        let rootfs = tmp.path().join("rootfs");
        unpack_spilling_at_most(&rootfs, rx, &ids, spill_limit).unwrap();
        assert!(std::fs::read(rootfs.join("f")).unwrap() == contents[3]);
        for (i, content) in contents.iter().enumerate() {
            assert!(std::fs::read(rootfs.join(format!("only-{i}"))).unwrap() == *content);
        }
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 5, "no spill file is left beside the rootfs");
    }

    #[test]
    fn bytes_after_the_tar_end_count_towards_the_diff_id() {
        // Same entries, different bytes: the diff_id of the plain tar does not cover it.
        let blob = layer(&[0u8; 4096]);
        let (_tmp, result) = unpack(&blob, Digest::of(&layer(b"")));
        assert!(matches!(result, Err(RootfsError::DiffId { .. })));
        let (_tmp, result) = unpack(&blob, Digest::of(&blob));
        result.unwrap();
    }
}
