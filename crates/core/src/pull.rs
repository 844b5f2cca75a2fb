//! Where images come from and how they are read: the mirror first for Docker Hub
//! repositories, then the origin; manifests by digest with a short 404 retry (a get right
//! after a put can race an eventually consistent registry); index → platform → manifest
//! resolution, once for check, get and put; and verified parallel blob downloads, handed over
//! in layer order.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures_util::stream::{FuturesUnordered, StreamExt as _};

use crate::error::Error;
use crate::image::{
    self, Descriptor, ImageConfig, ImageIndex, ImageManifest, KnownLayer, Platform,
    RawManifest as Manifest,
};
use crate::progress::Progress;
use crate::protocol::Version;
use crate::reference::{Digest, Repository};
use crate::registry::config::RegistryConfig;
use crate::registry::{Registry, RetryPolicy};
use crate::source::Settings;

/// Where to look: the mirror first for Docker Hub repositories, then the repository itself.
pub(crate) async fn endpoints(settings: &Settings) -> Vec<(Registry, Repository)> {
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

/// Runs `f` on the mirror, then on the origin when the mirror failed or found nothing
/// (`None`); the origin's answer is final. `missing` says what the mirror lacked, for the
/// log. Gives the answer and where it came from. The only mirror fallback: check and in
/// both go through it.
pub(crate) async fn mirror_then_origin<T, F>(
    settings: &Settings,
    missing: &str,
    f: F,
) -> Result<(Option<T>, Registry, Repository), Error>
where
    F: AsyncFn(&Registry, &Repository, bool) -> Result<Option<T>, Error>,
{
    let mut list = endpoints(settings).await;
    let (origin, origin_repository) = list.pop().expect("the origin is always listed");
    for (registry, repository) in list {
        match f(&registry, &repository, false).await {
            Ok(Some(found)) => {
                tracing::info!("using mirror {}", registry.host());
                return Ok((Some(found), registry, repository));
            }
            Ok(None) => tracing::warn!(
                "mirror {} {missing}; asking {} itself",
                registry.host(),
                origin.host()
            ),
            Err(e) => tracing::warn!(
                "mirror {} failed ({}); asking {} itself",
                registry.host(),
                crate::report::chain(&e),
                origin.host()
            ),
        }
    }
    let found = f(&origin, &origin_repository, true).await?;
    Ok((found, origin, origin_repository))
}

/// The versions `f` finds, on the mirror first (see [`mirror_then_origin`]).
pub(crate) async fn across_endpoints<F>(settings: &Settings, f: F) -> Result<Vec<Version>, Error>
where
    F: AsyncFn(&Registry, &Repository) -> Result<Vec<Version>, Error>,
{
    let missing = format!("has nothing for {}", settings.repository.path());
    let (found, _, _) = mirror_then_origin(settings, &missing, async |registry, repository, _| {
        let versions = f(registry, repository).await?;
        Ok((!versions.is_empty()).then_some(versions))
    })
    .await?;
    Ok(found.unwrap_or_default())
}

/// The image on the mirror when there is one and it has the image, else on the repository's
/// own registry (with the 404 retry there).
pub(crate) async fn find_image(
    settings: &Settings,
    digest: &Digest,
) -> Result<(Registry, Repository, Manifest), Error> {
    let missing = format!("does not have {}@{digest}", settings.repository.path());
    let (found, registry, repository) =
        mirror_then_origin(settings, &missing, async |registry, repository, origin| {
            if origin {
                Ok(Some(fetch_manifest(registry, repository, digest).await?))
            } else {
                Ok(registry.manifest(repository, digest.as_str()).await?)
            }
        })
        .await?;
    let top = found.ok_or_else(|| Error::Image {
        reference: format!("{}@{digest}", settings.repository),
        source: "not found in the registry".into(),
    })?;
    Ok((registry, repository, top))
}

/// A manifest by digest; a 404 is retried a few times (a get right after a put can race an
/// eventually consistent registry).
pub(crate) async fn fetch_manifest(
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
            source: "not found in the registry".into(),
        }),
    }
}

