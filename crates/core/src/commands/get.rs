//! `in`: the version's image straight from the registry, without a Docker daemon.
//!
//! Blobs are downloaded in parallel (`max_concurrent_downloads`), each verified against its
//! digest before use, into a staging directory inside DEST; layers are applied in order as
//! soon as they and the layers below them are there, the next layer decompressing while the
//! current one is written. Everything is written into a private new directory inside DEST
//! and moved to its final name only once the whole `in` succeeded, the version files last:
//! a failed `in` leaves DEST as it found it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{field, outputs};
use crate::blocking::blocking;
use crate::error::{io_error, write_output as write_file, Error};
use crate::image::{Descriptor, ImageConfig, ImageIndex, Platform};
use crate::layout::write as layout;
use crate::progress::Progress;
use crate::protocol::{parse_params, Request, Response, Version};
use crate::pull::{self, find_image, Missing, Resolved};
use crate::reference::{Digest, Repository};
use crate::registry::Registry;
use crate::rootfs;
use crate::signature;
use crate::source::Settings;

/// `params` of `in`.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    #[serde(default)]
    pub save: bool,
    #[serde(default)]
    pub rootfs: bool,
    #[serde(default)]
    pub skip_download: bool,
    pub format: Option<String>,
    pub platform: Option<Platform>,
}

impl crate::protocol::Params for Params {
    const FIELDS: &'static [&'static str] =
        &["save", "rootfs", "skip_download", "format", "platform"];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Rootfs,
    Oci,
    OciLayout,
}

/// What `in` will write, decided before any download.
struct Plan {
    rootfs_dir: bool,
    rootfs_tar: bool,
    save: bool,
    oci_tar: bool,
    oci_layout: bool,
}

