//! What `in` writes: the rootfs, `metadata.json` (Concourse's `image_resource` contract),
//! `labels.json`, `docker_inspect.json`, a `docker load`-able archive
//! (<https://github.com/moby/moby/blob/master/image/spec/v1.2.md> plus an OCI layout in the
//! same tarball, as `docker save` writes since Docker 25), an OCI image layout, and
//! `rootfs.tar`. Files appear under their final names only when complete.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use crate::error::Error;
use crate::get::{io_error, write_file};
use crate::image::ImageConfig;
use crate::reference::{Digest, Repository};
use crate::unpack::{open_layer, Skipped, Unpacker};

/// How many layers decompress ahead of the one being written.
const DECOMPRESS_AHEAD: usize = 2;
const CHUNK: usize = 256 << 10;

/// Applies the layers that arrive on `ready` (in order) to `target`: each layer decompresses
/// on its own thread into a small bounded queue while the previous one is being written, so
/// memory stays flat and both cores work.
pub fn unpack_layers(
    target: &Path,
    ready: Receiver<PathBuf>,
    layers: usize,
) -> anyhow_like::Result<Skipped> {
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
        let chunks = queued
            .recv()
            .map_err(|_| anyhow_like::Error::msg("the layer downloads stopped"))?;
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

/// A tiny error type for the blocking unpack thread (the core avoids anyhow).
pub mod anyhow_like {
    #[derive(Debug, thiserror::Error)]
    pub enum Error {
        #[error("{0}")]
        Msg(String),
        #[error(transparent)]
        Io(#[from] std::io::Error),
        #[error(transparent)]
        Unpack(#[from] crate::unpack::UnpackError),
    }
    impl Error {
        pub fn msg(s: &str) -> Error {
            Error::Msg(s.to_string())
        }
    }
    pub type Result<T> = std::result::Result<T, Error>;
}

/// `metadata.json`: what Concourse needs to run the rootfs as a task image.
pub fn write_metadata_json(dest: &Path, config: &ImageConfig, rootfs: &Path) -> Result<(), Error> {
    let run = config.config.clone().unwrap_or_default();
    let mut meta = serde_json::Map::new();
    meta.insert(
        "env".into(),
        serde_json::json!(run
            .env
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !e.starts_with("HOSTNAME="))
            .collect::<Vec<_>>()),
    );
    if let Some(user) = run.user.filter(|u| !u.is_empty()) {
        meta.insert("user".into(), serde_json::json!(user_name(&user, rootfs)));
    }
    meta.insert("cmd".into(), serde_json::json!(run.cmd));
    meta.insert("entrypoint".into(), serde_json::json!(run.entrypoint));
    write_file(
        &dest.join("metadata.json"),
        &serde_json::to_vec(&meta).expect("serialisable"),
    )
}

/// A numeric `User` becomes the name the image's /etc/passwd gives it, as
/// docker-image-resource does; a name (or an unknown uid) stays as it is.
fn user_name(user: &str, rootfs: &Path) -> String {
    let uid = user.split(':').next().unwrap_or(user);
    if uid.parse::<u32>().is_err() {
        return user.to_string();
    }
    // Read through the rootfs only when /etc/passwd is a plain file (not a planted symlink).
    let passwd = rootfs.join("etc/passwd");
    let plain = std::fs::symlink_metadata(rootfs.join("etc"))
        .map(|m| m.is_dir())
        .unwrap_or(false)
        && std::fs::symlink_metadata(&passwd)
            .map(|m| m.is_file())
            .unwrap_or(false);
    if plain {
        if let Ok(text) = std::fs::read_to_string(&passwd) {
            for line in text.lines() {
                let fields: Vec<&str> = line.split(':').collect();
                if fields.len() > 2 && fields[2] == uid {
                    return fields[0].to_string();
                }
            }
        }
    }
    user.to_string()
}

pub fn write_labels_json(dest: &Path, config: &ImageConfig) -> Result<(), Error> {
    let labels = config
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    write_file(
        &dest.join("labels.json"),
        &serde_json::to_vec(&labels).expect("serialisable"),
    )
}

/// `docker_inspect.json` as `docker inspect` would print it for the pulled image.
pub fn write_docker_inspect(
    dest: &Path,
    config: &ImageConfig,
    raw: &serde_json::Value,
    repository: &Repository,
    tag: &str,
    digest: &Digest,
    id: &Digest,
) -> Result<(), Error> {
    let inspect = serde_json::json!([{
        "Id": id.as_str(),
        "RepoTags": [format!("{repository}:{tag}")],
        "RepoDigests": [format!("{repository}@{digest}")],
        "Created": config.created,
        "Architecture": config.architecture,
        "Os": config.os,
        "Variant": config.variant,
        "Config": raw.get("config").cloned().unwrap_or(serde_json::Value::Null),
        "RootFS": {
            "Type": "layers",
            "Layers": config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default(),
        },
    }]);
    write_file(
        &dest.join("docker_inspect.json"),
        &serde_json::to_vec_pretty(&inspect).expect("serialisable"),
    )
}

/// The blobs of one image, as downloaded.
pub struct Archive<'a> {
    pub repo_tag: String,
    pub tag: String,
    pub config: (&'a Digest, &'a Path),
    pub layers: Vec<(&'a Digest, &'a Path)>,
    pub manifest_bytes: &'a [u8],
    pub manifest_digest: &'a Digest,
    pub manifest_media_type: String,
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// A tarball that `docker load` reads (manifest.json; the layers stay compressed, which the
/// daemon accepts, and the config's digest is the image id), and that is also an OCI image
/// layout (oci-layout, index.json, blobs/).
pub fn write_docker_archive(a: &Archive<'_>, path: &Path) -> Result<(), Error> {
    let partial = path.with_extension("dockhand-partial");
    let file = std::fs::File::create(&partial).map_err(|e| io_error(path, e))?;
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
    let result = (|| -> io::Result<()> {
        let mut added = std::collections::HashSet::new();
        for (digest, blob) in std::iter::once(a.config).chain(a.layers.iter().copied()) {
            if added.insert(digest.clone()) {
                append_file(&mut tar, &blob_name(digest), blob)?;
            }
        }
        append_bytes(&mut tar, &blob_name(a.manifest_digest), a.manifest_bytes)?;
        let manifest_json = serde_json::json!([{
            "Config": blob_name(a.config.0),
            "RepoTags": [a.repo_tag],
            "Layers": a.layers.iter().map(|(d, _)| blob_name(d)).collect::<Vec<_>>(),
        }]);
        append_bytes(
            &mut tar,
            "manifest.json",
            &serde_json::to_vec(&manifest_json)?,
        )?;
        append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append_bytes(&mut tar, "index.json", &index_json(a))?;
        tar.into_inner()?.flush()
    })();
    result
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            io_error(path, e)
        })
}

