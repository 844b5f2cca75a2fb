//! Where images go: every blob the registry lacks (a HEAD first; a mount from the source
//! repository on the same registry where there is one; else an upload), in parallel, then an
//! index's children by digest, then the top manifest under every tag.

use crate::error::Error;
use crate::image::Image;
use crate::reference::{Digest, Repository, Tag};
use crate::registry::{Mount, Registry};

/// Makes sure the registry has every blob, then puts the manifests: an index's children by
/// digest, then the top one under every tag. Returns the digest the registry stores.
pub(crate) async fn push(
    registry: &Registry,
    repository: &Repository,
    image: &Image,
    tags: &[Tag],
    concurrency: usize,
    mount_from: Option<&Repository>,
) -> Result<Digest, Error> {
    let semaphore = tokio::sync::Semaphore::new(concurrency.max(1));
    let uploads = image.blobs.iter().map(|blob| {
        let semaphore = &semaphore;
        async move {
            let _permit = semaphore.acquire().await.expect("never closed");
            if registry.blob_exists(repository, &blob.digest).await? {
                tracing::info!("blob {} exists", blob.digest.short());
                return Ok::<_, Error>(());
            }
            let mut session = None;
            if let Some(from) = mount_from {
                match registry.mount_blob(repository, &blob.digest, from).await? {
                    Mount::Mounted => {
                        tracing::info!("blob {} mounted from {}", blob.digest.short(), from.path());
                        return Ok(());
                    }
                    Mount::Upload(location) => session = Some(location),
                    Mount::NotMounted => {}
                }
            }
            registry
                .upload_blob(repository, &blob.digest, blob.body.clone(), session)
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