/// What it means when a multi-platform image has nothing for the wanted platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// An error naming the platform (`in`); a child that does not appear after the 404
    /// retries is an error too.
    Fail,
    /// Nothing: the tag is passed over (`check` with a platform given); so is a vanished
    /// child.
    Skip,
    /// The index's first image (`check` with the default platform).
    First,
}

/// Which manifest of a top-level manifest is the platform's.
pub(crate) enum Choice {
    /// The top is a single-platform manifest.
    Itself,
    /// The top is an index; this child.
    Child(ImageIndex, Digest),
    /// The index has nothing for the platform (with [`Missing::Skip`]) or nothing at all.
    Nothing,
}

/// The choice for `top` (named `reference` in errors), without a request.
pub(crate) fn choose(
    top: &Manifest,
    reference: &str,
    wanted: &Platform,
    missing: Missing,
) -> Result<Choice, Error> {
    if !top.is_index() {
        return Ok(Choice::Itself);
    }
    let index: ImageIndex =
        serde_json::from_slice(&top.bytes).map_err(|e| invalid_manifest(reference, e))?;
    let child = match image::choose_platform(&index, wanted) {
        Ok(child) => child.digest.clone(),
        Err(reason) if missing == Missing::Fail => {
            return Err(Error::Image {
                reference: reference.to_string(),
                source: reason.into(),
            })
        }
        Err(_) if missing == Missing::Skip => {
            tracing::debug!("{reference} has no {wanted} image; skipped");
            return Ok(Choice::Nothing);
        }
        Err(_) => match index.manifests.first() {
            Some(d) => d.digest.clone(),
            None => return Ok(Choice::Nothing),
        },
    };
    Ok(Choice::Child(index, child))
}

/// An image resolved for one platform.
pub(crate) struct Resolved {
    /// What the tag or digest names, as the registry has it.
    pub top: Manifest,
    /// The index, when the top is one.
    pub index: Option<ImageIndex>,
    /// The platform's manifest (the top itself when it is not an index).
    pub manifest: Manifest,
    pub image: ImageManifest,
}

/// `top` resolved for `wanted`: the index's child for the platform fetched and parsed.
/// `None` when [`choose`] found nothing, or (unless [`Missing::Fail`]) the child is gone.
pub(crate) async fn resolve(
    registry: &Registry,
    repository: &Repository,
    top: Manifest,
    reference: &str,
    wanted: &Platform,
    missing: Missing,
) -> Result<Option<Resolved>, Error> {
    let (index, manifest) = match choose(&top, reference, wanted, missing)? {
        Choice::Nothing => return Ok(None),
        Choice::Itself => (None, top.clone()),
        Choice::Child(index, child) => {
            tracing::debug!("{reference} is multi-platform; using {wanted} ({child})");
            let manifest = if missing == Missing::Fail {
                fetch_manifest(registry, repository, &child).await?
            } else {
                match registry.manifest(repository, child.as_str()).await? {
                    Some(m) => m,
                    None => return Ok(None),
                }
            };
            (Some(index), manifest)
        }
    };
    let image = parse_manifest(repository, &manifest)?;
    Ok(Some(Resolved {
        top,
        index,
        manifest,
        image,
    }))
}

/// The child manifests an index lists (`children`), in order, each with the 404 retry, and
/// parsed where they are image manifests.
pub(crate) async fn children(
    registry: &Registry,
    repository: &Repository,
    children: impl IntoIterator<Item = &Descriptor>,
) -> Result<Vec<(Manifest, Option<ImageManifest>)>, Error> {
    let mut out = Vec::new();
    for d in children {
        let m = fetch_manifest(registry, repository, &d.digest).await?;
        let parsed = serde_json::from_slice::<ImageManifest>(&m.bytes).ok();
        out.push((m, parsed));
    }
    Ok(out)
}

/// A manifest's JSON as an image manifest.
pub(crate) fn parse_manifest(
    repository: &Repository,
    m: &Manifest,
) -> Result<ImageManifest, Error> {
    serde_json::from_slice(&m.bytes)
        .map_err(|e| invalid_manifest(&format!("{repository}@{}", m.digest), e))
}