pub async fn get(request: &Request, dest: &Path) -> Result<Response, Error> {
    let settings = request.settings()?;
    let params: Params = parse_params(request.params.as_ref())?;
    let format = match params.format.as_deref() {
        None | Some("rootfs") => Format::Rootfs,
        Some("oci") => Format::Oci,
        Some("oci-layout") => Format::OciLayout,
        Some(other) => {
            return Err(Error::field(
                "params.format",
                format!("{other:?} is not one of rootfs, oci, oci-layout"),
            ))
        }
    };
    let digest: Digest = match request.version.as_ref().and_then(|v| v.digest.as_deref()) {
        Some(d) => d.parse().map_err(|e| Error::field("version.digest", e))?,
        None => return Err(Error::field("version.digest", "required")),
    };
    let tag = request
        .version
        .as_ref()
        .and_then(|v| v.tag.clone())
        .unwrap_or_else(|| settings.tag.to_string());
    let source_repository = &settings.repository_text;
    // An unsigned digest is refused before anything is written or downloaded.
    let verified = match &settings.signatures {
        Some(policy) => Some(signed(&settings, policy, &digest).await?),
        None => None,
    };

    std::fs::create_dir_all(dest).map_err(|e| io_error(dest, e))?;
    let work = WorkDir::create(dest)?;
    let out = work.path.as_path();
    write_file(&out.join("repository"), source_repository.as_bytes())?;
    write_file(&out.join("tag"), tag.as_bytes())?;
    write_file(&out.join("digest"), digest.as_str().as_bytes())?;
    let version = Version {
        tag: request.version.as_ref().and_then(|v| v.tag.clone()),
        digest: digest.clone(),
    };
    let mut metadata = vec![field("repository", source_repository), field("tag", &tag)];
    if let Some(v) = &verified {
        let json = serde_json::to_vec_pretty(&[v.to_json(&digest)]).expect("json");
        write_file(&out.join("signatures.json"), &json)?;
        metadata.push(field("signed_by", v.key.fingerprint()));
        metadata.push(field("signature", &v.found_in));
    }
    let wanted = Platform::wanted(params.platform.as_ref().or(settings.platform.as_ref()));
    if params.skip_download {
        if settings.label_regex.is_some() || settings.annotation_regex.is_some() {
            // As registry-image-resource: the labels and annotations are still read (the
            // manifest and the config, no layer).
            let (registry, repository, image) = resolve(&settings, &digest, &wanted).await?;
            let config: ImageConfig = serde_json::from_slice(
                &registry
                    .blob_bytes(&repository, &image.image.config.digest)
                    .await?,
            )
            .map_err(|e| Error::Image {
                reference: format!("{repository}@{digest}"),
                source: format!("its config is not valid: {e}").into(),
            })?;
            metadata.extend(outputs::image_metadata(
                settings.label_regex.as_ref(),
                settings.annotation_regex.as_ref(),
                &config,
                &image.image.annotations,
            ));
        }
        tracing::info!("skip_download: wrote repository, tag and digest only");
        work.publish(dest)?;
        return Ok(Response { version, metadata });
    }

    let (registry, repository, image) = resolve(&settings, &digest, &wanted).await?;
    let repository = &repository;
    let reference = format!("{repository}@{digest}");
    if image.index.is_some() {
        tracing::info!(
            "{reference} is multi-platform; using {wanted} ({})",
            image.manifest.digest
        );
    }

    let plan = Plan {
        rootfs_dir: format == Format::Rootfs || params.rootfs,
        rootfs_tar: params.rootfs,
        save: params.save,
        oci_tar: format == Format::Oci,
        oci_layout: format == Format::OciLayout,
    };

    let staging = out.join(STAGING);
    std::fs::create_dir(&staging).map_err(|e| io_error(&staging, e))?;
    let result = Fetch {
        registry: &registry,
        repository,
        settings: &settings,
        plan: &plan,
        staging: &staging,
        out,
        dest,
        image: &image,
        tag: &tag,
        digest: &digest,
    }
    .run()
    .await;
    crate::fs::remove_tree(&staging).map_err(|e| io_error(&staging, e))?;
    let config = result?;
    work.publish(dest)?;
    let manifest = &image.image;
    let id = manifest.config.digest.to_string();
    metadata.push(field("image", manifest.config.digest.short()));
    metadata.push(field("image_id", &id));
    if let Some(created) = &config.created {
        metadata.push(field("created", created));
    }
    metadata.extend(outputs::image_metadata(
        settings.label_regex.as_ref(),
        settings.annotation_regex.as_ref(),
        &config,
        &manifest.annotations,
    ));
    Ok(Response { version, metadata })
}

/// The version's image for `wanted`, on the mirror or the origin: where it was found, and
/// the platform's manifest.
async fn resolve(
    settings: &Settings,
    digest: &Digest,
    wanted: &Platform,
) -> Result<(Registry, Repository, Resolved), Error> {
    let (registry, repository, top) = find_image(settings, digest).await?;
    let reference = format!("{repository}@{digest}");
    let image = pull::resolve(
        &registry,
        &repository,
        top,
        &reference,
        wanted,
        Missing::Fail,
    )
    .await?
    .ok_or_else(|| Error::Image {
        reference: reference.clone(),
        source: format!("no {wanted} image").into(),
    })?;
    Ok((registry, repository, image))
}

/// The signature of `digest` by one of the policy's keys, read from the repository's own
/// registry; an error naming the digest and the keys when there is none.
async fn signed(
    settings: &Settings,
    policy: &signature::Policy,
    digest: &Digest,
) -> Result<signature::Verified, Error> {
    let repository = &settings.repository;
    let registry = Registry::new(repository.host().clone(), &settings.registries).await;
    match signature::verify(&registry, repository, digest, policy).await? {
        Ok(v) => {
            tracing::info!(
                "{repository}@{digest} is signed by {} ({})",
                v.key.fingerprint(),
                v.found_in
            );
            Ok(v)
        }
        Err(reasons) => Err(Error::Image {
            reference: format!("{repository}@{digest}"),
            source: signature::verify::unsigned_reason(policy, &reasons).into(),
        }),
    }
}

