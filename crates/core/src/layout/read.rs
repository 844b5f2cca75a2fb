//! Images on disk, read for pushing: OCI image layouts (a directory or a tarball,
//! <https://github.com/opencontainers/image-spec/blob/main/image-layout.md>), `docker save`
//! tarballs (`manifest.json`, <https://github.com/moby/moby/blob/master/image/spec/v1.2.md>),
//! and rootfs tarballs for `import_file`.
//!
//! Blobs inside a tarball are not copied out: they are sent straight from their offset in
//! the file. An OCI layout is pushed byte for byte, so digests (of indexes too) are kept.
//! Uncompressed layers of a `docker save` (Docker 25 and later write theirs as an OCI layout
//! too) are gzipped, in parallel.

use std::collections::HashMap;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::blob::Body;
use crate::compression::{compress_to, open_layer, sniff, Codec, Compression, Encoding};
use crate::error::Error;
use crate::hash::HashingReader;
use crate::image::{
    is_index, null_as_default, Blob, Image, ImageConfig, ImageIndex, ImageManifest, KnownLayer,
    RawManifest,
};
use crate::image::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use crate::reference::Digest;
use crate::time::format_rfc3339;

fn bad(path: &Path, reason: impl Into<crate::error::Cause>) -> Error {
    Error::Input {
        path: path.display().to_string(),
        source: reason.into(),
    }
}

/// The most read of `manifest.json`, `index.json` or a manifest blob.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The most read of an image config (`docker save`'s `Config`).
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// A member name as `manifest.json` or a tar header gives it, made relative and plain
/// (`./a//b` is `a/b`); an absolute name or one with a `..` component is refused, as it
/// names something outside the archive.
fn member_name(name: &str) -> Result<String, &'static str> {
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("has a .. component"),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("is empty");
    }
    Ok(parts.join("/"))
}

