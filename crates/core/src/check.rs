//! `check`: in tag mode, the digest the tag points at now (after the cursor while the cursor
//! still exists); in selection mode ([`crate::select`]), the matching tags newer than the
//! cursor, one version per digest, oldest first.
//!
//! Request budget: the tag list is read in pages of up to 1000 tags, at most
//! [`MAX_TAG_PAGES`] of them; digests are asked for (HEAD) only for tags newer than the cursor
//! and never for more than [`MAX_DIGEST_REQUESTS`] tags in one check, newest first. An
//! up-to-date check with a cursor costs a ping, one page, and a HEAD of the cursor's tag (and
//! of `latest` when it counts). With the cursor at `latest`, only `latest` is asked about.

use std::collections::HashMap;

use futures_util::{stream, StreamExt as _};

use crate::error::Error;
use crate::image::{self, ImageConfig, ImageIndex, ImageManifest, WantedPlatform};
use crate::protocol::{Request, Version};
use crate::reference::{Digest, Repository, Tag};
use crate::registry::Registry;
use crate::select::{Candidate, Key, Selection};
use crate::source::Settings;

/// Pages of the tag list read in one check (1000 tags each where the registry allows).
pub const MAX_TAG_PAGES: usize = 100;
/// Tags whose digest one check asks for.
pub const MAX_DIGEST_REQUESTS: usize = 100;
/// Digest requests in flight at once.
const CONCURRENCY: usize = 8;

pub async fn check(request: &Request) -> Result<Vec<Version>, Error> {
    let source = request.source()?;
    let mut settings = source.resolve()?;
    let selection = Selection::from_source(source)?;
    let cursor = request.cursor()?;
    if let Some(repo) = &source.git_repo {
        if selection.is_some() {
            tracing::warn!("source.git_repo decides the tag; the selection fields are ignored");
        }
        let sha = crate::git::default_branch_sha(repo, source.git_private_key.as_ref()).await?;
        tracing::info!("{repo}: the default branch is at {sha}");
        settings.tag = sha
            .parse::<Tag>()
            .map_err(|e| Error::field("source.git_repo", e))?;
        let settings = &settings;
        return across_endpoints(settings, async |registry, repository| {
            tag_mode(registry, repository, settings, cursor.clone()).await
        })
        .await;
    }
    let settings = &settings;
    match &selection {
        None => {
            across_endpoints(settings, async |registry, repository| {
                tag_mode(registry, repository, settings, cursor.clone()).await
            })
            .await
        }
        Some(selection) => {
            across_endpoints(settings, async |registry, repository| {
                select_mode(registry, repository, settings, selection, cursor.clone()).await
            })
            .await
        }
    }
}

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
async fn across_endpoints<F>(settings: &Settings, f: F) -> Result<Vec<Version>, Error>
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
                crate::error::chain(&e),
                settings.repository.host()
            ),
            Err(e) => return Err(e),
        }
    }
    unreachable!("the origin is always the last endpoint")
}

/// `[cursor, current]` when the cursor still exists and differs, `[current]` otherwise, `[]`
/// when the tag is missing (an error with `fail_when_missing`).
async fn tag_mode(
    registry: &Registry,
    repository: &Repository,
    settings: &Settings,
    cursor: Option<Version>,
) -> Result<Vec<Version>, Error> {
    let tag = settings.tag.as_str();
    tracing::debug!("checking {repository}:{tag}");
    let Some(digest) = registry.manifest_digest(repository, tag).await? else {
        if settings.fail_when_missing {
            return Err(Error::TagNotFound {
                repository: settings.repository.to_string(),
                tag: tag.to_string(),
            });
        }
        tracing::info!("tag {tag} not found in {repository}");
        return Ok(Vec::new());
    };
    let current = Version {
        tag: Some(tag.to_string()),
        digest,
    };
    match cursor {
        Some(cursor) if cursor.digest != current.digest => {
            let still_there = registry
                .manifest_digest(repository, cursor.digest.as_str())
                .await?
                .is_some();
            if still_there {
                Ok(vec![cursor, current])
            } else {
                Ok(vec![current])
            }
        }
        _ => Ok(vec![current]),
    }
}

/// A candidate and what the registry said about it.
#[derive(Debug, Clone)]
struct Found {
    candidate: Candidate,
    digest: Digest,
    created: Option<(i64, u32)>,
}

