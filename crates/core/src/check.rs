//! `check` in tag mode: the digest the tag points at now, after the cursor when the cursor
//! still exists. Selection mode (semver, regex, variants) comes later.

use crate::error::Error;
use crate::protocol::{Request, Version};
use crate::registry::Registry;

/// Versions to emit, oldest first: `[cursor, current]` when the cursor still exists and
/// differs, `[current]` otherwise, `[]` when the tag is missing (an error with
/// `fail_when_missing`).
pub async fn check(request: &Request) -> Result<Vec<Version>, Error> {
    let settings = request.source()?.resolve()?;
    let cursor = request.cursor()?;
    let repository = &settings.repository;
    let tag = settings.tag.as_str();
    let registry = Registry::new(repository.host().clone(), &settings.registries).await;

    tracing::debug!("checking {repository}:{tag}");
    let Some(digest) = registry.manifest_digest(repository, tag).await? else {
        if settings.fail_when_missing {
            return Err(Error::TagNotFound {
                repository: repository.to_string(),
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
