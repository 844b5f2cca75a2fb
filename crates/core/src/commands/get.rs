//! `in`: the version's image straight from the registry, without a Docker daemon.
//!
//! Blobs are downloaded in parallel (`max_concurrent_downloads`), each verified against its
//! digest before use, into a staging directory inside DEST; layers are applied in order as
//! soon as they and the layers below them are there, the next layer decompressing while the
//! current one is written. Outputs appear under their final names only when complete.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{field, outputs};
use crate::blocking::blocking;
use crate::error::{io_error, write_output as write_file, Error};
use crate::image::{Descriptor, ImageConfig, Platform};
use crate::layout::write as layout;
use crate::progress::Progress;
use crate::protocol::{parse_params, Request, Response, Version};
use crate::pull::{self, find_image, Missing, Resolved};
use crate::reference::{Digest, Repository};
use crate::registry::Registry;
use crate::rootfs;

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

    std::fs::create_dir_all(dest).map_err(|e| io_error(dest, e))?;
    write_file(&dest.join("repository"), source_repository.as_bytes())?;
    write_file(&dest.join("tag"), tag.as_bytes())?;
    write_file(&dest.join("digest"), digest.as_str().as_bytes())?;
    let version = Version {
        tag: request.version.as_ref().and_then(|v| v.tag.clone()),
        digest: digest.clone(),
    };
    let mut metadata = vec![field("repository", source_repository), field("tag", &tag)];
    if params.skip_download {
        tracing::info!("skip_download: wrote repository, tag and digest only");
        return Ok(Response { version, metadata });
    }

    let (registry, repository, top) = find_image(&settings, &digest).await?;
    let repository = &repository;
    let wanted = Platform::wanted(params.platform.as_ref().or(settings.platform.as_ref()));
    let reference = format!("{repository}@{digest}");
    let image = pull::resolve(
        &registry,
        repository,
        top,
        &reference,
        &wanted,
        Missing::Fail,
    )
    .await?
    .ok_or_else(|| Error::Image {
        reference: reference.clone(),
        source: format!("no {wanted} image").into(),
    })?;
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

    let staging = dest.join(".dockhand-staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| io_error(&staging, e))?;
    let result = fetch_and_write(
        &registry, repository, &settings, &plan, &staging, dest, &image, &tag, &digest,
    )
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    let config = result?;
    let manifest = &image.image;
    let id = manifest.config.digest.to_string();
    metadata.push(field("image", manifest.config.digest.short()));
    metadata.push(field("image_id", &id));
    if let Some(created) = &config.created {
        metadata.push(field("created", created));
    }
    Ok(Response { version, metadata })
}

