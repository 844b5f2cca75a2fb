//! Test images made in-process, without a daemon: layers built with `tar` (gzip, zstd or
//! uncompressed), config and manifest JSON written by hand, stored as an OCI image layout
//! (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>), so every digest
//! is known before anything is pushed.
//!
//! ```ignore
//! let image = ImageBuilder::new()
//!     .layer(vec![Entry::dir("etc"), Entry::file("etc/motd", "hi").mode(0o600).owner(1, 2)])
//!     .layer(vec![Entry::whiteout("etc/motd"), Entry::opaque("var")])
//!     .user("1000").entrypoint(&["/bin/sh", "-c"]).label("a", "b");
//! let built = image.write_layout(dir, "latest"); // built.digest, built.config_digest, ...
//! let index = IndexBuilder::new().image(image.clone().platform(ARM64)).image(image);
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Fixed mtime of entries that do not set one, so layers are reproducible.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Metadata overrides for an entry (see [`Entry::mode`], [`Entry::owner`], [`Entry::mtime`]).
#[derive(Clone, Debug, Default)]
pub struct Meta {
    pub mode: Option<u32>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub mtime: Option<u64>,
    pub uname: Option<String>,
    pub gname: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// One entry of a layer. Paths are written as given (no leading `./`); long names use GNU
/// long-name records. Use [`Entry::raw`] for names that must reach the header byte for byte.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A regular file, owned by 0:0.
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    Fifo {
        path: String,
    },
    /// A file owned by `uid`/`gid` with `mode` (setuid bits included).
    Owned {
        path: String,
        content: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Device {
        path: String,
        kind: DeviceKind,
        major: u32,
        minor: u32,
    },
    /// Removes `path` from lower layers: an empty file `dir/.wh.name`.
    Whiteout {
        path: String,
    },
    /// Hides everything lower layers put in `dir`: an empty file `dir/.wh..wh..opq`.
    Opaque {
        dir: String,
    },
    /// Name and link bytes written verbatim into a v7 header (at most 100 bytes each), no
    /// normalisation at all: hostile layers (`../x`, `/etc/x`, `a/../../b`, ...).
    Raw {
        name: Vec<u8>,
        kind: tar::EntryType,
        link: Vec<u8>,
        content: Vec<u8>,
    },
    /// Another entry with metadata overrides.
    Meta(Box<Entry>, Meta),
}

impl Entry {
    pub fn file(path: &str, content: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            content: content.into(),
            mode: 0o644,
        }
    }

