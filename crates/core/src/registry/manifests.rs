//! Manifests and indexes: their digests (HEAD first), reading them with the digest checked,
//! and putting them under a tag or digest.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

use super::body::read_limited;
use super::{Call, Registry, RegistryError};
use crate::blob::Body;
use crate::image::{RawManifest as Manifest, MANIFEST_ACCEPT};
use crate::reference::{Digest, Repository};

/// The digest a HEAD names: `Docker-Content-Digest`, else Artifactory's `X-Checksum-Sha256`
/// (the hex of the stored manifest's sha256, sent without the former on some versions, with
/// `Content-Type: application/octet-stream`).
fn head_digest(headers: &reqwest::header::HeaderMap) -> Option<Digest> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(digest) = header("docker-content-digest").and_then(|v| v.parse().ok()) {
        return Some(digest);
    }
    header("x-checksum-sha256")
        .filter(|hex| hex.len() == 64)
        .and_then(|hex| format!("sha256:{}", hex.to_ascii_lowercase()).parse().ok())
}

/// Distribution refuses manifests over 4 MiB; so do we, rather than read without bound.
const MANIFEST_LIMIT: usize = 4 << 20;

impl Registry {
    fn manifest_call(method: Method, repository: &Repository, reference: &str) -> Call<'static> {
        Call {
            method,
            path: format!("/v2/{}/manifests/{reference}", repository.path()),
            accept: Some(MANIFEST_ACCEPT),
            scope: Self::pull_scope(repository),
            what: format!("manifest {}:{reference}", repository.path()),
            range_from: None,
            fallback_on_500: false,
            body: None,
        }
    }

    /// The digest of a manifest by tag or digest, `None` when the registry has none. HEAD
    /// first (no rate-limit cost on Docker Hub); GET and hash when the registry sends no
    /// `Docker-Content-Digest`.
    pub(crate) async fn manifest_digest(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        self.manifest_digest_inner(repository, reference)
            .await
            .map_err(|e| e.for_manifest(repository.path(), reference))
    }

    async fn manifest_digest_inner(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let mut call = Self::manifest_call(Method::HEAD, repository, reference);
        // Some registries (Artifactory) answer 500 to a HEAD of a missing manifest: the GET
        // below decides, without five tries of the HEAD first.
        call.fallback_on_500 = true;
        let what = &call.what;
        let response = self.send(&call).await?;
        super::log_quota(&self.host, response.headers());
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if s.is_success() => {
                if let Some(digest) = head_digest(response.headers()) {
                    return Ok(Some(digest));
                }
                tracing::debug!("no digest header for {what}; reading the manifest");
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.status_error(response, repository, what).await)
            }
            // Some registries refuse HEAD (405) or answer it oddly: GET decides.
            _ => {}
        }
        Ok(self
            .manifest(repository, reference)
            .await?
            .map(|m| m.digest))
    }

    /// GET a manifest or index; the digest is computed from the bytes and, when fetched by
    /// digest, checked against it.
    pub(crate) async fn manifest(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        self.manifest_inner(repository, reference)
            .await
            .map_err(|e| e.for_manifest(repository.path(), reference))
    }

    async fn manifest_inner(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let call = Self::manifest_call(Method::GET, repository, reference);
        let what = call.what.clone();
        let response = self.send(&call).await?;
        super::log_quota(&self.host, response.headers());
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.status_error(response, repository, &what).await);
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let bytes = read_limited(response, MANIFEST_LIMIT)
            .await
            .map_err(|e| self.read_error(e, &what, MANIFEST_LIMIT))?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    host: self.host.to_string(),
                    what,
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok(Some(Manifest {
            digest,
            media_type,
            bytes,
        }))
    }

    /// PUTs a manifest or index under `reference` (a tag or its digest); returns the digest
    /// the registry reports (checked against the bytes).
    pub(crate) async fn put_manifest(
        &self,
        repository: &Repository,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let what = format!("manifest {}:{reference}", repository.path());
        let call = self.call(
            Method::PUT,
            format!("/v2/{}/manifests/{reference}", repository.path()),
            Self::push_scope(repository),
            what.clone(),
            Some(Body::Bytes {
                bytes: bytes.to_vec(),
                content_type: media_type.to_string(),
            }),
        );
        let response = self.send(&call).await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, repository, &what).await);
        }
        let ours = Digest::of(bytes);
        let theirs = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<Digest>().ok());
        match theirs {
            Some(d) if d != ours => Err(RegistryError::DigestMismatch {
                host: self.host.to_string(),
                what: format!("{what} as stored"),
                expected: ours.to_string(),
                actual: d.to_string(),
            }),
            _ => Ok(ours),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    #[test]
    fn a_head_digest_is_docker_content_digest_else_x_checksum_sha256() {
        let hex = "a".repeat(64);
        let mut h = HeaderMap::new();
        h.insert("x-checksum-sha256", hex.to_uppercase().parse().unwrap());
        assert_eq!(head_digest(&h).unwrap().as_str(), format!("sha256:{hex}"));
        let b = "b".repeat(64);
        h.insert(
            "docker-content-digest",
            format!("sha256:{b}").parse().unwrap(),
        );
        assert_eq!(head_digest(&h).unwrap().as_str(), format!("sha256:{b}"));
        let mut bad = HeaderMap::new();
        bad.insert("x-checksum-sha256", "abc".parse().unwrap());
        assert_eq!(head_digest(&bad), None);
        bad.insert("x-checksum-sha256", "g".repeat(64).parse().unwrap());
        assert_eq!(head_digest(&bad), None);
    }
}
