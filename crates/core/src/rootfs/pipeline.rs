//! Layers applied in order while the next ones decompress: a dispatcher thread starts each
//! layer's decompression as soon as it is downloaded, into a small bounded queue of chunks, so
//! memory stays flat and the writer and the decompressors work at once. Synchronous.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use super::unpack::{Skipped, Unpacker};
use super::RootfsError;
use crate::compression::open_layer;

/// How many layers decompress ahead of the one being written.
const DECOMPRESS_AHEAD: usize = 2;
const CHUNK: usize = 256 << 10;

/// Applies the layers that arrive on `ready` (in order) to `target`: each layer decompresses
/// on its own thread into a small bounded queue while the previous one is being written, so
/// memory stays flat and both cores work.
pub(crate) fn unpack_layers(
    target: &Path,
    ready: Receiver<PathBuf>,
    layers: usize,
) -> Result<Skipped, RootfsError> {
    std::fs::create_dir_all(target)?;
    let mut unpacker = Unpacker::new(target)?;
    // A dispatcher starts each layer's decompression as soon as it is downloaded, at most
    // DECOMPRESS_AHEAD beyond the one being applied (the bounded queue blocks it).
    let (queued_tx, queued) = sync_channel::<Receiver<io::Result<Vec<u8>>>>(DECOMPRESS_AHEAD - 1);
    std::thread::spawn(move || {
        for path in ready {
            if queued_tx.send(decompress_in_background(path)).is_err() {
                return;
            }
        }
    });
    for applied in 1..=layers {
        let chunks = queued.recv().map_err(|_| RootfsError::Stopped)?;
        unpacker.apply_layer(ChunkReader::new(chunks))?;
        tracing::debug!("applied layer {applied}/{layers}");
    }
    Ok(unpacker.finish()?)
}

fn decompress_in_background(path: PathBuf) -> Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = sync_channel(8);
    std::thread::spawn(move || {
        let mut reader = match open_layer(&path) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; CHUNK];
            match read_full(&mut reader, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    rx
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

struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    fn new(rx: Receiver<io::Result<Vec<u8>>>) -> ChunkReader {
        ChunkReader {
            rx,
            current: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
