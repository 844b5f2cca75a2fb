//! The OCI 1.1 referrers API (distribution spec, "Listing Referrers"):
//! `GET /v2/<name>/referrers/<digest>` lists the manifests whose `subject` is the digest, as
//! an image index. A registry without the API answers 404, and its clients fall back to the
//! `sha256-<hex>` tag schema.

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::body::read_limited;
use super::{Call, Registry, RegistryError};
use crate::image::OCI_INDEX;
use crate::reference::{Digest, Repository};

/// A referrers list is read up to this size (one page; a few hundred descriptors).
const REFERRERS_LIMIT: usize = 1 << 20;

/// One manifest that refers to a digest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Referrer {
    pub digest: Digest,
    #[serde(default)]
    pub artifact_type: Option<String>,
}

/// A referrers list: the API's answer, or the index under the tag schema's tag.
#[derive(Deserialize)]
pub(crate) struct List {
    #[serde(default)]
    pub manifests: Vec<Referrer>,
}

impl Registry {
    /// The manifests referring to `digest` (the first page), or `None` when the registry
    /// has no referrers API (404). A list that is not an index is an error.
    pub(crate) async fn referrers(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<Vec<Referrer>>, RegistryError> {
        let call = Call {
            method: Method::GET,
            path: format!("/v2/{}/referrers/{digest}", repository.path()),
            accept: Some(OCI_INDEX),
            scope: Self::pull_scope(repository),
            what: format!("referrers of {}@{digest}", repository.path()),
            range_from: None,
            body: None,
            fallback_on_500: false,
        };
        let what = call.what.clone();
        let response = self.send(&call).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.status_error(response, repository, &what).await);
        }
        let bytes = read_limited(response, REFERRERS_LIMIT)
            .await
            .map_err(|e| self.read_error(e, &what, REFERRERS_LIMIT))?;
        let list: List = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Status {
            host: self.host.to_string(),
            status: StatusCode::BAD_GATEWAY,
            what: what.clone(),
            detail: format!(": the answer is not an image index ({e})"),
        })?;
        Ok(Some(list.manifests))
    }
}
