//! Where images come from: the mirror first for Docker Hub repositories, then the origin;
//! manifests by digest with a short 404 retry (a get right after a put can race an
//! eventually consistent registry).

use crate::error::Error;
use crate::image::RawManifest as Manifest;
use crate::protocol::Version;
use crate::reference::{Digest, Repository};
use crate::registry::Registry;
use crate::source::Settings;

/// Where to look: the mirror first for Docker Hub repositories, then the repository itself.
pub async fn endpoints(settings: &Settings) -> Vec<(Registry, Repository)> {
    let origin = &settings.repository;
    let mut list = Vec::new();
    if let Some(mirror) = &settings.mirror {
        if origin.host().is_docker_hub() {
            let repository = origin.on_host(mirror.host.clone());
            // The origin is the fallback: don't spend long on a mirror that is down.
            let patience = crate::registry::RetryPolicy {
                attempts: 2,
                ..Default::default()
            };
            list.push((
                Registry::new(mirror.host.clone(), &settings.registries)
                    .await
                    .with_retry(patience),
                repository,
            ));
        }
    }
    list.push((
        Registry::new(origin.host().clone(), &settings.registries).await,
        origin.clone(),
    ));
    list
}

/// Runs `f` on the mirror, then on the origin when the mirror failed or found nothing.
pub async fn across_endpoints<F>(settings: &Settings, f: F) -> Result<Vec<Version>, Error>
where
    F: AsyncFn(&Registry, &Repository) -> Result<Vec<Version>, Error>,
{
    let list = endpoints(settings).await;
    let count = list.len();
    for (i, (registry, repository)) in list.iter().enumerate() {
        let last = i + 1 == count;
        match f(registry, repository).await {
            Ok(versions) if !versions.is_empty() || last => return Ok(versions),
            Ok(_) => tracing::warn!(
                "mirror {} has nothing for {}; asking {} itself",
                registry.host(),
                repository.path(),
                settings.repository.host()
            ),
            Err(e) if !last => tracing::warn!(
                "mirror {} failed ({}); asking {} itself",
                registry.host(),
                crate::report::chain(&e),
                settings.repository.host()
            ),
            Err(e) => return Err(e),
        }
    }
    unreachable!("the origin is always the last endpoint")
}

/// The image on the mirror when there is one and it has the image, else on the repository's
/// own registry.
pub async fn find_image(
    settings: &Settings,
    digest: &Digest,
) -> Result<(Registry, Repository, Manifest), Error> {
    let mut endpoints = endpoints(settings).await;
    let (origin, origin_repository) = endpoints.pop().expect("the origin is always listed");
    for (registry, repository) in endpoints {
        match registry.manifest(&repository, digest.as_str()).await {
            Ok(Some(m)) => {
                tracing::info!("using mirror {}", registry.host());
                return Ok((registry, repository, m));
            }
            Ok(None) => tracing::warn!(
                "mirror {} does not have {}@{digest}; using {}",
                registry.host(),
                repository.path(),
                origin.host()
            ),
            Err(e) => tracing::warn!(
                "mirror {} failed ({}); using {}",
                registry.host(),
                crate::report::chain(&e),
                origin.host()
            ),
        }
    }
    let top = fetch_manifest(&origin, &origin_repository, digest).await?;
    Ok((origin, origin_repository, top))
}

/// A manifest by digest; a 404 is retried a few times (a get right after a put can race an
/// eventually consistent registry).
pub async fn fetch_manifest(
    registry: &Registry,
    repository: &Repository,
    digest: &Digest,
) -> Result<Manifest, Error> {
    for wait in [1, 2, 4] {
        if let Some(m) = registry.manifest(repository, digest.as_str()).await? {
            return Ok(m);
        }
        tracing::warn!("{repository}@{digest} not found; trying again in {wait}s");
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    }
    match registry.manifest(repository, digest.as_str()).await? {
        Some(m) => Ok(m),
        None => Err(Error::Image {
            reference: format!("{repository}@{digest}"),
            reason: "not found in the registry".into(),
        }),
    }
}