/// One `in`: the resolved image, where it comes from, and what to write where.
struct Fetch<'a> {
    registry: &'a Registry,
    repository: &'a Repository,
    settings: &'a Settings,
    plan: &'a Plan,
    staging: &'a Path,
    /// Where outputs are written: the private directory inside DEST.
    out: &'a Path,
    /// DEST, for messages.
    dest: &'a Path,
    image: &'a Resolved,
    tag: &'a str,
    digest: &'a Digest,
}

impl Fetch<'_> {
    /// Downloads what the plan needs and writes every output; the image's config.
    async fn run(&self) -> Result<ImageConfig, Error> {
        let manifest = &self.image.image;
        let (config, config_raw, config_path) = self.config().await?;
        write_file(
            &self.out.join("image-id"),
            manifest.config.digest.as_str().as_bytes(),
        )?;
        let layer_paths = self.layers(&config).await?;
        outputs::write_labels_json(self.out, &config)?;
        // Names are the repository the pipeline asked for, even when a mirror served it.
        let asked = &self.settings.repository;
        outputs::write_docker_inspect(
            self.out,
            &config,
            &config_raw,
            asked,
            self.tag,
            self.digest,
            &manifest.config.digest,
        )?;
        let archive = layout::Archive {
            repo_tag: format!("{}:{}", docker_name(asked), self.tag),
            tag: self.tag.to_string(),
            config: (manifest.config.digest.clone(), config_path),
            layers: manifest
                .layers
                .iter()
                .map(|l| l.digest.clone())
                .zip(layer_paths)
                .collect(),
            manifest_bytes: self.image.manifest.bytes.clone(),
            manifest_digest: self.image.manifest.digest.clone(),
            manifest_media_type: manifest
                .media_type
                .clone()
                .unwrap_or_else(|| crate::image::OCI_MANIFEST.to_string()),
        };
        self.archives(&archive).await?;
        Ok(config)
    }

    /// The config blob, parsed and as JSON, and where it was downloaded to.
    async fn config(&self) -> Result<(ImageConfig, serde_json::Value, PathBuf), Error> {
        let descriptor = &self.image.image.config;
        // The whole config is parsed in memory: one larger than any real image's is refused
        // before a byte of it is downloaded.
        if descriptor.size > crate::registry::CONFIG_LIMIT as u64 {
            return Err(Error::Image {
                reference: format!("{}@{}", self.repository, self.digest),
                source: format!(
                    "its config {} is {} bytes, more than the {} dockhand reads",
                    descriptor.digest,
                    descriptor.size,
                    crate::registry::CONFIG_LIMIT
                )
                .into(),
            });
        }
        let path = self.staging.join(descriptor.digest.hex());
        self.registry
            .download_blob(
                self.repository,
                &descriptor.digest,
                Some(descriptor.size),
                &path,
                &|_| {},
            )
            .await?;
        let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
        let config: ImageConfig = serde_json::from_slice(&bytes).map_err(|e| Error::Image {
            reference: format!("{}@{}", self.repository, self.digest),
            source: format!("its config {} is not valid: {e}", descriptor.digest).into(),
        })?;
        let raw = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((config, raw, path))
    }

    /// All layer downloads start now, bounded; each is handed to the unpacker thread as soon
    /// as it is complete, which decompresses it and applies the layers in order. The layers'
    /// paths, in order.
    async fn layers(&self, config: &ImageConfig) -> Result<Vec<PathBuf>, Error> {
        let layers = &self.image.image.layers;
        let progress = Progress::start(
            pull::distinct(layers)
                .iter()
                .map(|l| (l.digest.short().to_string(), l.size))
                .collect(),
        );
        let ids = if self.plan.rootfs_dir {
            self.layer_ids(config)?
        } else {
            Vec::new()
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, PathBuf)>();
        let unpack = self.plan.rootfs_dir.then(|| {
            let target = self.out.join(".rootfs.partial");
            let _ = std::fs::remove_dir_all(&target);
            blocking(move || {
                rootfs::pipeline::unpack_layers(&target, ready_rx, &ids).map(|s| (s, target))
            })
        });
        let mut ready = |i: usize| {
            if self.plan.rootfs_dir {
                let _ = ready_tx.send((i, self.staging.join(layers[i].digest.hex())));
            }
        };
        let paths = pull::download(
            self.registry,
            self.repository,
            layers,
            self.staging,
            self.settings.max_concurrent_downloads,
            Some(&progress),
            &mut ready,
        )
        .await?;
        drop(ready_tx);
        progress.finish();
        if let Some(unpack) = unpack {
            let unpacked = unpack.await.map_err(|e| Error::Output {
                path: self.dest.join("rootfs").display().to_string(),
                source: e.into(),
            })?;
            self.finish_rootfs(unpacked, config).await?;
        }
        Ok(paths)
    }

    /// Each layer's digest with the config's `diff_id` for it, which its uncompressed bytes
    /// are checked against as it is applied.
    fn layer_ids(&self, config: &ImageConfig) -> Result<Vec<rootfs::LayerIds>, Error> {
        let layers = &self.image.image.layers;
        let diff_ids = config
            .rootfs
            .as_ref()
            .map(|r| r.diff_ids.as_slice())
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(Error::Image {
                reference: format!("{}@{}", self.repository, self.digest),
                source: format!(
                    "its config lists {} rootfs.diff_ids for {} layers",
                    diff_ids.len(),
                    layers.len()
                )
                .into(),
            });
        }
        Ok(layers
            .iter()
            .zip(diff_ids)
            .map(|(l, d)| rootfs::LayerIds {
                digest: l.digest.clone(),
                diff_id: d.clone(),
            })
            .collect())
    }

    /// The unpacked rootfs under its final name, its metadata.json, and rootfs.tar.
    async fn finish_rootfs(
        &self,
        (skipped, partial): (rootfs::unpack::Skipped, PathBuf),
        config: &ImageConfig,
    ) -> Result<(), Error> {
        if skipped.devices > 0 {
            tracing::info!(
                "skipped {} device files (not permitted here)",
                skipped.devices
            );
        }
        if skipped.xattrs > 0 {
            tracing::warn!(
                "{} extended attributes (file capabilities, user.*) not applied: not permitted or not supported here",
                skipped.xattrs
            );
        }
        let rootfs = self.out.join("rootfs");
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::rename(&partial, &rootfs).map_err(|e| io_error(&rootfs, e))?;
        outputs::write_metadata_json(self.out, config, &rootfs)?;
        if self.plan.rootfs_tar {
            let tar = self.out.join("rootfs.tar");
            let (from, to) = (rootfs.clone(), tar.clone());
            blocking(move || rootfs::export::write_rootfs_tar(&from, &to))
                .await
                .map_err(|e| io_error(&tar, e))?;
        }
        Ok(())
    }

    /// `image` (save), `image.tar` (format: oci) and `oci/` (format: oci-layout).
    async fn archives(&self, archive: &layout::Archive) -> Result<(), Error> {
        let out = self.out;
        if self.plan.save || self.plan.oci_tar {
            let first = if self.plan.save {
                out.join("image")
            } else {
                out.join("image.tar")
            };
            let (a, to) = (archive.clone(), first.clone());
            blocking(move || layout::write_docker_archive(&a, &to)).await?;
            if self.plan.save && self.plan.oci_tar {
                let second = out.join("image.tar");
                let _ = std::fs::remove_file(&second);
                crate::fs::link_or_copy(&first, &second).map_err(|e| io_error(&second, e))?;
            }
        }
        if self.plan.oci_layout {
            let oci = out.join("oci");
            let partial = out.join(".oci.partial");
            let _ = std::fs::remove_dir_all(&partial);
            let (a, to) = (archive.clone(), partial.clone());
            match &self.image.index {
                None => blocking(move || layout::write_oci_layout(&a, &to, None)).await?,
                Some(index) => {
                    // Every platform, and the index bytes as the registry has them.
                    let extra = self.other_platforms(index).await?;
                    let top = self.image.top.bytes.clone();
                    blocking(move || layout::write_oci_layout(&a, &to, Some((&top, &extra))))
                        .await?
                }
            }
            let _ = std::fs::remove_dir_all(&oci);
            std::fs::rename(&partial, &oci).map_err(|e| io_error(&oci, e))?;
        }
        Ok(())
    }

    /// The manifests and blobs of the index's other platforms, downloaded into staging.
    async fn other_platforms(&self, index: &ImageIndex) -> Result<Vec<(Digest, PathBuf)>, Error> {
        let chosen = &self.image.manifest.digest;
        let others = index.manifests.iter().filter(|c| &c.digest != chosen);
        let mut extra = Vec::new();
        for (m, parsed) in pull::children(self.registry, self.repository, others).await? {
            let blobs: Vec<Descriptor> = parsed
                .map(|p| std::iter::once(p.config).chain(p.layers).collect())
                .unwrap_or_default();
            let missing: Vec<Descriptor> = blobs
                .iter()
                .filter(|b| !self.staging.join(b.digest.hex()).exists())
                .cloned()
                .collect();
            pull::download(
                self.registry,
                self.repository,
                &missing,
                self.staging,
                self.settings.max_concurrent_downloads,
                None,
                &mut |_| {},
            )
            .await?;
            for b in blobs {
                extra.push((b.digest.clone(), self.staging.join(b.digest.hex())));
            }
            let p = self.staging.join(m.digest.hex());
            write_file(&p, &m.bytes)?;
            extra.push((m.digest.clone(), p));
        }
        Ok(extra)
    }
}

