//! Images written to disk for `in`: a `docker load`-able archive
//! (<https://github.com/moby/moby/blob/master/image/spec/v1.2.md> plus an OCI layout in the
//! same tarball, as `docker save` writes since Docker 25) and an OCI image layout
//! (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>). Files appear
//! under their final names only when complete. Synchronous.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::write_output as write_file;
use crate::error::{io_error, Error};
use crate::fs::{link_or_copy, PartialFile};
use crate::image::OCI_INDEX;
use crate::reference::Digest;

/// The blobs of one image, as downloaded.
#[derive(Clone)]
pub(crate) struct Archive {
    pub repo_tag: String,
    pub tag: String,
    pub config: (Digest, PathBuf),
    pub layers: Vec<(Digest, PathBuf)>,
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// A tarball that `docker load` reads (manifest.json; the layers stay compressed, which the
/// daemon accepts, and the config's digest is the image id), and that is also an OCI image
/// layout (oci-layout, index.json, blobs/).
pub(crate) fn write_docker_archive(a: &Archive, path: &Path) -> Result<(), Error> {
    // A new temporary name, created exclusively: a planted symlink is never followed.
    let mut partial = PartialFile::create(path).map_err(|e| io_error(path, e))?;
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, partial.file()));
    let result = (|| -> io::Result<()> {
        let mut added = std::collections::HashSet::new();
        for (digest, blob) in std::iter::once(&a.config).chain(&a.layers) {
            if added.insert(digest.clone()) {
                append_file(&mut tar, &blob_name(digest), blob)?;
            }
        }
        append_bytes(&mut tar, &blob_name(&a.manifest_digest), &a.manifest_bytes)?;
        let manifest_json = serde_json::json!([{
            "Config": blob_name(&a.config.0),
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
    // Dropped uncommitted, the temporary file is removed.
    result
        .and_then(|()| partial.commit())
        .map_err(|e| io_error(path, e))
}

fn index_json(a: &Archive) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
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
pub(crate) type IndexBlobs<'a> = (&'a [u8], &'a [(Digest, PathBuf)]);

/// An OCI image layout directory. With `index`, index.json is the registry's index bytes
/// (so its digest is the version's) and `extra` holds the other platforms' blobs.
pub(crate) fn write_oci_layout(
    a: &Archive,
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
        link_or_copy(from, &to).map_err(|e| io_error(&to, e))
    };
    place(&a.config.0, &a.config.1)?;
    for (d, p) in &a.layers {
        place(d, p)?;
    }
    write_file(&blobs.join(a.manifest_digest.hex()), &a.manifest_bytes)?;
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