#[allow(clippy::too_many_arguments)]
async fn fetch_and_write(
    registry: &Registry,
    repository: &Repository,
    settings: &crate::source::Settings,
    plan: &Plan,
    staging: &Path,
    dest: &Path,
    image: &Resolved,
    tag: &str,
    digest: &Digest,
) -> Result<ImageConfig, Error> {
    let manifest = &image.image;
    let manifest_bytes = &image.manifest.bytes;
    let manifest_digest = &image.manifest.digest;
    let config_path = staging.join(manifest.config.digest.hex());
    registry
        .download_blob(
            repository,
            &manifest.config.digest,
            Some(manifest.config.size),
            &config_path,
            &|_| {},
        )
        .await?;
    let config_bytes = std::fs::read(&config_path).map_err(|e| io_error(&config_path, e))?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| Error::Image {
        reference: format!("{repository}@{digest}"),
        source: format!("its config {} is not valid: {e}", manifest.config.digest).into(),
    })?;
    let config_raw: serde_json::Value =
        serde_json::from_slice(&config_bytes).unwrap_or(serde_json::Value::Null);
    write_file(
        &dest.join("image-id"),
        manifest.config.digest.as_str().as_bytes(),
    )?;

    // Layers: all downloads start now, bounded; each is handed to the unpacker thread as
    // soon as it and every layer before it are complete.
    let progress = Progress::start(
        pull::distinct(&manifest.layers)
            .iter()
            .map(|l| (l.digest.short().to_string(), l.size))
            .collect(),
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<PathBuf>();
    let unpack = plan.rootfs_dir.then(|| {
        let target = dest.join(".rootfs.partial");
        let _ = std::fs::remove_dir_all(&target);
        let layers = manifest.layers.len();
        blocking(move || {
            rootfs::pipeline::unpack_layers(&target, ready_rx, layers).map(|s| (s, target))
        })
    });
    let mut ready = |i: usize| {
        if plan.rootfs_dir {
            let _ = ready_tx.send(staging.join(manifest.layers[i].digest.hex()));
        }
    };
    let layer_paths = pull::download(
        registry,
        repository,
        &manifest.layers,
        staging,
        settings.max_concurrent_downloads,
        Some(&progress),
        &mut ready,
    )
    .await?;
    drop(ready_tx);
    progress.finish();

    if let Some(unpack) = unpack {
        let (skipped, partial) = unpack.await.map_err(|e| Error::Output {
            path: dest.join("rootfs").display().to_string(),
            source: e.into(),
        })?;
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
        let rootfs = dest.join("rootfs");
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::rename(&partial, &rootfs).map_err(|e| io_error(&rootfs, e))?;
        outputs::write_metadata_json(dest, &config, &rootfs)?;
        if plan.rootfs_tar {
            let tar = dest.join("rootfs.tar");
            let (from, to) = (rootfs.clone(), tar.clone());
            blocking(move || rootfs::export::write_rootfs_tar(&from, &to))
                .await
                .map_err(|e| io_error(&tar, e))?;
        }
    }
    outputs::write_labels_json(dest, &config)?;
    outputs::write_docker_inspect(
        dest,
        &config,
        &config_raw,
        repository,
        tag,
        digest,
        &manifest.config.digest,
    )?;

    let archive = layout::Archive {
        repo_tag: format!("{}:{tag}", docker_name(repository)),
        tag: tag.to_string(),
        config: (manifest.config.digest.clone(), config_path.clone()),
        layers: manifest
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .zip(layer_paths)
            .collect(),
        manifest_bytes: manifest_bytes.clone(),
        manifest_digest: manifest_digest.clone(),
        manifest_media_type: manifest
            .media_type
            .clone()
            .unwrap_or_else(|| crate::image::OCI_MANIFEST.to_string()),
    };
    if plan.save || plan.oci_tar {
        let first = if plan.save {
            dest.join("image")
        } else {
            dest.join("image.tar")
        };
        let (a, to) = (archive.clone(), first.clone());
        blocking(move || layout::write_docker_archive(&a, &to)).await?;
        if plan.save && plan.oci_tar {
            let second = dest.join("image.tar");
            let _ = std::fs::remove_file(&second);
            crate::fs::link_or_copy(&first, &second).map_err(|e| io_error(&second, e))?;
        }
    }
    if plan.oci_layout {
        let oci = dest.join("oci");
        let partial = dest.join(".oci.partial");
        let _ = std::fs::remove_dir_all(&partial);
        match (&image.index, &image.top) {
            (None, _) => {
                let (a, to) = (archive.clone(), partial.clone());
                blocking(move || layout::write_oci_layout(&a, &to, None)).await?
            }
            (Some(index), top) => {
                // Every platform, and the index bytes as the registry has them.
                let others = index
                    .manifests
                    .iter()
                    .filter(|c| &c.digest != manifest_digest);
                let mut extra = Vec::new();
                for (m, parsed) in pull::children(registry, repository, others).await? {
                    let blobs: Vec<Descriptor> = parsed
                        .map(|p| std::iter::once(p.config).chain(p.layers).collect())
                        .unwrap_or_default();
                    let missing: Vec<Descriptor> = blobs
                        .iter()
                        .filter(|b| !staging.join(b.digest.hex()).exists())
                        .cloned()
                        .collect();
                    pull::download(
                        registry,
                        repository,
                        &missing,
                        staging,
                        settings.max_concurrent_downloads,
                        None,
                        &mut |_| {},
                    )
                    .await?;
                    for b in blobs {
                        extra.push((b.digest.clone(), staging.join(b.digest.hex())));
                    }
                    let p = staging.join(m.digest.hex());
                    write_file(&p, &m.bytes)?;
                    extra.push((m.digest.clone(), p));
                }
                let (a, to, index) = (archive.clone(), partial.clone(), top.bytes.clone());
                blocking(move || layout::write_oci_layout(&a, &to, Some((&index, &extra)))).await?
            }
        }
        let _ = std::fs::remove_dir_all(&oci);
        std::fs::rename(&partial, &oci).map_err(|e| io_error(&oci, e))?;
    }
    Ok(config)
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