    /// A file with mode 0755.
    pub fn executable(path: &str, content: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            content: content.into(),
            mode: 0o755,
        }
    }

    pub fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }

    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        }
    }

    pub fn fifo(path: &str) -> Entry {
        Entry::Fifo { path: path.into() }
    }

    pub fn char_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::Device {
            path: path.into(),
            kind: DeviceKind::Char,
            major,
            minor,
        }
    }

    pub fn block_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::Device {
            path: path.into(),
            kind: DeviceKind::Block,
            major,
            minor,
        }
    }

    /// `whiteout("a/b")` writes `a/.wh.b`.
    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout { path: path.into() }
    }

    /// `opaque("a")` writes `a/.wh..wh..opq`.
    pub fn opaque(dir: &str) -> Entry {
        Entry::Opaque { dir: dir.into() }
    }

    pub fn raw(name: &[u8], kind: tar::EntryType, link: &[u8], content: &[u8]) -> Entry {
        Entry::Raw {
            name: name.to_vec(),
            kind,
            link: link.to_vec(),
            content: content.to_vec(),
        }
    }

    pub fn mode(self, mode: u32) -> Entry {
        self.with_meta(|m| m.mode = Some(mode))
    }

    pub fn owner(self, uid: u64, gid: u64) -> Entry {
        self.with_meta(|m| {
            m.uid = Some(uid);
            m.gid = Some(gid);
        })
    }

    pub fn owner_names(self, uname: &str, gname: &str) -> Entry {
        self.with_meta(|m| {
            m.uname = Some(uname.into());
            m.gname = Some(gname.into());
        })
    }

    pub fn mtime(self, mtime: u64) -> Entry {
        self.with_meta(|m| m.mtime = Some(mtime))
    }

    fn with_meta(self, f: impl FnOnce(&mut Meta)) -> Entry {
        match self {
            Entry::Meta(inner, mut meta) => {
                f(&mut meta);
                Entry::Meta(inner, meta)
            }
            other => {
                let mut meta = Meta::default();
                f(&mut meta);
                Entry::Meta(Box::new(other), meta)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    /// A plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
}

/// One layer of an image.
#[derive(Clone, Debug)]
pub enum Layer {
    Entries {
        entries: Vec<Entry>,
        compression: Compression,
    },
    /// A blob used as is: for corrupt or odd layers. `diff_id` goes into the config.
    Blob {
        bytes: Vec<u8>,
        media_type: String,
        diff_id: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub architecture: &'static str,
    pub variant: Option<&'static str>,
}

impl Platform {
    pub const fn new(
        os: &'static str,
        architecture: &'static str,
        variant: Option<&'static str>,
    ) -> Platform {
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// `os/arch[/variant]`
    pub fn name(&self) -> String {
        match self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let mut p = serde_json::json!({"os": self.os, "architecture": self.architecture});
        if let Some(v) = self.variant {
            p["variant"] = v.into();
        }
        p
    }
}

pub const AMD64: Platform = Platform::new("linux", "amd64", None);
pub const ARM64: Platform = Platform::new("linux", "arm64", Some("v8"));
pub const ARM_V7: Platform = Platform::new("linux", "arm", Some("v7"));
pub const ARM_V6: Platform = Platform::new("linux", "arm", Some("v6"));
pub const I386: Platform = Platform::new("linux", "386", None);
pub const PPC64LE: Platform = Platform::new("linux", "ppc64le", None);
pub const S390X: Platform = Platform::new("linux", "s390x", None);
pub const RISCV64: Platform = Platform::new("linux", "riscv64", None);
pub const WINDOWS_AMD64: Platform = Platform::new("windows", "amd64", None);

type Edit = Arc<dyn Fn(&mut serde_json::Value) + Send + Sync>;

/// A single-platform image under construction. Cheap to clone; nothing is written until
/// [`ImageBuilder::write_layout`] (or a push).
#[derive(Clone)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    platform: Platform,
    env: Vec<String>,
    user: Option<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    workdir: Option<String>,
    labels: BTreeMap<String, String>,
    created: Option<String>,
    history: Option<Vec<serde_json::Value>>,
    annotations: BTreeMap<String, String>,
    config_edits: Vec<Edit>,
    manifest_edits: Vec<Edit>,
}

/// The name the existing tests use.
pub type Image = ImageBuilder;

/// A layer as written.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub digest: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    pub size: usize,
    pub media_type: String,
}

/// What was written: the manifest (or index) and, for an image, its config and layers; for
/// an index, its images in order.
#[derive(Clone, Debug)]
pub struct Built {
    /// Digest of the manifest (or index): what a registry reports after a faithful push.
    pub digest: String,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub config_digest: Option<String>,
    /// The config JSON bytes (empty for an index).
    pub config: Vec<u8>,
    pub layers: Vec<BuiltLayer>,
    /// The index's images (empty for an image).
    pub manifests: Vec<Built>,
    pub platform: Option<Platform>,
}

impl Built {
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    pub fn manifest_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.manifest).unwrap()
    }

    pub fn config_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.config).unwrap()
    }

    /// An OCI descriptor of this manifest (with its platform, when known).
    pub fn descriptor(&self) -> serde_json::Value {
        let mut d = serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.manifest.len(),
        });
        if let Some(p) = &self.platform {
            d["platform"] = p.json();
        }
        d
    }

    /// The image for `platform` in an index.
    pub fn for_platform(&self, platform: Platform) -> &Built {
        self.manifests
            .iter()
            .find(|m| m.platform == Some(platform))
            .unwrap_or_else(|| panic!("no {} image in this index", platform.name()))
    }
}

