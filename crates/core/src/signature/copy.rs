//! Carrying signatures along when an image moves (`out` with `copy_signatures: true`): what
//! cosign attached to the digest in the source repository (the `sha256-<hex>.sig`, `.att`
//! and `.sbom` tags) and the manifests the referrers API lists for it, copied with their
//! blobs to the target repository, so that the promoted image verifies there too (a
//! signature names the digest, which the copy keeps).

use std::path::Path;

use crate::image::ImageManifest;
use crate::reference::{Digest, Repository};
use crate::registry::config::RegistryConfig;
use crate::registry::{Mount, Registry, RegistryError};

/// The tags cosign attaches to a digest: signatures, attestations, SBOMs.
pub(crate) const ATTACHED_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];
/// Referrers copied for one digest; more are left with a warning.
const MAX_COPIED_REFERRERS: usize = 64;

/// One side of the copy.
pub(crate) struct End<'a> {
    pub registry: &'a Registry,
    pub repository: &'a Repository,
}

/// What was copied: the tags and the referrers' digests.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    pub tags: Vec<String>,
    pub referrers: Vec<Digest>,
}

/// `copy_signatures` for an image just pushed to `to`: the referrers its OCI layout held
/// (`attached`), else what is attached to `digest` in `origin`, the repository it came from
/// (reached with `registries`' credentials).
pub(crate) async fn carry(
    to: &End<'_>,
    attached: &[crate::image::Attached],
    origin: Option<&Repository>,
    registries: &RegistryConfig,
    digest: &Digest,
    staging: &Path,
) -> Result<(), RegistryError> {
    if !attached.is_empty() {
        return push_attached(to, attached, digest).await;
    }
    let Some(origin) = origin else {
        tracing::warn!(
            "params.copy_signatures: the image's repository is not known; no signatures copied"
        );
        return Ok(());
    };
    if origin == to.repository {
        return Ok(());
    }
    let origin_registry;
    let registry = if origin.host() == to.repository.host() {
        to.registry
    } else {
        origin_registry = Registry::new(origin.host().clone(), registries).await;
        &origin_registry
    };
    let from = End {
        registry,
        repository: origin,
    };
    let copied = copy_attached(&from, to, digest, staging).await?;
    if copied.tags.is_empty() && copied.referrers.is_empty() {
        tracing::warn!("params.copy_signatures: {origin}@{digest} has no signatures to copy");
    } else {
        tracing::info!(
            "copied {} tags and {} referrers of {digest} from {origin}",
            copied.tags.len(),
            copied.referrers.len()
        );
    }
    Ok(())
}

/// Copies what is attached to `digest` from `from` to `to`; `staging` holds blobs on the way.
async fn copy_attached(
    from: &End<'_>,
    to: &End<'_>,
    digest: &Digest,
    staging: &Path,
) -> Result<Copied, RegistryError> {
    let mut copied = Copied::default();
    for suffix in ATTACHED_SUFFIXES {
        let tag = super::cosign::attached_tag(digest, suffix);
        let Some(manifest) = from.registry.manifest(from.repository, &tag).await? else {
            continue;
        };
        copy_blobs(from, to, &manifest.bytes, staging).await?;
        to.registry
            .put_manifest(to.repository, &tag, &manifest.media_type, &manifest.bytes)
            .await?;
        tracing::info!("copied {tag} to {}", to.repository);
        copied.tags.push(tag);
    }
    let listed = match from.registry.referrers(from.repository, digest).await? {
        Some(listed) => listed,
        None => super::verify::tag_index(from.registry, from.repository, digest)
            .await?
            .unwrap_or_default(),
    };
    if listed.len() > MAX_COPIED_REFERRERS {
        tracing::warn!(
            "{}@{digest} has {} referrers; copying the first {MAX_COPIED_REFERRERS}",
            from.repository,
            listed.len()
        );
    }
    let mut pushed = Vec::new();
    for referrer in listed.iter().take(MAX_COPIED_REFERRERS) {
        let Some(manifest) = from
            .registry
            .manifest(from.repository, referrer.digest.as_str())
            .await?
        else {
            continue;
        };
        copy_blobs(from, to, &manifest.bytes, staging).await?;
        to.registry
            .put_manifest(
                to.repository,
                referrer.digest.as_str(),
                &manifest.media_type,
                &manifest.bytes,
            )
            .await?;
        tracing::info!("copied referrer {} to {}", referrer.digest, to.repository);
        copied.referrers.push(referrer.digest.clone());
        pushed.push(manifest);
    }
    index_referrers(to, digest, &pushed).await?;
    Ok(copied)
}