/// The files of an image on disk: a directory (its canonical path), or the members of a
/// tarball by offset.
enum Files {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Files {
    fn open(path: &Path) -> Result<Files, Error> {
        let meta = std::fs::metadata(path).map_err(|e| bad(path, e))?;
        if meta.is_dir() {
            let root = std::fs::canonicalize(path).map_err(|e| bad(path, e))?;
            return Ok(Files::Dir(root));
        }
        let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let entries = archive
            .entries_with_seek()
            .map_err(|e| bad(path, format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(path, format!("not a tar archive: {e}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            // A member that names itself outside the archive cannot be named from inside it.
            let Ok(name) = member_name(&String::from_utf8_lossy(&entry.path_bytes())) else {
                continue;
            };
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        if members.is_empty() {
            return Err(bad(path, "not a tar archive (no files in it)"));
        }
        Ok(Files::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    fn describe(&self) -> &Path {
        match self {
            Files::Dir(p) => p,
            Files::Tar { path, .. } => path,
        }
    }

    /// Where a member's bytes are (file, offset, length), or `None` when it is not there. A
    /// name leading outside the archive or directory (`..`, absolute, through a symlink) is
    /// an error, never followed.
    fn locate(&self, name: &str) -> Result<Option<(PathBuf, u64, u64)>, Error> {
        let refused = |why: &str| {
            bad(
                self.describe(),
                format!("member {} {why}, outside the image", super::quote(name)),
            )
        };
        let clean = member_name(name).map_err(refused)?;
        match self {
            Files::Dir(root) => {
                // Not there, or not reachable: missing, as `is_file` would say.
                let Ok(path) = std::fs::canonicalize(root.join(&clean)) else {
                    return Ok(None);
                };
                if !path.starts_with(root) {
                    return Err(refused("leads through a symlink"));
                }
                let meta = std::fs::metadata(&path).map_err(|e| bad(&path, e))?;
                if !meta.is_file() {
                    return Ok(None);
                }
                Ok(Some((path, 0, meta.len())))
            }
            Files::Tar { path, members } => Ok(members
                .get(&clean)
                .map(|&(offset, len)| (path.clone(), offset, len))),
        }
    }

    fn has(&self, name: &str) -> Result<bool, Error> {
        Ok(self.locate(name)?.is_some())
    }

    /// The body that sends this member, and its size.
    fn body(&self, name: &str) -> Result<(Body, u64), Error> {
        let (path, offset, len) = self.locate(name)?.ok_or_else(|| {
            bad(
                self.describe(),
                format!("{} is missing", super::quote(name)),
            )
        })?;
        Ok((Body::File { path, offset, len }, len))
    }

    fn reader(&self, name: &str) -> Result<Box<dyn Read>, Error> {
        let (body, _) = self.body(name)?;
        let Body::File { path, offset, len } = body else {
            unreachable!("files are file bodies")
        };
        let mut f = std::fs::File::open(&path).map_err(|e| bad(&path, e))?;
        f.seek(io::SeekFrom::Start(offset))
            .map_err(|e| bad(&path, e))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f.take(len))))
    }

    /// A small member (manifest, config), at most `limit` bytes.
    fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, Error> {
        let (_, len) = self.body(name)?;
        if len > limit {
            return Err(bad(
                self.describe(),
                format!(
                    "{} is larger than the {} limit",
                    super::quote(name),
                    super::size(limit)
                ),
            ));
        }
        let mut out = Vec::with_capacity(len as usize);
        self.reader(name)?
            .read_to_end(&mut out)
            .map_err(|e| bad(self.describe(), e))?;
        Ok(out)
    }
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads an image given as `image`, `load_file` or `load`: an OCI layout (directory or
/// tarball) when it has `index.json`, else a `docker save` tarball. `staging` receives
/// layers that have to be compressed.
///
/// `name` (`repository:tag`, from `load_repository`/`load_tag`) picks the image of a `docker
/// save` archive whose `RepoTags` has it, as `docker load` + `docker tag` would; without it the
/// first image is taken.
///
/// A raw layer of a `docker save` archive whose diff id is one of `known` (the base image's
/// layers, after a build) is not compressed: the image refers to the known blob instead.
pub(crate) fn read_image(
    path: &Path,
    staging: &Path,
    name: Option<&str>,
    encoding: Encoding,
    known: &[KnownLayer],
) -> Result<Image, Error> {
    let files = Files::open(path)?;
    if files.has("index.json")? && files.has("oci-layout")? {
        let image = read_oci_layout(&files)?;
        // `docker save` since Docker 25 writes its raw layers as an OCI layout too: pushed as
        // `docker push` would push them, compressed.
        if has_raw_layers(&image.top) && files.has("manifest.json")? {
            return read_docker_archive(&files, staging, name, encoding, known);
        }
        return Ok(image);
    }
    if files.has("manifest.json")? {
        return read_docker_archive(&files, staging, name, encoding, known);
    }
    Err(bad(
        path,
        "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
    ))
}

fn read_oci_layout(files: &Files) -> Result<Image, Error> {
    let index_bytes = files.read_small("index.json", MAX_MANIFEST_BYTES)?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes).map_err(|e| {
        bad(
            files.describe(),
            format!(
                "index.json is not an image index: {}",
                super::clip(&e.to_string())
            ),
        )
    })?;
    // Entries whose manifest has a `subject` refer to another entry (signatures, SBOMs):
    // they are set aside. One entry left: that manifest or index is the image. Several:
    // index.json itself is the (multi-platform) image, as `in` with `format: oci-layout`
    // writes it.
    let mut referring = Vec::new();
    let mut entries = Vec::new();
    for entry in &index.manifests {
        let bytes = read_verified(files, &entry.digest)?;
        if has_subject(&bytes) {
            referring.push((entry, bytes));
        } else {
            entries.push(entry.clone());
        }
    }
    let index_bytes = if referring.is_empty() || entries.len() < 2 {
        index_bytes
    } else {
        return Err(bad(
            files.describe(),
            "index.json lists several images and manifests that refer to them: push the images and their referrers separately",
        ));
    };
    let top = match entries.as_slice() {
        [] => return Err(bad(files.describe(), "index.json lists no image")),
        [one] => {
            let bytes = read_verified(files, &one.digest)?;
            RawManifest {
                digest: one.digest.clone(),
                media_type: media_type_of(&one.media_type, &bytes),
                bytes,
            }
        }
        _ => RawManifest {
            digest: Digest::of(&index_bytes),
            media_type: OCI_INDEX.to_string(),
            bytes: index_bytes,
        },
    };
    let top = unwrap_index(files, top)?;
    let mut image = Image {
        blobs: Vec::new(),
        children: Vec::new(),
        image_id: None,
        top: top.clone(),
        referrers: Vec::new(),
    };
    if is_index(&top.media_type, &top.bytes) {
        let idx: ImageIndex = serde_json::from_slice(&top.bytes).map_err(|e| {
            bad(
                files.describe(),
                format!(
                    "{}: not an image index: {}",
                    top.digest,
                    super::clip(&e.to_string())
                ),
            )
        })?;
        for child in &idx.manifests {
            let bytes = read_verified(files, &child.digest)?;
            add_manifest_blobs(files, &bytes, &child.digest, &mut image)?;
            image.children.push(RawManifest {
                digest: child.digest.clone(),
                media_type: media_type_of(&child.media_type, &bytes),
                bytes,
            });
        }
    } else {
        let id = add_manifest_blobs(files, &top.bytes, &top.digest, &mut image)?;
        image.image_id = Some(id);
    }
    for (entry, bytes) in referring {
        let mut blobs = Image {
            top: top.clone(),
            children: Vec::new(),
            blobs: Vec::new(),
            image_id: None,
            referrers: Vec::new(),
        };
        add_manifest_blobs(files, &bytes, &entry.digest, &mut blobs)?;
        image.referrers.push(crate::image::Attached {
            manifest: RawManifest {
                digest: entry.digest.clone(),
                media_type: media_type_of(&entry.media_type, &bytes),
                bytes,
            },
            blobs: blobs.blobs,
        });
    }
    Ok(image)
}

/// Does this image manifest list uncompressed layers?
fn has_raw_layers(top: &RawManifest) -> bool {
    serde_json::from_slice::<ImageManifest>(&top.bytes).is_ok_and(|m| {
        (m.layers.iter()).any(|l| l.media_type == "application/vnd.oci.image.layer.v1.tar")
    })
}

/// Indexes that only wrap another index, unwrapped at most this many times.
const MAX_INDEX_WRAPS: usize = 4;

/// An index whose one entry is another index without a platform only wraps it (as some
/// exporters write what BuildKit gave them): the inner index is the image. Registries take
/// an index of images, not an index of an index.
fn unwrap_index(files: &Files, mut top: RawManifest) -> Result<RawManifest, Error> {
    for _ in 0..MAX_INDEX_WRAPS {
        if !is_index(&top.media_type, &top.bytes) {
            break;
        }
        let Ok(index) = serde_json::from_slice::<ImageIndex>(&top.bytes) else {
            break;
        };
        let [only] = index.manifests.as_slice() else {
            break;
        };
        if only.platform.is_some() {
            break;
        }
        let bytes = read_verified(files, &only.digest)?;
        let media_type = media_type_of(&only.media_type, &bytes);
        if !is_index(&media_type, &bytes) {
            break;
        }
        tracing::debug!("{} only wraps the index {}", top.digest, only.digest);
        top = RawManifest {
            digest: only.digest.clone(),
            media_type,
            bytes,
        };
    }
    Ok(top)
}

/// Whether a manifest refers to another (has a `subject`).
fn has_subject(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Subject {
        subject: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Subject>(bytes).is_ok_and(|s| s.subject.is_some())
}

/// Adds a manifest's config and layers to the image; returns the config digest.
fn add_manifest_blobs(
    files: &Files,
    bytes: &[u8],
    digest: &Digest,
    image: &mut Image,
) -> Result<Digest, Error> {
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|e| {
        bad(
            files.describe(),
            format!(
                "{digest}: not an image manifest: {}",
                super::clip(&e.to_string())
            ),
        )
    })?;
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if image.blobs.iter().any(|b| b.digest == d.digest) {
            continue;
        }
        let (body, size) = files.body(&blob_name(&d.digest))?;
        if size != d.size {
            return Err(bad(
                files.describe(),
                format!(
                    "blob {} has {size} bytes, its descriptor says {}",
                    d.digest, d.size
                ),
            ));
        }
        image.blobs.push(Blob {
            digest: d.digest.clone(),
            size,
            body,
        });
    }
    Ok(manifest.config.digest)
}

/// A manifest blob, checked against its digest.
fn read_verified(files: &Files, digest: &Digest) -> Result<Vec<u8>, Error> {
    let bytes = files.read_small(&blob_name(digest), MAX_MANIFEST_BYTES)?;
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(bad(
            files.describe(),
            format!("blob {digest} has digest {actual}"),
        ));
    }
    Ok(bytes)
}

fn media_type_of(declared: &str, bytes: &[u8]) -> String {
    if !declared.is_empty() {
        return declared.to_string();
    }
    #[derive(Deserialize)]
    struct M {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<M>(bytes)
        .ok()
        .and_then(|m| m.media_type)
        .unwrap_or_else(|| {
            if is_index("", bytes) {
                OCI_INDEX.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default, rename = "RepoTags", deserialize_with = "null_as_default")]
    repo_tags: Vec<String>,
    #[serde(default)]
    layers: Vec<String>,
}

fn no_image_named(entries: &[SaveEntry], name: &str) -> String {
    let tags: Vec<&str> = entries
        .iter()
        .flat_map(|e| e.repo_tags.iter().map(String::as_str))
        .collect();
    let has = if tags.is_empty() {
        "no names".to_string()
    } else {
        tags.join(", ")
    };
    format!("holds no image named {name} (params.load_repository/load_tag); it has: {has}")
}

/// The entry whose `RepoTags` names `wanted` (both read as image references, so
/// `busybox:latest` and `docker.io/library/busybox:latest` are one); an archive of one image
/// saved without a name is that image.
fn choose_named<'a>(entries: &'a [SaveEntry], wanted: &str) -> Option<&'a SaveEntry> {
    fn normalise(name: &str) -> Option<(crate::reference::Repository, String)> {
        let (repo, tag) = match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (name, "latest"),
        };
        Some((repo.parse().ok()?, tag.to_string()))
    }
    let want = normalise(wanted)?;
    let named = entries.iter().find(|e| {
        e.repo_tags
            .iter()
            .any(|t| normalise(t).as_ref() == Some(&want))
    });
    match (named, entries) {
        (Some(e), _) => Some(e),
        (None, [only]) if only.repo_tags.is_empty() => Some(only),
        _ => None,
    }
}

/// A layer ready to push: compressed, with its digest, size and media type.
struct PreparedLayer {
    digest: Digest,
    size: u64,
    body: Body,
    zstd: bool,
}

fn read_docker_archive(
    files: &Files,
    staging: &Path,
    name: Option<&str>,
    encoding: Encoding,
    known: &[KnownLayer],
) -> Result<Image, Error> {
    let entries: Vec<SaveEntry> = serde_json::from_slice(
        &files.read_small("manifest.json", MAX_MANIFEST_BYTES)?,
    )
    .map_err(|e| {
        bad(
            files.describe(),
            format!(
                "manifest.json is not a docker save manifest: {}",
                super::clip(&e.to_string())
            ),
        )
    })?;
    let entry = match name {
        Some(name) => choose_named(&entries, name)
            .ok_or_else(|| bad(files.describe(), no_image_named(&entries, name)))?,
        None => entries
            .first()
            .ok_or_else(|| bad(files.describe(), "manifest.json lists no image"))?,
    };
    if name.is_none() && entries.len() > 1 {
        tracing::warn!(
            "{} holds {} images; pushing the first",
            files.describe().display(),
            entries.len()
        );
    }
    let config = files.read_small(&entry.config, MAX_CONFIG_BYTES)?;
    let config_digest = Digest::of(&config);
    std::fs::create_dir_all(staging).map_err(|e| bad(staging, e))?;
    // The daemon's own diff ids (it hashed the layers it wrote): layer i is diff_ids[i].
    let diff_ids = serde_json::from_slice::<ImageConfig>(&config)
        .ok()
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids)
        .unwrap_or_default();
    let reused = |i: usize| {
        let diff_id = diff_ids.get(i)?;
        let k = known.iter().find(|k| &k.diff_id == diff_id)?;
        let zstd = match k.layer.media_type.as_str() {
            DOCKER_LAYER_GZIP | OCI_LAYER_GZIP => false,
            OCI_LAYER_ZSTD => true,
            _ => return None,
        };
        tracing::debug!(
            "layer {diff_id} is {} of {}: not compressed again",
            k.layer.digest.short(),
            k.repository
        );
        Some(PreparedLayer {
            digest: k.layer.digest.clone(),
            size: k.layer.size,
            body: Body::Elsewhere {
                repository: k.repository.clone(),
                path: staging.join(format!("base-{}", k.layer.digest.hex())),
                len: k.layer.size,
            },
            zstd,
        })
    };
    // Each layer on its own thread: hashing or gzipping is the slow part.
    let prepared: Vec<Result<PreparedLayer, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = entry
            .layers
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let reused = reused(i);
                scope.spawn(move || {
                    if let Some(layer) = reused {
                        return Ok(layer);
                    }
                    let out = staging.join(format!("layer-{i}.tar.{}", encoding.codec.name()));
                    prepare_layer(files, name, &out, encoding)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(bad(files.describe(), "a layer thread failed")))
            })
            .collect()
    });
    let layers = prepared.into_iter().collect::<Result<Vec<_>, _>>()?;
    let oci = layers.iter().any(|l| l.zstd);
    // zstd layers need OCI media types: docker's manifest has none for them.
    let (manifest_type, config_type, gzip_type, zstd_type) = if oci {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ZSTD)
    } else {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP, "")
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "size": config.len(), "digest": config_digest},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": if l.zstd { zstd_type } else { gzip_type },
            "size": l.size,
            "digest": l.digest,
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).expect("serialisable");
    let mut blobs = vec![Blob {
        digest: config_digest.clone(),
        size: config.len() as u64,
        body: Body::Bytes {
            bytes: config,
            content_type: "application/octet-stream".into(),
        },
    }];
    for l in layers {
        if !blobs.iter().any(|b| b.digest == l.digest) {
            blobs.push(Blob {
                digest: l.digest,
                size: l.size,
                body: l.body,
            });
        }
    }
    Ok(Image {
        blobs,
        children: Vec::new(),
        referrers: Vec::new(),
        top: RawManifest {
            digest: Digest::of(&bytes),
            media_type: manifest_type.to_string(),
            bytes,
        },
        image_id: Some(config_digest),
    })
}

