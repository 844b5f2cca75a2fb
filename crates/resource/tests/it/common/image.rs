//! Test images made in-process, without a daemon: layers built with `tar`, an OCI image
//! layout written by hand (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>),
//! so every digest is known before anything is pushed.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a layer.
pub enum Entry {
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
    /// Name and link bytes written verbatim into the header: hostile layers.
    Raw {
        name: Vec<u8>,
        kind: tar::EntryType,
        link: Vec<u8>,
        content: Vec<u8>,
    },
}

impl Entry {
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

    pub fn raw(name: &[u8], kind: tar::EntryType, link: &[u8], content: &[u8]) -> Entry {
        Entry::Raw {
            name: name.to_vec(),
            kind,
            link: link.to_vec(),
            content: content.to_vec(),
        }
    }

    pub fn file(path: &str, content: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            content: content.into(),
            mode: 0o644,
        }
    }
}

pub struct Platform {
    pub os: &'static str,
    pub architecture: &'static str,
    pub variant: Option<&'static str>,
}

pub const AMD64: Platform = Platform {
    os: "linux",
    architecture: "amd64",
    variant: None,
};
pub const ARM64: Platform = Platform {
    os: "linux",
    architecture: "arm64",
    variant: Some("v8"),
};

/// A single-platform image under construction.
pub struct Image {
    layers: Vec<Vec<Entry>>,
    env: Vec<String>,
    cmd: Vec<String>,
    platform: Platform,
}

/// What was written: the manifest (or index) digest and bytes.
pub struct Built {
    pub digest: String,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub config_digest: Option<String>,
}

impl Image {
    pub fn new() -> Image {
        Image {
            layers: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            platform: AMD64,
        }
    }

    /// A one-layer image whose only file says `marker`, so each call makes a new digest.
    pub fn marked(marker: &str) -> Image {
        Image::new().layer(vec![Entry::file("marker.txt", marker.as_bytes().to_vec())])
    }

    pub fn layer(mut self, entries: Vec<Entry>) -> Image {
        self.layers.push(entries);
        self
    }

    /// A runnable image: busybox (static, from the host) as /bin/busybox and /bin/sh.
    pub fn busybox() -> Image {
        let busybox = std::fs::read("/bin/busybox")
            .or_else(|_| std::fs::read("/usr/bin/busybox"))
            .expect("busybox-static is installed (ci/test.sh installs it)");
        Image::new().layer(vec![
            Entry::dir("bin"),
            Entry::File {
                path: "bin/busybox".into(),
                content: busybox,
                mode: 0o755,
            },
            Entry::symlink("bin/sh", "busybox"),
            Entry::symlink("bin/cat", "busybox"),
            Entry::symlink("bin/ls", "busybox"),
        ])
    }

    pub fn env(mut self, env: &str) -> Image {
        self.env.push(env.into());
        self
    }

    pub fn platform(mut self, platform: Platform) -> Image {
        self.platform = platform;
        self
    }

    /// Writes blobs into `layout` and returns the manifest (not yet referenced by index.json).
    pub fn write_blobs(&self, layout: &Path) -> Built {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for entries in &self.layers {
            let tar = build_tar(entries);
            diff_ids.push(sha256(&tar));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            let gz = gz.finish().unwrap();
            let digest = write_blob(layout, &gz);
            layer_descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": gz.len(),
            }));
        }
        let mut config = serde_json::json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "created": "2026-01-01T00:00:00Z",
            "config": {"Env": self.env, "Cmd": self.cmd},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": self.layers.iter().map(|_| serde_json::json!({"created_by": "dockhand test"})).collect::<Vec<_>>(),
        });
        if let Some(v) = self.platform.variant {
            config["variant"] = v.into();
        }
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = write_blob(layout, &config_bytes);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layer_descs,
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = write_blob(layout, &bytes);
        Built {
            digest,
            manifest: bytes,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            config_digest: Some(config_digest),
        }
    }

    /// Writes a complete OCI layout holding this image under `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Built {
        init_layout(dir);
        let built = self.write_blobs(dir);
        write_index_json(dir, &built, tag, None);
        built
    }
}

impl Default for Image {
    fn default() -> Self {
        Image::new()
    }
}

/// A multi-platform image: an OCI index over several images.
pub fn write_index_layout(dir: &Path, images: &[Image], tag: &str) -> Built {
    init_layout(dir);
    let manifests: Vec<_> = images
        .iter()
        .map(|image| {
            let built = image.write_blobs(dir);
            let mut platform = serde_json::json!({
                "os": image.platform.os,
                "architecture": image.platform.architecture,
            });
            if let Some(v) = image.platform.variant {
                platform["variant"] = v.into();
            }
            serde_json::json!({
                "mediaType": built.media_type,
                "digest": built.digest,
                "size": built.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = write_blob(dir, &bytes);
    let built = Built {
        digest,
        manifest: bytes,
        media_type: "application/vnd.oci.image.index.v1+json",
        config_digest: None,
    };
    write_index_json(dir, &built, tag, None);
    built
}

fn init_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn write_index_json(dir: &Path, built: &Built, tag: &str, _platform: Option<&Platform>) {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": built.media_type,
            "digest": built.digest,
            "size": built.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let path: PathBuf = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::write(path, bytes).unwrap();
    digest
}

fn build_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::File {
                path,
                content,
                mode,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(content.len() as u64);
                builder
                    .append_data(&mut header, path, content.as_slice())
                    .unwrap();
            }
            Entry::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .unwrap();
            }
            Entry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
            Entry::Hardlink { path, target } => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
            Entry::Fifo { path } => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_mode(0o644);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .unwrap();
            }
            Entry::Owned {
                path,
                content,
                mode,
                uid,
                gid,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(*uid);
                header.set_gid(*gid);
                header.set_size(content.len() as u64);
                builder
                    .append_data(&mut header, path, content.as_slice())
                    .unwrap();
            }
            Entry::Raw {
                name,
                kind,
                link,
                content,
            } => {
                let mut h = tar::Header::new_old();
                h.set_entry_type(*kind);
                h.set_mode(0o644);
                h.set_mtime(1_700_000_000);
                h.set_size(content.len() as u64);
                let old = h.as_old_mut();
                old.name[..name.len()].copy_from_slice(name);
                old.linkname[..link.len()].copy_from_slice(link);
                h.set_cksum();
                builder.append(&h, content.as_slice()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}