/// On a registry without the referrers API, `pushed` (manifests referring to `digest`) are
/// added to the index under `sha256-<hex>`, the distribution spec's referrers tag schema,
/// which is where clients then look.
async fn index_referrers(
    to: &End<'_>,
    digest: &Digest,
    pushed: &[crate::image::RawManifest],
) -> Result<(), RegistryError> {
    if pushed.is_empty()
        || to
            .registry
            .referrers(to.repository, digest)
            .await?
            .is_some()
    {
        return Ok(());
    }
    let tag = super::verify::index_tag(digest);
    let mut manifests: Vec<serde_json::Value> =
        match to.registry.manifest(to.repository, &tag).await? {
            Some(index) => serde_json::from_slice::<serde_json::Value>(&index.bytes)
                .ok()
                .and_then(|v| v["manifests"].as_array().cloned())
                .unwrap_or_default(),
            None => Vec::new(),
        };
    for m in pushed {
        if manifests.iter().any(|d| d["digest"] == m.digest.as_str()) {
            continue;
        }
        let parsed: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
        let mut descriptor = serde_json::json!({
            "mediaType": m.media_type,
            "digest": m.digest,
            "size": m.bytes.len(),
        });
        let artifact_type = parsed["artifactType"]
            .as_str()
            .or(parsed["config"]["mediaType"].as_str());
        if let Some(t) = artifact_type {
            descriptor["artifactType"] = t.into();
        }
        if parsed["annotations"].is_object() {
            descriptor["annotations"] = parsed["annotations"].clone();
        }
        manifests.push(descriptor);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::image::OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("json");
    to.registry
        .put_manifest(to.repository, &tag, crate::image::OCI_INDEX, &index)
        .await?;
    tracing::info!(
        "{} has no referrers API: listed the referrers under {tag}",
        to.repository
    );
    Ok(())
}

/// The config and layers of a manifest, made present in the target: already there, mounted
/// (same registry), or downloaded (verified) and uploaded.
async fn copy_blobs(
    from: &End<'_>,
    to: &End<'_>,
    manifest: &[u8],
    staging: &Path,
) -> Result<(), RegistryError> {
    let Ok(parsed) = serde_json::from_slice::<ImageManifest>(manifest) else {
        return Ok(());
    };
    let same_registry = from.registry.host() == to.registry.host();
    for blob in std::iter::once(&parsed.config).chain(&parsed.layers) {
        if to.registry.blob_exists(to.repository, &blob.digest).await? {
            continue;
        }
        let mut session = None;
        if same_registry {
            match to
                .registry
                .mount_blob(to.repository, &blob.digest, from.repository)
                .await?
            {
                Mount::Mounted => continue,
                Mount::Upload(location) => session = Some(location),
                Mount::NotMounted => {}
            }
        }
        let path = staging.join(blob.digest.hex());
        from.registry
            .download_blob(
                from.repository,
                &blob.digest,
                Some(blob.size),
                &path,
                &|_| {},
            )
            .await?;
        let body = crate::blob::Body::File {
            path: path.clone(),
            offset: 0,
            len: blob.size,
        };
        to.registry
            .upload_blob(to.repository, &blob.digest, body, session)
            .await?;
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Pushes manifests that refer to a pushed image (from an OCI layout), each by its digest,
/// after the blobs the registry lacks.
async fn push_attached(
    to: &End<'_>,
    attached: &[crate::image::Attached],
    digest: &Digest,
) -> Result<(), RegistryError> {
    for a in attached {
        for blob in &a.blobs {
            if !to.registry.blob_exists(to.repository, &blob.digest).await? {
                to.registry
                    .upload_blob(to.repository, &blob.digest, blob.body.clone(), None)
                    .await?;
            }
        }
        let m = &a.manifest;
        to.registry
            .put_manifest(to.repository, m.digest.as_str(), &m.media_type, &m.bytes)
            .await?;
        tracing::info!("pushed referrer {} to {}", m.digest, to.repository);
    }
    let manifests: Vec<_> = attached.iter().map(|a| a.manifest.clone()).collect();
    index_referrers(to, digest, &manifests).await
}