fn index_json(a: &Archive<'_>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::registry::OCI_INDEX,
        "manifests": [{
            "mediaType": a.manifest_media_type,
            "digest": a.manifest_digest,
            "size": a.manifest_bytes.len(),
            "annotations": {
                "io.containerd.image.name": a.repo_tag,
                "org.opencontainers.image.ref.name": a.tag,
            },
        }],
    }))
    .expect("serialisable")
}

/// The registry's index bytes and the other platforms' blobs, for an OCI layout.
pub type IndexBlobs<'a> = (&'a [u8], &'a [(Digest, PathBuf)]);

/// An OCI image layout directory. With `index`, index.json is the registry's index bytes
/// (so its digest is the version's) and `extra` holds the other platforms' blobs.
pub fn write_oci_layout(
    a: &Archive<'_>,
    dir: &Path,
    index: Option<IndexBlobs<'_>>,
) -> Result<(), Error> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| io_error(&blobs, e))?;
    let place = |digest: &Digest, from: &Path| -> Result<(), Error> {
        let to = blobs.join(digest.hex());
        if to.exists() {
            return Ok(());
        }
        std::fs::hard_link(from, &to)
            .or_else(|_| std::fs::copy(from, &to).map(|_| ()))
            .map_err(|e| io_error(&to, e))
    };
    place(a.config.0, a.config.1)?;
    for (d, p) in &a.layers {
        place(d, p)?;
    }
    write_file(&blobs.join(a.manifest_digest.hex()), a.manifest_bytes)?;
    write_file(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    match index {
        None => write_file(&dir.join("index.json"), &index_json(a)),
        Some((bytes, extra)) => {
            for (d, p) in extra {
                place(d, p)?;
            }
            write_file(&blobs.join(Digest::of(bytes).hex()), bytes)?;
            write_file(&dir.join("index.json"), bytes)
        }
    }
}

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, path: &Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    tar.append_data(
        &mut header(size, 0o644),
        name,
        io::BufReader::with_capacity(1 << 20, file),
    )
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    tar.append_data(&mut header(bytes.len() as u64, 0o644), name, bytes)
}