/// An OCI layout in a temporary directory (removed on drop) and what it holds under `tag`.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub tag: String,
    pub built: Built,
}

impl Layout {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn digest(&self) -> &str {
        &self.built.digest
    }
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// No layers, linux/amd64, a default PATH, `Cmd ["/bin/sh"]`, created 2026-01-01.
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            platform: AMD64,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            user: None,
            cmd: Some(vec!["/bin/sh".into()]),
            entrypoint: None,
            workdir: None,
            labels: BTreeMap::new(),
            created: Some("2026-01-01T00:00:00Z".into()),
            history: None,
            annotations: BTreeMap::new(),
            config_edits: Vec::new(),
            manifest_edits: Vec::new(),
        }
    }

    /// A one-layer image whose only file says `marker`, so each marker makes a new digest.
    pub fn marked(marker: &str) -> ImageBuilder {
        ImageBuilder::new().layer(vec![Entry::file("marker.txt", marker.as_bytes().to_vec())])
    }

    /// A runnable image: busybox (static, from the host) as /bin/busybox, /bin/sh, cat, ls.
    pub fn busybox() -> ImageBuilder {
        let busybox = std::fs::read("/bin/busybox")
            .or_else(|_| std::fs::read("/usr/bin/busybox"))
            .expect("busybox-static is installed (ci/test.sh installs it)");
        ImageBuilder::new().layer(vec![
            Entry::dir("bin"),
            Entry::executable("bin/busybox", busybox),
            Entry::symlink("bin/sh", "busybox"),
            Entry::symlink("bin/cat", "busybox"),
            Entry::symlink("bin/ls", "busybox"),
        ])
    }

    /// A gzip layer.
    pub fn layer(self, entries: Vec<Entry>) -> ImageBuilder {
        self.layer_with(entries, Compression::Gzip)
    }

    /// An uncompressed layer.
    pub fn layer_uncompressed(self, entries: Vec<Entry>) -> ImageBuilder {
        self.layer_with(entries, Compression::None)
    }

    pub fn layer_with(mut self, entries: Vec<Entry>, compression: Compression) -> ImageBuilder {
        self.layers.push(Layer::Entries {
            entries,
            compression,
        });
        self
    }

    /// A layer blob used as is (e.g. corrupt gzip); `diff_id` is what the config claims.
    pub fn layer_blob(mut self, bytes: Vec<u8>, media_type: &str, diff_id: &str) -> ImageBuilder {
        self.layers.push(Layer::Blob {
            bytes,
            media_type: media_type.into(),
            diff_id: diff_id.into(),
        });
        self
    }

    pub fn platform(mut self, platform: Platform) -> ImageBuilder {
        self.platform = platform;
        self
    }

    /// Appends `KEY=value` to Env.
    pub fn env(mut self, env: &str) -> ImageBuilder {
        self.env.push(env.into());
        self
    }

    /// Replaces Env entirely.
    pub fn env_exact(mut self, env: &[&str]) -> ImageBuilder {
        self.env = env.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn user(mut self, user: &str) -> ImageBuilder {
        self.user = Some(user.into());
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> ImageBuilder {
        self.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }

    /// No Cmd in the config at all.
    pub fn no_cmd(mut self) -> ImageBuilder {
        self.cmd = None;
        self
    }

    pub fn entrypoint(mut self, entrypoint: &[&str]) -> ImageBuilder {
        self.entrypoint = Some(entrypoint.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn workdir(mut self, dir: &str) -> ImageBuilder {
        self.workdir = Some(dir.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> ImageBuilder {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The config's `created` (RFC 3339).
    pub fn created(mut self, created: &str) -> ImageBuilder {
        self.created = Some(created.into());
        self
    }

    /// No `created` in the config.
    pub fn no_created(mut self) -> ImageBuilder {
        self.created = None;
        self
    }

    /// Replaces the generated history (one `created_by` entry per layer).
    pub fn history(mut self, history: Vec<serde_json::Value>) -> ImageBuilder {
        self.history = Some(history);
        self
    }

    /// A manifest annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> ImageBuilder {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Edits the config JSON just before it is written (anything the setters do not cover).
    pub fn with_config(
        mut self,
        edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
    ) -> ImageBuilder {
        self.config_edits.push(Arc::new(edit));
        self
    }

    /// Edits the manifest JSON just before it is written.
    pub fn with_manifest(
        mut self,
        edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
    ) -> ImageBuilder {
        self.manifest_edits.push(Arc::new(edit));
        self
    }

    pub fn get_platform(&self) -> Platform {
        self.platform
    }

    /// The config JSON this image gets, given its layers' diff_ids.
    fn config(&self, diff_ids: &[String]) -> serde_json::Value {
        let mut inner = serde_json::Map::new();
        inner.insert("Env".into(), serde_json::json!(self.env));
        if let Some(u) = &self.user {
            inner.insert("User".into(), u.clone().into());
        }
        if let Some(c) = &self.cmd {
            inner.insert("Cmd".into(), serde_json::json!(c));
        }
        if let Some(e) = &self.entrypoint {
            inner.insert("Entrypoint".into(), serde_json::json!(e));
        }
        if let Some(w) = &self.workdir {
            inner.insert("WorkingDir".into(), w.clone().into());
        }
        if !self.labels.is_empty() {
            inner.insert("Labels".into(), serde_json::json!(self.labels));
        }
        let history = self.history.clone().unwrap_or_else(|| {
            (0..self.layers.len())
                .map(|i| {
                    let mut h =
                        serde_json::json!({"created_by": format!("dockhand test layer {i}")});
                    if let Some(c) = &self.created {
                        h["created"] = c.clone().into();
                    }
                    h
                })
                .collect()
        });
        let mut config = serde_json::json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": inner,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(v) = self.platform.variant {
            config["variant"] = v.into();
        }
        if let Some(c) = &self.created {
            config["created"] = c.clone().into();
        }
        for edit in &self.config_edits {
            edit(&mut config);
        }
        config
    }

    /// Writes layers, config and manifest into `layout`'s blobs; index.json is not touched.
    pub fn write_blobs(&self, layout: &Path) -> Built {
        init_layout(layout);
        let mut layers = Vec::new();
        for layer in &self.layers {
            let (blob, media_type, diff_id) = match layer {
                Layer::Entries {
                    entries,
                    compression,
                } => {
                    let tar = tar_bytes(entries);
                    let diff_id = sha256(&tar);
                    let (blob, media_type) = compress(tar, *compression);
                    (blob, media_type.to_string(), diff_id)
                }
                Layer::Blob {
                    bytes,
                    media_type,
                    diff_id,
                } => (bytes.clone(), media_type.clone(), diff_id.clone()),
            };
            let digest = write_blob(layout, &blob);
            layers.push(BuiltLayer {
                digest,
                diff_id,
                size: blob.len(),
                media_type,
            });
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config = serde_json::to_vec(&self.config(&diff_ids)).unwrap();
        let config_digest = write_blob(layout, &config);
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = serde_json::json!(self.annotations);
        }
        for edit in &self.manifest_edits {
            edit(&mut manifest);
        }
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = write_blob(layout, &bytes);
        Built {
            digest,
            manifest: bytes,
            media_type: OCI_MANIFEST,
            config_digest: Some(config_digest),
            config,
            layers,
            manifests: Vec::new(),
            platform: Some(self.platform),
        }
    }

    /// Writes a complete OCI layout in `dir` holding this image under `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Built {
        let built = self.write_blobs(dir);
        write_index_json(dir, &built, tag);
        built
    }

    /// Writes a complete OCI layout, tagged `latest`, into a new temporary directory.
    pub fn layout(&self) -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let built = self.write_layout(dir.path(), "latest");
        Layout {
            dir,
            tag: "latest".into(),
            built,
        }
    }
}

/// A multi-platform image: an OCI image index over several images.
#[derive(Clone, Default)]
pub struct IndexBuilder {
    images: Vec<ImageBuilder>,
    extra: Vec<serde_json::Value>,
    annotations: BTreeMap<String, String>,
    edits: Vec<Edit>,
}

impl IndexBuilder {
    pub fn new() -> IndexBuilder {
        IndexBuilder::default()
    }

    /// One marked image per platform (marker + platform name, so each has its own digest).
    pub fn platforms(marker: &str, platforms: &[Platform]) -> IndexBuilder {
        platforms.iter().fold(IndexBuilder::new(), |index, p| {
            index.image(ImageBuilder::marked(&format!("{marker} {}", p.name())).platform(*p))
        })
    }

    /// Adds an image; its descriptor in the index carries its platform.
    pub fn image(mut self, image: ImageBuilder) -> IndexBuilder {
        self.images.push(image);
        self
    }

    /// Adds a descriptor as is (after the images), e.g. an attestation manifest with
    /// platform unknown/unknown, or one whose blob does not exist.
    pub fn descriptor(mut self, descriptor: serde_json::Value) -> IndexBuilder {
        self.extra.push(descriptor);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> IndexBuilder {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Edits the index JSON just before it is written.
    pub fn with_index(
        mut self,
        edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
    ) -> IndexBuilder {
        self.edits.push(Arc::new(edit));
        self
    }

    pub fn write_blobs(&self, layout: &Path) -> Built {
        init_layout(layout);
        let manifests: Vec<Built> = self.images.iter().map(|i| i.write_blobs(layout)).collect();
        let mut descriptors: Vec<serde_json::Value> =
            manifests.iter().map(Built::descriptor).collect();
        descriptors.extend(self.extra.iter().cloned());
        let mut index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": descriptors,
        });
        if !self.annotations.is_empty() {
            index["annotations"] = serde_json::json!(self.annotations);
        }
        for edit in &self.edits {
            edit(&mut index);
        }
        let bytes = serde_json::to_vec(&index).unwrap();
        let digest = write_blob(layout, &bytes);
        Built {
            digest,
            manifest: bytes,
            media_type: OCI_INDEX,
            config_digest: None,
            config: Vec::new(),
            layers: Vec::new(),
            manifests,
            platform: None,
        }
    }

    pub fn write_layout(&self, dir: &Path, tag: &str) -> Built {
        let built = self.write_blobs(dir);
        write_index_json(dir, &built, tag);
        built
    }

    pub fn layout(&self) -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let built = self.write_layout(dir.path(), "latest");
        Layout {
            dir,
            tag: "latest".into(),
            built,
        }
    }
}

/// A multi-platform image over `images` in `dir`, tagged `tag` (the older spelling of
/// `IndexBuilder`).
pub fn write_index_layout(dir: &Path, images: &[ImageBuilder], tag: &str) -> Built {
    images
        .iter()
        .fold(IndexBuilder::new(), |index, image| {
            index.image(image.clone())
        })
        .write_layout(dir, tag)
}

fn init_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Points index.json at `built` under `tag`, keeping other tags already there.
fn write_index_json(dir: &Path, built: &Built, tag: &str) {
    let path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default();
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    let mut descriptor = built.descriptor();
    descriptor["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    manifests.push(descriptor);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Stores `bytes` in the layout's blobs; returns the digest.
pub fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let path: PathBuf = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::write(path, bytes).unwrap();
    digest
}

/// Compresses a tar; returns the blob and its OCI media type.
pub fn compress(tar: Vec<u8>, compression: Compression) -> (Vec<u8>, &'static str) {
    match compression {
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            (gz.finish().unwrap(), OCI_LAYER_GZIP)
        }
        Compression::Zstd => (zstd::encode_all(tar.as_slice(), 3).unwrap(), OCI_LAYER_ZSTD),
        Compression::None => (tar, OCI_LAYER_TAR),
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(DEFAULT_MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn apply_meta(h: &mut tar::Header, meta: &Meta) {
    if let Some(m) = meta.mode {
        h.set_mode(m);
    }
    if let Some(u) = meta.uid {
        h.set_uid(u);
    }
    if let Some(g) = meta.gid {
        h.set_gid(g);
    }
    if let Some(t) = meta.mtime {
        h.set_mtime(t);
    }
    if let Some(n) = &meta.uname {
        h.set_username(n).unwrap();
    }
    if let Some(n) = &meta.gname {
        h.set_groupname(n).unwrap();
    }
}

fn parent_and_name(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn append(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry, meta: &Meta) {
    let data = |b: &mut tar::Builder<Vec<u8>>, mut h: tar::Header, path: &str, content: &[u8]| {
        apply_meta(&mut h, meta);
        b.append_data(&mut h, path, content).unwrap();
    };
    match entry {
        Entry::File {
            path,
            content,
            mode,
        } => data(
            builder,
            header(tar::EntryType::Regular, *mode, content.len() as u64),
            path,
            content,
        ),
        Entry::Owned {
            path,
            content,
            mode,
            uid,
            gid,
        } => {
            let mut h = header(tar::EntryType::Regular, *mode, content.len() as u64);
            h.set_uid(*uid);
            h.set_gid(*gid);
            data(builder, h, path, content)
        }
        Entry::Dir { path, mode } => data(
            builder,
            header(tar::EntryType::Directory, *mode, 0),
            path,
            &[],
        ),
        Entry::Fifo { path } => data(builder, header(tar::EntryType::Fifo, 0o644, 0), path, &[]),
        Entry::Device {
            path,
            kind,
            major,
            minor,
        } => {
            let t = match kind {
                DeviceKind::Char => tar::EntryType::Char,
                DeviceKind::Block => tar::EntryType::Block,
            };
            let mut h = header(t, 0o666, 0);
            h.set_device_major(*major).unwrap();
            h.set_device_minor(*minor).unwrap();
            data(builder, h, path, &[])
        }
        Entry::Whiteout { path } => {
            let (dir, name) = parent_and_name(path);
            data(
                builder,
                header(tar::EntryType::Regular, 0o644, 0),
                &join(dir, &format!(".wh.{name}")),
                &[],
            )
        }
        Entry::Opaque { dir } => data(
            builder,
            header(tar::EntryType::Regular, 0o644, 0),
            &join(dir.trim_end_matches('/'), ".wh..wh..opq"),
            &[],
        ),
        Entry::Symlink { path, target } | Entry::Hardlink { path, target } => {
            let kind = if matches!(entry, Entry::Symlink { .. }) {
                tar::EntryType::Symlink
            } else {
                tar::EntryType::Link
            };
            let mode = if kind == tar::EntryType::Symlink {
                0o777
            } else {
                0o644
            };
            let mut h = header(kind, mode, 0);
            apply_meta(&mut h, meta);
            builder.append_link(&mut h, path, target).unwrap();
        }
        Entry::Raw {
            name,
            kind,
            link,
            content,
        } => {
            assert!(
                name.len() <= 100 && link.len() <= 100,
                "raw names fit in 100 bytes"
            );
            let mut h = tar::Header::new_old();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_mtime(DEFAULT_MTIME);
            h.set_size(content.len() as u64);
            apply_meta(&mut h, meta);
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link);
            h.set_cksum();
            builder.append(&h, content.as_slice()).unwrap();
        }
        Entry::Meta(inner, outer) => {
            let mut merged = outer.clone();
            // Inner overrides are applied first, outer ones win.
            if let Entry::Meta(_, m) = inner.as_ref() {
                merged = merge(m, outer);
            }
            let inner = match inner.as_ref() {
                Entry::Meta(e, _) => e.as_ref(),
                e => e,
            };
            append(builder, inner, &merged);
        }
    }
}

fn merge(a: &Meta, b: &Meta) -> Meta {
    Meta {
        mode: b.mode.or(a.mode),
        uid: b.uid.or(a.uid),
        gid: b.gid.or(a.gid),
        mtime: b.mtime.or(a.mtime),
        uname: b.uname.clone().or(a.uname.clone()),
        gname: b.gname.clone().or(a.gname.clone()),
    }
}

/// The uncompressed tar of a layer.
pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        append(&mut builder, entry, &Meta::default());
    }
    builder.into_inner().unwrap()
}
