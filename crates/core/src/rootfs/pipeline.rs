//! Layers applied in order while the next ones decompress: a dispatcher thread starts each
//! layer's decompression as soon as it is downloaded, into a small bounded queue of chunks, so
//! memory stays flat and the writer and the decompressors work at once. Each layer's
//! uncompressed bytes are hashed as they are applied and checked against the config's
//! `diff_id`. Synchronous.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use super::unpack::{Skipped, UnpackError, Unpacker};
use super::{LayerIds, RootfsError};
use crate::compression::open_layer;
use crate::hash::HashingReader;

/// How many layers decompress ahead of the one being written, at the least: one core writes
/// while the others inflate, so on more cores as many layers as there are cores (each holds
/// at most a few chunks: memory stays bounded).
const DECOMPRESS_AHEAD: usize = 2;
const CHUNK: usize = 256 << 10;

/// Applies the layers that arrive on `ready` (in order, one per entry of `layers`) to
/// `target`: each layer decompresses on its own thread into a small bounded queue while the
/// previous one is being written, so memory stays flat and both cores work. A layer whose
/// uncompressed bytes (all of them, read to the end after the tar's) do not hash to its
/// `diff_id` fails the whole rootfs.
pub(crate) fn unpack_layers(
    target: &Path,
    ready: Receiver<PathBuf>,
    layers: &[LayerIds],
) -> Result<Skipped, RootfsError> {
    std::fs::create_dir_all(target)?;
    let mut unpacker = Unpacker::new(target)?;
    // A dispatcher starts each layer's decompression as soon as it is downloaded, at most
    // `ahead` beyond the one being applied (the bounded queue blocks it).
    let ahead = crate::compression::threads().max(DECOMPRESS_AHEAD);
    tracing::debug!("rootfs: one thread writes, up to {ahead} layers decompress ahead");
    let (queued_tx, queued) = sync_channel::<Receiver<io::Result<Vec<u8>>>>(ahead - 1);
    std::thread::spawn(move || {
        for path in ready {
            if queued_tx.send(decompress_in_background(path)).is_err() {
                return;
            }
        }
    });
    for (i, layer) in layers.iter().enumerate() {
        let chunks = queued.recv().map_err(|_| RootfsError::Stopped)?;
        let mut hashed = HashingReader::new(ChunkReader::new(chunks));
        let in_layer = |source| RootfsError::Layer {
            layer: layer.digest.clone(),
            source,
        };
        unpacker.apply_layer(&mut hashed).map_err(in_layer)?;
        io::copy(&mut hashed, &mut io::sink()).map_err(|e| in_layer(UnpackError::Archive(e)))?;
        let actual = hashed.digest();
        if actual != layer.diff_id {
            return Err(RootfsError::DiffId {
                layer: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual,
            });
        }
        tracing::debug!("applied layer {}/{}", i + 1, layers.len());
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
        tx.send(path).unwrap();
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