/// The prefix of the private directory `in` writes into, inside DEST.
const WORK_PREFIX: &str = ".dockhand-in-";
/// The blob downloads, inside the private directory; never published.
const STAGING: &str = ".staging";
/// Published last, so they are there only when everything else is.
const VERSION_FILES: [&str; 3] = ["repository", "tag", "digest"];

/// A new private directory (`mkdtemp`, mode 0700) inside DEST that `in` writes into; it
/// is removed, with whatever is still in it, when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(dest: &Path) -> Result<WorkDir, Error> {
        let dir = tempfile::Builder::new()
            .prefix(WORK_PREFIX)
            .tempdir_in(dest)
            .map_err(|e| io_error(dest, e))?;
        Ok(WorkDir { path: dir.keep() })
    }

    /// Moves every output to its final name in `dest`, the version files last; what is
    /// there already under that name is replaced (a symlink itself, never what it points to).
    fn publish(&self, dest: &Path) -> Result<(), Error> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| io_error(&self.path, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| io_error(&self.path, e))?.file_name();
            if name != STAGING {
                names.push(name);
            }
        }
        // Stable: outputs keep their order, version files go to the end in theirs.
        names.sort_by_key(|n| VERSION_FILES.iter().position(|v| n == *v));
        for name in names {
            let to = dest.join(&name);
            crate::fs::replace(&self.path.join(&name), &to).map_err(|e| io_error(&to, e))?;
        }
        Ok(())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = crate::fs::remove_tree(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// The name `docker images` would show: Docker Hub's `library/` and host dropped.
fn docker_name(repository: &Repository) -> String {
    if repository.host().is_docker_hub() {
        repository
            .path()
            .strip_prefix("library/")
            .unwrap_or(repository.path())
            .to_string()
    } else {
        repository.to_string()
    }
}