/// A compressed layer is sent as it is (hashed); an uncompressed one is compressed to `out`
/// as `encoding` says.
fn prepare_layer(
    files: &Files,
    name: &str,
    out: &Path,
    encoding: Encoding,
) -> Result<PreparedLayer, Error> {
    let mut head = [0u8; 4];
    let n = files
        .reader(name)?
        .read(&mut head)
        .map_err(|e| bad(files.describe(), e))?;
    match sniff(&head[..n]) {
        kind @ (Compression::Gzip | Compression::Zstd) => {
            let (body, size) = files.body(name)?;
            let (digest, _) = crate::hash::digest_of(files.reader(name)?)
                .map_err(|e| bad(files.describe(), e))?;
            Ok(PreparedLayer {
                digest,
                size,
                body,
                zstd: kind == Compression::Zstd,
            })
        }
        Compression::None => {
            let (digest, size) =
                compress_to(files.reader(name)?, out, encoding).map_err(|e| bad(out, e))?;
            Ok(PreparedLayer {
                digest,
                size,
                body: Body::File {
                    path: out.to_path_buf(),
                    offset: 0,
                    len: size,
                },
                zstd: encoding.codec == Codec::Zstd,
            })
        }
    }
}

/// `import_file`: a rootfs tarball (plain or compressed) as a one-layer image, as
/// `docker import` makes it.
pub(crate) fn import_rootfs(
    path: &Path,
    staging: &Path,
    encoding: Encoding,
) -> Result<Image, Error> {
    std::fs::create_dir_all(staging).map_err(|e| bad(staging, e))?;
    let layer_path = staging.join(format!("import.tar.{}", encoding.codec.name()));
    let input = open_layer(path).map_err(|e| bad(path, e))?;
    // Hash the uncompressed stream (the diff id) while gzipping it.
    let mut reader = HashingReader::new(input);
    let (digest, size) =
        compress_to(&mut reader, &layer_path, encoding).map_err(|e| bad(path, e))?;
    let diff_id = reader.digest();
    let architecture = crate::image::host_architecture();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "created": format_rfc3339(std::time::SystemTime::now()),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "dockhand import_file"}],
    }))
    .expect("serialisable");
    let config_digest = Digest::of(&config);
    let (manifest_type, config_type, layer_type) = match encoding.codec {
        Codec::Gzip => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
        Codec::Zstd => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_ZSTD),
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": layer_type, "size": size, "digest": digest}],
    }))
    .expect("serialisable");
    Ok(Image {
        referrers: Vec::new(),
        blobs: vec![
            Blob {
                digest: config_digest.clone(),
                size: config.len() as u64,
                body: Body::Bytes {
                    bytes: config,
                    content_type: "application/octet-stream".into(),
                },
            },
            Blob {
                digest,
                size,
                body: Body::File {
                    path: layer_path,
                    offset: 0,
                    len: size,
                },
            },
        ],
        children: Vec::new(),
        top: RawManifest {
            digest: Digest::of(&manifest),
            media_type: manifest_type.to_string(),
            bytes: manifest,
        },
        image_id: Some(config_digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `docker save` directory whose manifest.json names `config` and `layer`.
    fn save_dir(config: &str, layer: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::create_dir(&image).unwrap();
        std::fs::write(image.join("config.json"), "{}").unwrap();
        std::fs::write(image.join("layer.tar"), vec![0u8; 1024]).unwrap();
        let manifest = serde_json::json!([{"Config": config, "Layers": [layer]}]);
        std::fs::write(image.join("manifest.json"), manifest.to_string()).unwrap();
        std::fs::write(dir.path().join("secret"), "outside").unwrap();
        dir
    }

    #[test]
    fn a_docker_25_save_is_pushed_with_its_raw_layers_compressed() {
        // The shape of `docker save` since Docker 25: an OCI layout of raw layers, and
        // manifest.json naming the same blobs.
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let digest = Digest::of(bytes);
            std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
            digest
        };
        let mut layer = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        layer
            .append_data(&mut header, "hello", &b"hello"[..])
            .unwrap();
        let layer = layer.into_inner().unwrap();
        let layer_digest = put(&layer);
        let config = serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}})
        .to_string();
        let config_digest = put(config.as_bytes());
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest, "size": layer.len()}]})
        .to_string();
        let manifest_digest = put(manifest.as_bytes());
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST,
            "digest": manifest_digest, "size": manifest.len()}]});
        std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let save = serde_json::json!([{"Config": format!("blobs/sha256/{}", config_digest.hex()),
            "RepoTags": ["x:1"], "Layers": [format!("blobs/sha256/{}", layer_digest.hex())]}]);
        std::fs::write(dir.path().join("manifest.json"), save.to_string()).unwrap();

        let staging = tempfile::tempdir().unwrap();
        let image = read_image(dir.path(), staging.path(), None, Encoding::default(), &[]).unwrap();
        let pushed: ImageManifest = serde_json::from_slice(&image.top.bytes).unwrap();
        assert_eq!(pushed.layers[0].media_type, DOCKER_LAYER_GZIP);
        assert_ne!(pushed.layers[0].digest, layer_digest);
        assert_eq!(image.image_id, Some(config_digest));

        // Without manifest.json it is an OCI layout like any other: pushed byte for byte.
        std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
        let image = read_image(dir.path(), staging.path(), None, Encoding::default(), &[]).unwrap();
        assert_eq!(image.top.digest, manifest_digest);
    }

    fn refused(dir: &tempfile::TempDir) -> String {
        let staging = dir.path().join("staging");
        match read_image(
            &dir.path().join("image"),
            &staging,
            None,
            Encoding::default(),
            &[],
        ) {
            Ok(_) => panic!("read an image naming a file outside it"),
            Err(e) => crate::report::chain(&e),
        }
    }

    #[test]
    fn member_names_are_made_plain_and_never_lead_out() {
        assert_eq!(member_name("./a//b/./c"), Ok("a/b/c".to_string()));
        assert_eq!(member_name("/etc/passwd"), Err("is an absolute path"));
        assert_eq!(member_name("a/../../b"), Err("has a .. component"));
        assert_eq!(member_name("./"), Err("is empty"));
    }

    #[test]
    fn a_docker_save_directory_naming_files_outside_it_is_refused() {
        for (config, layer, want) in [
            (
                "../secret",
                "layer.tar",
                r#"member "../secret" has a .. component"#,
            ),
            (
                "config.json",
                "../../../../../../../etc/passwd",
                "has a .. component",
            ),
            ("/etc/passwd", "layer.tar", "is an absolute path"),
        ] {
            let dir = save_dir(config, layer);
            let err = refused(&dir);
            assert!(err.contains(want), "{err}");
            assert!(err.contains("/image: member "), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // Through a symlink inside the directory: to a file and to a directory.
        let dir = save_dir("config.json", "up/secret");
        std::os::unix::fs::symlink("..", dir.path().join("image/up")).unwrap();
        assert!(refused(&dir).contains(r#"member "up/secret" leads through a symlink"#));
        let dir = save_dir("link", "layer.tar");
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("image/link"))
            .unwrap();
        assert!(refused(&dir).contains("leads through a symlink"));
        // A symlink that stays inside is followed.
        let dir = save_dir("link", "layer.tar");
        std::os::unix::fs::symlink("config.json", dir.path().join("image/link")).unwrap();
        read_image(
            &dir.path().join("image"),
            &dir.path().join("staging"),
            None,
            Encoding::default(),
            &[],
        )
        .unwrap();
    }

    #[test]
    fn a_docker_save_tarball_naming_members_outside_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let manifest = serde_json::json!([{"Config": "/etc/passwd", "Layers": []}]).to_string();
        let mut header = tar::Header::new_gnu();
        header.set_size(manifest.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, "manifest.json", manifest.as_bytes())
            .unwrap();
        tar.finish().unwrap();
        drop(tar);
        let err = refused(&dir);
        assert!(
            err.contains(r#"member "/etc/passwd" is an absolute path"#),
            "{err}"
        );
    }

    #[test]
    fn an_oci_layout_names_blobs_by_valid_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::create_dir_all(image.join("blobs/sha256")).unwrap();
        std::fs::write(
            image.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "size": 7, "digest": "sha256:../../../../etc/passwd"}]});
        std::fs::write(image.join("index.json"), index.to_string()).unwrap();
        let err = refused(&dir);
        assert!(err.contains("is not a valid digest"), "{err}");

        // A blob that is a symlink out of the layout.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "outside").unwrap();
        let digest = Digest::of(b"outside");
        std::os::unix::fs::symlink(&secret, image.join(blob_name(&digest))).unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "size": 7, "digest": digest}]});
        std::fs::write(image.join("index.json"), index.to_string()).unwrap();
        let err = refused(&dir);
        assert!(err.contains("leads through a symlink"), "{err}");
    }

    #[test]
    fn manifests_over_the_limit_are_refused_before_reading() {
        let dir = save_dir("config.json", "layer.tar");
        let manifest = dir.path().join("image/manifest.json");
        let file = std::fs::File::create(&manifest).unwrap();
        file.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
        let err = refused(&dir);
        assert!(
            err.contains(r#""manifest.json" is larger than the 4 MiB limit"#),
            "{err}"
        );
    }

    #[test]
    fn a_parser_error_quoting_input_stays_short() {
        let dir = save_dir("config.json", "layer.tar");
        let long = "x".repeat(1 << 20);
        let manifest = serde_json::json!([{"Config": 1, "Layers": [long]}]).to_string();
        std::fs::write(dir.path().join("image/manifest.json"), manifest).unwrap();
        let err = refused(&dir);
        assert!(err.len() < 400, "{err}");
        let manifest = serde_json::json!(long).to_string();
        std::fs::write(dir.path().join("image/manifest.json"), manifest).unwrap();
        let err = refused(&dir);
        assert!(err.len() < 400, "{err}");
    }
}
