//! `in`: the version's image straight from the registry, without a Docker daemon.
//!
//! Blobs are downloaded in parallel (`max_concurrent_downloads`), each verified against its
//! digest before use, into a staging directory inside DEST; layers are applied in order as
//! soon as they and the layers below them are there, the next layer decompressing while the
//! current one is written. Outputs appear under their final names only when complete.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::outputs;
use crate::error::{io_error, write_output as write_file, Error};
use crate::image::{
    self, ImageConfig, ImageIndex, ImageManifest, Platform, RawManifest as Manifest,
};
use crate::layout::write as layout;
use crate::progress::Progress;
use crate::protocol::{parse_params, MetadataField, Request, Response, Version};
use crate::pull::{fetch_manifest, find_image};
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
    let settings = request.source()?.resolve()?;
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
    let source_repository = request.source()?.repository.clone().unwrap_or_default();

    std::fs::create_dir_all(dest).map_err(|e| io_error(dest, e))?;
    write_file(&dest.join("repository"), source_repository.as_bytes())?;
    write_file(&dest.join("tag"), tag.as_bytes())?;
    write_file(&dest.join("digest"), digest.as_str().as_bytes())?;
    let version = Version {
        tag: request.version.as_ref().and_then(|v| v.tag.clone()),
        digest: digest.clone(),
    };
    let mut metadata = vec![field("repository", &source_repository), field("tag", &tag)];
    if params.skip_download {
        tracing::info!("skip_download: wrote repository, tag and digest only");
        return Ok(Response { version, metadata });
    }

    let (registry, repository, top) = find_image(&settings, &digest).await?;
    let repository = &repository;
    let wanted = Platform::wanted(params.platform.as_ref().or(settings.platform.as_ref()));
    let (manifest_bytes, manifest_digest, index) = if image::is_index(&top.media_type, &top.bytes) {
        let index: ImageIndex =
            serde_json::from_slice(&top.bytes).map_err(|e| bad_manifest(repository, &digest, e))?;
        let child = image::choose_platform(&index, &wanted).map_err(|reason| Error::Image {
            reference: format!("{repository}@{digest}"),
            reason,
        })?;
        tracing::info!(
            "{repository}@{digest} is multi-platform; using {wanted} ({})",
            child.digest
        );
        let child_digest = child.digest.clone();
        let m = fetch_manifest(&registry, repository, &child_digest).await?;
        (m.bytes, child_digest, Some((index, top)))
    } else {
        (top.bytes.clone(), digest.clone(), None)
    };
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| bad_manifest(repository, &manifest_digest, e))?;

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
        &registry,
        repository,
        &settings,
        &plan,
        &staging,
        dest,
        &manifest,
        &manifest_bytes,
        &manifest_digest,
        index.as_ref(),
        &tag,
        &digest,
    )
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    let config = result?;
    let id = manifest.config.digest.to_string();
    metadata.push(field("image", &manifest.config.digest.hex()[..12]));
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
    manifest: &ImageManifest,
    manifest_bytes: &[u8],
    manifest_digest: &Digest,
    index: Option<&(ImageIndex, Manifest)>,
    tag: &str,
    digest: &Digest,
) -> Result<ImageConfig, Error> {
    let registry_ref = registry;
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
        reason: format!("its config {} is not valid: {e}", manifest.config.digest),
    })?;
    let config_raw: serde_json::Value =
        serde_json::from_slice(&config_bytes).unwrap_or(serde_json::Value::Null);
    write_file(
        &dest.join("image-id"),
        manifest.config.digest.as_str().as_bytes(),
    )?;

    // Layers: all downloads start now, bounded; extraction follows in order.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        settings.max_concurrent_downloads,
    ));
    let unique: Vec<&crate::image::Descriptor> = {
        let mut seen = HashSet::new();
        manifest
            .layers
            .iter()
            .filter(|l| seen.insert(l.digest.clone()))
            .collect()
    };
    let progress = Progress::start(
        unique
            .iter()
            .map(|l| (l.digest.hex()[..12].to_string(), l.size))
            .collect(),
    );
    let mut downloads = Vec::new();
    for (i, layer) in unique.iter().enumerate() {
        let path = staging.join(layer.digest.hex());
        let semaphore = semaphore.clone();
        let report = progress.layer(i);
        let layer = (*layer).clone();
        downloads.push((layer.digest.clone(), async move {
            let _permit = semaphore.acquire_owned().await.expect("never closed");
            let reporter = report.clone();
            registry_ref
                .download_blob(
                    repository,
                    &layer.digest,
                    Some(layer.size),
                    &path,
                    &move |n| reporter.set(n),
                )
                .await?;
            report.finished();
            Ok::<_, crate::registry::RegistryError>(path)
        }));
    }
    // Drive all downloads concurrently; hand each finished layer (in manifest order) to the
    // unpacker thread as soon as it and every layer before it are complete.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<PathBuf>();
    let unpack = plan.rootfs_dir.then(|| {
        let target = dest.join(".rootfs.partial");
        let _ = std::fs::remove_dir_all(&target);
        let layers = manifest.layers.len();
        tokio::task::spawn_blocking(move || {
            rootfs::pipeline::unpack_layers(&target, ready_rx, layers).map(|s| (s, target))
        })
    });
    {
        use futures_util::stream::StreamExt as _;
        let mut pending: futures_util::stream::FuturesUnordered<_> = downloads
            .into_iter()
            .map(|(d, f)| async move { (d, f.await) })
            .collect();
        let mut finished: std::collections::HashMap<Digest, PathBuf> = Default::default();
        let mut next = 0;
        while let Some((d, result)) = pending.next().await {
            let path = result?;
            finished.insert(d, path);
            while next < manifest.layers.len() {
                match finished.get(&manifest.layers[next].digest) {
                    Some(p) => {
                        if plan.rootfs_dir {
                            let _ = ready_tx.send(p.clone());
                        }
                        next += 1;
                    }
                    None => break,
                }
            }
        }
    }
    drop(ready_tx);
    progress.finish();

    let layer_paths: Vec<PathBuf> = manifest
        .layers
        .iter()
        .map(|l| staging.join(l.digest.hex()))
        .collect();
    if let Some(unpack) = unpack {
        let (skipped, partial) = unpack
            .await
            .map_err(|e| Error::Output {
                path: dest.join("rootfs").display().to_string(),
                reason: format!("unpacking stopped: {e}"),
            })?
            .map_err(|e| Error::Output {
                path: dest.join("rootfs").display().to_string(),
                reason: crate::report::chain(&e),
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
            rootfs::export::write_rootfs_tar(&rootfs, &tar).map_err(|e| io_error(&tar, e))?;
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
        config: (&manifest.config.digest, config_path.as_path()),
        layers: manifest
            .layers
            .iter()
            .zip(&layer_paths)
            .map(|(l, p)| (&l.digest, p.as_path()))
            .collect(),
        manifest_bytes,
        manifest_digest,
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
        layout::write_docker_archive(&archive, &first)?;
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
        match index {
            None => layout::write_oci_layout(&archive, &partial, None)?,
            Some((index, raw)) => {
                // Every platform, and the index bytes as the registry has them.
                let mut extra = Vec::new();
                for child in &index.manifests {
                    if &child.digest == manifest_digest {
                        continue;
                    }
                    let m = fetch_manifest(registry, repository, &child.digest).await?;
                    let mut blobs = vec![];
                    if let Ok(parsed) = serde_json::from_slice::<ImageManifest>(&m.bytes) {
                        blobs.push(parsed.config.clone());
                        blobs.extend(parsed.layers.iter().cloned());
                    }
                    for b in blobs {
                        let p = staging.join(b.digest.hex());
                        if !p.exists() {
                            registry
                                .download_blob(repository, &b.digest, Some(b.size), &p, &|_| {})
                                .await?;
                        }
                        extra.push((b.digest.clone(), p));
                    }
                    let p = staging.join(m.digest.hex());
                    write_file(&p, &m.bytes)?;
                    extra.push((m.digest.clone(), p));
                }
                layout::write_oci_layout(&archive, &partial, Some((&raw.bytes, &extra)))?
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

fn bad_manifest(repository: &Repository, digest: &Digest, e: serde_json::Error) -> Error {
    Error::Image {
        reference: format!("{repository}@{digest}"),
        reason: format!("its manifest is not valid: {e}"),
    }
}

fn field(name: &str, value: &str) -> MetadataField {
    MetadataField {
        name: name.to_string(),
        value: value.to_string(),
    }
}