async fn select_mode(
    registry: &Registry,
    repository: &Repository,
    settings: &Settings,
    selection: &Selection,
    cursor: Option<Version>,
) -> Result<Vec<Version>, Error> {
    let listed = registry.list_tags(repository, MAX_TAG_PAGES).await?;
    if !listed.found {
        if settings.fail_when_missing {
            return Err(Error::Image {
                reference: settings.repository.to_string(),
                reason: "repository not found".into(),
            });
        }
        tracing::info!("repository {repository} not found");
        return Ok(Vec::new());
    }
    if !listed.complete {
        tracing::warn!(
            "{repository} has more tags than {MAX_TAG_PAGES} pages; tags after the first {} are not considered",
            listed.tags.len()
        );
    }
    let plan = selection.plan(&listed.tags);
    tracing::debug!(
        "{} tags listed in {} requests, {} match",
        listed.tags.len(),
        listed.requests,
        plan.candidates.len()
    );

    // The cursor's place: its tag's key, even when the tag is gone.
    let cursor_tag = cursor.as_ref().and_then(|c| c.tag.clone());
    let like = plan.candidates.first().map(|c| &c.key);
    let cursor_key: Option<Key> = cursor_tag
        .as_deref()
        .and_then(|t| selection.key_of(t, like));
    let ordered_by_key = !selection.created_at_sort;
    // `latest` (or the bare variant) comes after every version: with the cursor there, only
    // it is asked about.
    let cursor_is_latest = cursor_tag.is_some() && cursor_tag == plan.latest;
    let mut wanted: Vec<&Candidate> = plan
        .candidates
        .iter()
        .filter(|c| match (&cursor_key, ordered_by_key) {
            _ if cursor_is_latest && ordered_by_key => false,
            (Some(k), true) => c.key > *k || Some(&c.tag) == cursor_tag.as_ref(),
            _ => true,
        })
        .collect();
    if wanted.len() > MAX_DIGEST_REQUESTS {
        tracing::warn!(
            "{} matching tags{}; looking at the newest {MAX_DIGEST_REQUESTS} only (the per-check budget)",
            wanted.len(),
            if cursor_key.is_some() { " newer than the cursor" } else { "" }
        );
        let cut = wanted.len() - MAX_DIGEST_REQUESTS;
        let cursor_entry = wanted[..cut]
            .iter()
            .find(|c| Some(&c.tag) == cursor_tag.as_ref())
            .copied();
        wanted.drain(..cut);
        if let Some(c) = cursor_entry {
            wanted.insert(0, c);
        }
    }

    let platform = settings
        .platform
        .as_ref()
        .map(|p| WantedPlatform::from_option(Some(p)));
    let inspect = |candidate: Candidate| {
        let platform = platform.clone();
        async move {
            inspect(
                registry,
                repository,
                candidate,
                platform.as_ref(),
                selection.created_at_sort,
            )
            .await
        }
    };
    let results: Vec<Result<Option<Found>, Error>> = stream::iter(wanted.into_iter().cloned())
        .map(inspect)
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut found = Vec::new();
    for r in results {
        if let Some(f) = r? {
            found.push(f);
        }
    }

    // One version per digest: a final release over a pre-release, then the most specific tag.
    let mut best: HashMap<Digest, Found> = HashMap::new();
    for f in found {
        match best.get(&f.digest) {
            Some(kept) if !better(&f.candidate, &kept.candidate) => {}
            _ => {
                best.insert(f.digest.clone(), f);
            }
        }
    }
    let mut versions: Vec<Found> = best.into_values().collect();
    if selection.created_at_sort {
        versions.sort_by(|a, b| {
            a.created
                .cmp(&b.created)
                .then_with(|| a.candidate.cmp(&b.candidate))
        });
    } else {
        versions.sort_by(|a, b| a.candidate.cmp(&b.candidate));
    }
    let mut out: Vec<Version> = versions
        .iter()
        .map(|f| Version {
            tag: Some(f.candidate.tag.clone()),
            digest: f.digest.clone(),
        })
        .collect();

    if let Some(latest) = &plan.latest {
        if let Some(digest) = registry.manifest_digest(repository, latest).await? {
            if !out.iter().any(|v| v.digest == digest) {
                out.push(Version {
                    tag: Some(latest.clone()),
                    digest,
                });
            }
        }
    }

    if out.is_empty() && settings.fail_when_missing {
        return Err(Error::Image {
            reference: settings.repository.to_string(),
            reason: "no tag matches the selection".into(),
        });
    }
    let Some(cursor_tag) = cursor_tag else {
        return Ok(out);
    };
    if let Some(i) = out
        .iter()
        .position(|v| v.tag.as_deref() == Some(&cursor_tag))
    {
        return Ok(out.split_off(i));
    }
    // The cursor's tag is gone (or no longer matches): what is newer, else the newest.
    let newer: Vec<Version> = match (&cursor_key, ordered_by_key) {
        (Some(k), true) => versions
            .iter()
            .filter(|f| f.candidate.key > *k)
            .map(|f| Version {
                tag: Some(f.candidate.tag.clone()),
                digest: f.digest.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    if !newer.is_empty() {
        return Ok(newer);
    }
    Ok(out.pop().into_iter().collect())
}

/// Whether `a` should name a digest rather than `b`.
fn better(a: &Candidate, b: &Candidate) -> bool {
    let final_a = !a.key.is_pre_release();
    let final_b = !b.key.is_pre_release();
    (final_a, a.specificity, a) > (final_b, b.specificity, b)
}

/// The tag's digest (HEAD), or the manifest itself when the platform or the creation date is
/// wanted. `None` when the tag vanished or lacks the platform.
async fn inspect(
    registry: &Registry,
    repository: &Repository,
    candidate: Candidate,
    platform: Option<&WantedPlatform>,
    created: bool,
) -> Result<Option<Found>, Error> {
    let tag = candidate.tag.as_str();
    if platform.is_none() && !created {
        return Ok(registry
            .manifest_digest(repository, tag)
            .await?
            .map(|digest| Found {
                candidate,
                digest,
                created: None,
            }));
    }
    let Some(top) = registry.manifest(repository, tag).await? else {
        return Ok(None);
    };
    let reference = format!("{repository}:{tag}");
    let bad = |e: serde_json::Error| Error::Image {
        reference: reference.clone(),
        reason: format!("the manifest is not valid: {e}"),
    };
    let default = WantedPlatform::from_option(None);
    let wanted = platform.unwrap_or(&default);
    let manifest: ImageManifest = if image::is_index(&top.media_type, &top.bytes) {
        let index: ImageIndex = serde_json::from_slice(&top.bytes).map_err(bad)?;
        let child = match image::choose_platform(&index, wanted) {
            Ok(child) => child.digest.clone(),
            Err(_) if platform.is_some() => {
                tracing::debug!("{reference} has no {wanted} image; skipped");
                return Ok(None);
            }
            Err(_) => match index.manifests.first() {
                Some(d) => d.digest.clone(),
                None => return Ok(None),
            },
        };
        if platform.is_some() && !created {
            return Ok(Some(Found {
                candidate,
                digest: top.digest,
                created: None,
            }));
        }
        let Some(m) = registry.manifest(repository, child.as_str()).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&m.bytes).map_err(bad)?
    } else {
        serde_json::from_slice(&top.bytes).map_err(bad)?
    };
    let config: ImageConfig = serde_json::from_slice(
        &registry
            .blob_bytes(repository, &manifest.config.digest)
            .await?,
    )
    .map_err(|e| Error::Image {
        reference: reference.clone(),
        reason: format!("the config is not valid: {e}"),
    })?;
    if let Some(p) = platform {
        if !config_matches(&config, p) {
            tracing::debug!("{reference} is not a {p} image; skipped");
            return Ok(None);
        }
    }
    Ok(Some(Found {
        candidate,
        digest: top.digest,
        created: config.created.as_deref().and_then(parse_rfc3339),
    }))
}

fn config_matches(config: &ImageConfig, wanted: &WantedPlatform) -> bool {
    let p = image::DescriptorPlatform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone(),
    };
    wanted.matches(&p)
}

/// `2024-01-02T03:04:05.123456789Z` or with an offset → (seconds since the epoch, nanos).
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let text = &frac[..digits.min(9)];
        nanos = format!("{text:0<9}").parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let h: i64 = o.get(1..3)?.parse().ok()?;
            let m: i64 = o.get(4..6)?.parse().ok()?;
            let v = h * 3600 + m * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((
        days * 86_400 + hour * 3600 + minute * 60 + second - offset,
        nanos,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2024-01-02T03:04:05.5Z"),
            Some((1_704_164_645, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2024-01-02T05:04:05+02:00"),
            parse_rfc3339("2024-01-02T03:04:05Z")
        );
        assert!(parse_rfc3339("2024-01-02T03:04:05.1Z") < parse_rfc3339("2024-01-02T03:04:05.12Z"));
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