fn invalid_manifest(reference: &str, e: serde_json::Error) -> Error {
    Error::Image {
        reference: reference.to_string(),
        source: format!("its manifest is not valid: {e}").into(),
    }
}

/// The blobs `wanted` (each once) downloaded into `staging`, named by their digests, at
/// most `concurrency` at a time, each verified against its digest and size; their paths, in
/// the order of `wanted`. `ready` gets each position in `wanted` as soon as its blob is done,
/// in whatever order they end: what a layer unpacker starts decompressing on.
/// `progress` has one line per distinct blob, in order.
pub(crate) async fn download(
    registry: &Registry,
    repository: &Repository,
    wanted: &[Descriptor],
    staging: &Path,
    concurrency: usize,
    progress: Option<&Progress>,
    ready: &mut (dyn FnMut(usize) + Send),
) -> Result<Vec<PathBuf>, Error> {
    let semaphore = tokio::sync::Semaphore::new(concurrency.max(1));
    let mut seen = HashSet::new();
    let mut pending: FuturesUnordered<_> = wanted
        .iter()
        .filter(|d| seen.insert(d.digest.clone()))
        .enumerate()
        .map(|(i, d)| {
            let semaphore = &semaphore;
            let report = progress.map(|p| p.layer(i));
            async move {
                let _permit = semaphore.acquire().await.expect("never closed");
                let path = staging.join(d.digest.hex());
                let result = registry
                    .download_blob(repository, &d.digest, Some(d.size), &path, &|n| {
                        if let Some(r) = &report {
                            r.set(n)
                        }
                    })
                    .await;
                if let (Ok(()), Some(r)) = (&result, &report) {
                    r.finished();
                }
                (d.digest.clone(), result)
            }
        })
        .collect();
    while let Some((digest, result)) = pending.next().await {
        result?;
        for (i, _) in wanted
            .iter()
            .enumerate()
            .filter(|(_, d)| d.digest == digest)
        {
            ready(i);
        }
    }
    Ok(wanted
        .iter()
        .map(|d| staging.join(d.digest.hex()))
        .collect())
}

/// The distinct blobs of `wanted`, in order: what [`download`] shows progress for.
pub(crate) fn distinct(wanted: &[Descriptor]) -> Vec<&Descriptor> {
    let mut seen = HashSet::new();
    wanted
        .iter()
        .filter(|d| seen.insert(d.digest.clone()))
        .collect()
}

/// An image reference as a `FROM` line writes it (`name[:tag][@digest]`): the repository,
/// and the digest, else the tag (`latest` when there is neither).
pub(crate) fn split_reference(reference: &str) -> Result<(Repository, &str), Error> {
    let (name, at) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (name, tag) = match name.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (name, "latest"),
    };
    let repository = name.parse().map_err(|e| Error::Image {
        reference: reference.to_string(),
        source: format!("not an image name: {e}").into(),
    })?;
    Ok((repository, at.unwrap_or(tag)))
}

