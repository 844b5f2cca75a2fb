//! `check`: in tag mode, the digest the tag points at now (after the cursor while the cursor
//! still exists); in selection mode ([`crate::select`]), the matching tags newer than the
//! cursor, one version per digest, oldest first.
//!
//! Request budget: the tag list is read whole, in pages of up to 1000 tags, within the
//! registry client's time and memory bounds (GHCR and Quay list oldest first: a list cut
//! short would lose the newest tags); digests are asked for (HEAD) only for tags newer than the cursor
//! and never for more than [`MAX_DIGEST_REQUESTS`] tags in one check, newest first. An
//! up-to-date check with a cursor costs a ping, one page, and a HEAD of the cursor's tag (and
//! of `latest` when it counts). With the cursor at `latest`, only `latest` is asked about.
//!
//! With `cosign_public_keys`, every version about to be emitted (the cursor's included) is
//! verified ([`crate::signature::verify`]): three more requests for a signed one.

use futures_util::{stream, StreamExt as _};

use crate::error::Error;
use crate::image::{ImageConfig, Platform};
use crate::protocol::{Cursor, Request, Version};
use crate::pull::{self, across_endpoints, Choice, Missing};
use crate::reference::{Digest, Repository, Tag};
use crate::registry::Registry;
use crate::select::{one_per_digest, Candidate, Key, Selection};
use crate::signature;
use crate::source::Settings;
use crate::time::parse_rfc3339;

/// Tags whose digest one check asks for.
pub const MAX_DIGEST_REQUESTS: usize = 100;
/// Digest requests in flight at once.
const CONCURRENCY: usize = 8;

pub async fn check(request: &Request) -> Result<Vec<Version>, Error> {
    let mut settings = request.settings()?;
    let cursor = request.cursor();
    for note in &settings.selection_notes {
        tracing::warn!("{note}");
    }
    if let Some(git) = &settings.git {
        if settings.selection.is_some() {
            tracing::warn!("source.git_repo decides the tag; the selection fields are ignored");
        }
        let sha = crate::git::default_branch_sha(&git.repo, git.private_key.as_ref()).await?;
        tracing::info!("{}: the default branch is at {sha}", git.repo);
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
    match &settings.selection {
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

/// `[cursor, current]` when the cursor still exists and differs, `[current]` otherwise, `[]`
/// when the tag is missing (an error with `fail_when_missing`).
async fn tag_mode(
    registry: &Registry,
    repository: &Repository,
    settings: &Settings,
    cursor: Option<Cursor>,
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
    // A cursor without a valid digest matches nothing: the current version alone.
    let versions = match cursor.and_then(|c| Some((c.tag, c.digest?))) {
        Some((tag, digest)) if digest != current.digest => {
            let still_there = registry
                .manifest_digest(repository, digest.as_str())
                .await?
                .is_some();
            if still_there {
                vec![Version { tag, digest }, current]
            } else {
                vec![current]
            }
        }
        _ => vec![current],
    };
    signed_only(registry, repository, settings, versions).await
}

/// With `cosign_public_keys`, the versions whose digest one of the keys signed, in order
/// (an unsigned one is skipped with a warning naming it); all of them otherwise.
async fn signed_only(
    registry: &Registry,
    repository: &Repository,
    settings: &Settings,
    mut versions: Vec<Version>,
) -> Result<Vec<Version>, Error> {
    let Some(policy) = &settings.signatures else {
        return Ok(versions);
    };
    let named: Vec<(String, Digest)> = versions
        .iter()
        .map(|v| (v.tag.clone().unwrap_or_default(), v.digest.clone()))
        .collect();
    let signed =
        signature::verify::signed_digests(registry, repository, policy, &named, CONCURRENCY)
            .await?;
    versions.retain(|v| signed.contains(&v.digest));
    Ok(versions)
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
    cursor: Option<Cursor>,
) -> Result<Vec<Version>, Error> {
    let listed = registry.list_tags(repository).await?;
    if !listed.found {
        if settings.fail_when_missing {
            return Err(Error::Image {
                reference: settings.repository.to_string(),
                source: "repository not found".into(),
            });
        }
        tracing::info!("repository {repository} not found");
        return Ok(Vec::new());
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
        .map(|p| Platform::wanted(Some(p)));
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
    let mut versions: Vec<Found> = one_per_digest(found, |f| (&f.candidate, &f.digest));
    let mut latest_signed = None;
    let mut latest_digest = None;
    if let Some(policy) = &settings.signatures {
        // Only signed versions count, the cursor's included: an unsigned newest tag leaves
        // the newest signed one.
        let mut named: Vec<(String, Digest)> = versions
            .iter()
            .map(|f| (f.candidate.tag.clone(), f.digest.clone()))
            .collect();
        if let Some(latest) = &plan.latest {
            let digest = registry.manifest_digest(repository, latest).await?;
            if let Some(digest) = &digest {
                named.push((latest.clone(), digest.clone()));
            }
            latest_digest = Some(digest);
        }
        let signed =
            signature::verify::signed_digests(registry, repository, policy, &named, CONCURRENCY)
                .await?;
        versions.retain(|f| signed.contains(&f.digest));
        latest_signed = Some(signed);
    }
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
        let digest = match latest_digest {
            Some(known) => known,
            None => registry.manifest_digest(repository, latest).await?,
        };
        if let Some(digest) = digest {
            let signed = latest_signed.as_ref().is_none_or(|s| s.contains(&digest));
            if signed && !out.iter().any(|v| v.digest == digest) {
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
            source: "no tag matches the selection".into(),
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

/// The tag's digest (HEAD), or the manifest itself when the platform or the creation date is
/// wanted. `None` when the tag vanished or lacks the platform.
async fn inspect(
    registry: &Registry,
    repository: &Repository,
    candidate: Candidate,
    platform: Option<&Platform>,
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
    let default = Platform::wanted(None);
    let wanted = platform.unwrap_or(&default);
    let missing = if platform.is_some() {
        Missing::Skip
    } else {
        Missing::First
    };
    if platform.is_some() && !created && top.is_index() {
        // The index lists the platform: enough, without its manifest or config.
        return Ok(match pull::choose(&top, &reference, wanted, missing)? {
            Choice::Child(..) => Some(Found {
                candidate,
                digest: top.digest,
                created: None,
            }),
            Choice::Itself | Choice::Nothing => None,
        });
    }
    let Some(image) = pull::resolve(registry, repository, top, &reference, wanted, missing).await?
    else {
        return Ok(None);
    };
    let manifest = &image.image;
    let config: ImageConfig = serde_json::from_slice(
        &registry
            .blob_bytes(repository, &manifest.config.digest)
            .await?,
    )
    .map_err(|e| Error::Image {
        reference: reference.clone(),
        source: format!("the config is not valid: {e}").into(),
    })?;
    if let Some(p) = platform {
        if !config_matches(&config, p) {
            tracing::debug!("{reference} is not a {p} image; skipped");
            return Ok(None);
        }
    }
    Ok(Some(Found {
        candidate,
        digest: image.top.digest,
        created: config.created.as_deref().and_then(parse_rfc3339),
    }))
}

fn config_matches(config: &ImageConfig, wanted: &Platform) -> bool {
    wanted.matches(&Platform::of_config(config))
}