/// The extended attributes `in` applies (see [`crate::unpack::xattr_wanted`]) as a PAX
/// header for the entry that follows, as `docker export` writes them.
fn append_xattrs<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    buf: &mut XattrBuffers,
) -> io::Result<()> {
    let len = match rustix::fs::llistxattr(path, &mut buf.names[..]) {
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        other => other?,
    };
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for name in buf.names[..len].split(|b| *b == 0) {
        let (Ok(text), true) = (std::str::from_utf8(name), crate::unpack::xattr_wanted(name))
        else {
            continue;
        };
        let cname = std::ffi::CString::new(name).expect("split at NUL");
        let n = rustix::fs::lgetxattr(path, cname.as_c_str(), &mut buf.value[..])?;
        records.push((format!("SCHILY.xattr.{text}"), buf.value[..n].to_vec()));
    }
    tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}

/// Room for any name list and any value: Linux caps both at 64 KiB (XATTR_LIST_MAX,
/// XATTR_SIZE_MAX). Allocated once per archive.
struct XattrBuffers {
    names: Vec<u8>,
    value: Vec<u8>,
}

impl XattrBuffers {
    fn new() -> XattrBuffers {
        XattrBuffers {
            names: vec![0; 64 << 10],
            value: vec![0; 64 << 10],
        }
    }
}

/// `rootfs.tar`: the unpacked rootfs as one tarball, as `docker export` writes it (hardlinks
/// as links, symlinks not followed), without unpacking anything twice.
pub fn write_rootfs_tar(rootfs: &Path, path: &Path) -> Result<(), Error> {
    let partial = path.with_extension("dockhand-partial");
    let result = (|| -> io::Result<()> {
        let file = std::fs::File::create(&partial)?;
        let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
        tar.follow_symlinks(false);
        let mut inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut xattrs = XattrBuffers::new();
        walk(rootfs, Path::new(""), &mut tar, &mut inodes, &mut xattrs)?;
        tar.into_inner()?.flush()?;
        std::fs::rename(&partial, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        io_error(path, e)
    })
}

fn walk<W: Write>(
    base: &Path,
    rel: &Path,
    tar: &mut tar::Builder<W>,
    inodes: &mut HashMap<(u64, u64), PathBuf>,
    xattrs: &mut XattrBuffers,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(base.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = rel.join(entry.file_name());
        let full = base.join(&name);
        let meta = std::fs::symlink_metadata(&full)?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let ft = meta.file_type();
        if ft.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = inodes.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                tar.append_link(&mut h, &name, first)?;
                continue;
            }
            inodes.insert(key, name.clone());
        }
        if ft.is_dir() || ft.is_file() {
            append_xattrs(tar, &full, xattrs)?;
        }
        if ft.is_dir() {
            tar.append_data(&mut h, &name, io::empty())?;
            walk(base, &name, tar, inodes, xattrs)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full)?;
            h.set_size(0);
            tar.append_link(&mut h, &name, target)?;
        } else if ft.is_file() {
            let file = std::fs::File::open(&full)?;
            tar.append_data(&mut h, &name, file)?;
        } else {
            // Fifos and devices: the header says it all.
            h.set_size(0);
            tar.append_data(&mut h, &name, io::empty())?;
        }
    }
    Ok(())
}