/// The layers of the image `at` (a tag or digest) in `repository`, for this machine's
/// architecture (the daemon's) when it is an index, each with its diff id from the config:
/// what an image built on it can refer to instead of compressing the same layers again.
/// Empty when the config's diff ids do not pair with the layers.
pub(crate) async fn known_layers(
    config: &RegistryConfig,
    repository: &Repository,
    at: &str,
) -> Result<Vec<KnownLayer>, Error> {
    let separator = if at.contains(':') { '@' } else { ':' };
    let reference = format!("{repository}{separator}{at}");
    // One try: this only saves work, and a registry that does not answer should not hold
    // the push up with retries.
    let registry = Registry::new(repository.host().clone(), config)
        .await
        .with_retry(RetryPolicy::once());
    let top = registry
        .manifest(repository, at)
        .await?
        .ok_or_else(|| Error::Image {
            reference: reference.clone(),
            source: "not found in the registry".into(),
        })?;
    let wanted = Platform::wanted(Some(&Platform {
        architecture: image::host_architecture().to_string(),
        ..Platform::default()
    }));
    let Some(resolved) = resolve(
        &registry,
        repository,
        top,
        &reference,
        &wanted,
        Missing::Skip,
    )
    .await?
    else {
        return Ok(Vec::new());
    };
    let bytes = registry
        .blob_bytes(repository, &resolved.image.config.digest)
        .await?;
    let diff_ids = serde_json::from_slice::<ImageConfig>(&bytes)
        .ok()
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids)
        .unwrap_or_default();
    if diff_ids.len() != resolved.image.layers.len() {
        return Ok(Vec::new());
    }
    Ok(diff_ids
        .into_iter()
        .zip(resolved.image.layers)
        .map(|(diff_id, layer)| KnownLayer {
            diff_id,
            layer,
            repository: repository.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(media_type: &str, json: &str) -> Manifest {
        Manifest {
            digest: Digest::of(json.as_bytes()),
            media_type: media_type.to_string(),
            bytes: json.as_bytes().to_vec(),
        }
    }

    fn platform(os: &str, architecture: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn index() -> Manifest {
        raw(
            image::OCI_INDEX,
            &format!(
                r#"{{"manifests":[
                {{"digest":"{A}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},
                {{"digest":"{B}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
            ),
        )
    }

    fn chosen(top: &Manifest, wanted: &Platform, missing: Missing) -> Result<String, String> {
        match choose(top, "r:t", wanted, missing) {
            Ok(Choice::Itself) => Ok("itself".into()),
            Ok(Choice::Child(_, d)) => Ok(d.to_string()),
            Ok(Choice::Nothing) => Ok("nothing".into()),
            Err(e) => Err(crate::report::chain(&e)),
        }
    }

    #[test]
    fn the_platform_picks_the_child_and_a_missing_one_follows_the_rule() {
        let single = raw(image::OCI_MANIFEST, r#"{"config":{"digest":"x"}}"#);
        let amd64 = platform("linux", "amd64");
        let s390x = platform("linux", "s390x");
        assert_eq!(chosen(&single, &s390x, Missing::Fail).unwrap(), "itself");
        for missing in [Missing::Fail, Missing::Skip, Missing::First] {
            assert_eq!(chosen(&index(), &amd64, missing).unwrap(), B);
        }
        assert!(chosen(&index(), &s390x, Missing::Fail)
            .unwrap_err()
            .contains("r:t"));
        assert_eq!(chosen(&index(), &s390x, Missing::Skip).unwrap(), "nothing");
        assert_eq!(chosen(&index(), &s390x, Missing::First).unwrap(), A);
        let empty = raw(image::OCI_INDEX, r#"{"manifests":[]}"#);
        assert_eq!(chosen(&empty, &amd64, Missing::First).unwrap(), "nothing");
        let broken = raw(image::OCI_INDEX, r#"{"manifests":"#);
        assert!(chosen(&broken, &amd64, Missing::First)
            .unwrap_err()
            .contains("its manifest is not valid"));
    }

    #[test]
    fn distinct_keeps_the_first_of_each_digest_in_order() {
        let d = |digest: &str| Descriptor {
            media_type: String::new(),
            digest: digest.parse().unwrap(),
            size: 1,
            platform: None,
        };
        let list = [d(A), d(B), d(A)];
        let got: Vec<String> = distinct(&list)
            .iter()
            .map(|d| d.digest.to_string())
            .collect();
        assert_eq!(got, [A, B]);
    }

    #[test]
    fn references_split_as_from_lines_write_them() {
        let split = |r: &str| {
            let (repository, at) = split_reference(r).unwrap();
            (repository.to_string(), at.to_string())
        };
        assert_eq!(
            split("localhost:5000/a/b"),
            ("localhost:5000/a/b".into(), "latest".into())
        );
        assert_eq!(
            split("localhost:5000/a/b:1.2"),
            ("localhost:5000/a/b".into(), "1.2".into())
        );
        assert_eq!(
            split("reg.example.com/x:1@sha256:abc"),
            ("reg.example.com/x".into(), "sha256:abc".into())
        );
        assert!(split_reference("UPPER/case").is_err());
    }
}
