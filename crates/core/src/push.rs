//! Where images go: every blob the registry lacks (a HEAD first; a mount from the source
//! repository on the same registry where there is one; else an upload, of a blob that is
//! elsewhere after copying it here), in parallel, then an index's children by digest, then
//! the top manifest under every tag.

use crate::blob::Body;
use crate::error::Error;
use crate::image::{Blob, Image};
use crate::reference::{Digest, Repository, Tag};
use crate::registry::config::RegistryConfig;
use crate::registry::{Mount, Registry};

/// Makes sure the registry has every blob, then puts the manifests: an index's children by
/// digest, then the top one under every tag. Returns the digest the registry stores.
///
/// A blob [`Body::Elsewhere`] is mounted from its repository when that is on this registry,
/// else copied from there (`config` gives the other registry's credentials).
pub(crate) async fn push(
    registry: &Registry,
    config: &RegistryConfig,
    repository: &Repository,
    image: &Image,
    tags: &[Tag],
    concurrency: usize,
    mount_from: Option<&Repository>,
) -> Result<Digest, Error> {
    let semaphore = tokio::sync::Semaphore::new(concurrency.max(1));
    let mut others: Vec<Registry> = Vec::new();
    for blob in &image.blobs {
        if let Body::Elsewhere {
            repository: from, ..
        } = &blob.body
        {
            let host = from.host();
            if host != registry.host() && !others.iter().any(|r| r.host() == host) {
                others.push(Registry::new(host.clone(), config).await);
            }
        }
    }
    let others = &others;
    let uploads = image.blobs.iter().map(|blob| {
        let semaphore = &semaphore;
        async move {
            let _permit = semaphore.acquire().await.expect("never closed");
            if registry.blob_exists(repository, &blob.digest).await? {
                tracing::info!("blob {} exists", blob.digest.short());
                return Ok::<_, Error>(());
            }
            let mut session = None;
            let from = match &blob.body {
                Body::Elsewhere { repository, .. } => Some(repository),
                _ => mount_from,
            };
            let from = from.filter(|r| r.host() == repository.host() && *r != repository);
            if let Some(from) = from {
                let mounted = match registry.mount_blob(repository, &blob.digest, from).await {
                    // A base image's blob is copied instead: its manifest and config were read
                    // with these credentials, so its blobs can be.
                    Err(e) if matches!(blob.body, Body::Elsewhere { .. }) => {
                        tracing::debug!("{}; copying the blob instead", crate::report::chain(&e));
                        Mount::NotMounted
                    }
                    other => other?,
                };
                match mounted {
                    Mount::Mounted => {
                        tracing::info!("blob {} mounted from {}", blob.digest.short(), from.path());
                        return Ok(());
                    }
                    Mount::Upload(location) => session = Some(location),
                    Mount::NotMounted => {}
                }
            }
            let body = match &blob.body {
                Body::Elsewhere { .. } => copy_here(registry, others, blob).await?,
                body => body.clone(),
            };
            registry
                .upload_blob(repository, &blob.digest, body, session)
                .await?;
            tracing::info!(
                "blob {} pushed ({})",
                blob.digest.short(),
                crate::progress::human(blob.size)
            );
            Ok(())
        }
    });
    futures_util::future::try_join_all(uploads).await?;
    for child in &image.children {
        registry
            .put_manifest(
                repository,
                child.digest.as_str(),
                &child.media_type,
                &child.bytes,
            )
            .await?;
    }
    for tag in tags {
        let digest = registry
            .put_manifest(
                repository,
                tag.as_str(),
                &image.top.media_type,
                &image.top.bytes,
            )
            .await?;
        tracing::info!("pushed {repository}:{tag} ({digest})");
    }
    Ok(image.top.digest.clone())
}

/// A blob that is elsewhere downloaded (verified) into its file, for the upload.
async fn copy_here(registry: &Registry, others: &[Registry], blob: &Blob) -> Result<Body, Error> {
    let Body::Elsewhere {
        repository: from,
        path,
        len,
    } = &blob.body
    else {
        return Ok(blob.body.clone());
    };
    // `push` made one for every other host a blob is on.
    let source = (others.iter())
        .find(|r| r.host() == from.host())
        .unwrap_or(registry);
    source
        .download_blob(from, &blob.digest, Some(*len), path, &|_| {})
        .await?;
    tracing::info!("blob {} copied from {from}", blob.digest.short());
    Ok(Body::File {
        path: path.clone(),
        offset: 0,
        len: *len,
    })
}
