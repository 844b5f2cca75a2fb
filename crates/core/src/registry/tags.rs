//! Tag listing (`GET /v2/<name>/tags/list`) with `Link` paging.

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::body::read_limited;
use super::{Call, Registry, RegistryError};
use crate::image::null_as_default;
use crate::reference::Repository;

/// Page sizes asked for, largest first; a registry that refuses one (400, as Quay and some
/// proxies do above 100) is asked again with the next. `None` lets the registry choose.
const PAGE_SIZES: [Option<u32>; 3] = [Some(1000), Some(100), None];

/// Pages of the tag list read in one request budget (1000 tags each where the registry
/// allows).
pub(crate) const MAX_TAG_PAGES: usize = 100;

/// A page of tags is JSON text; refuse to read one without bound (1000 tags of the longest
/// name the spec allows, 128 characters, take about 130 KiB).
const TAG_PAGE_LIMIT: usize = 8 << 20;

/// The text of all pages together, and the number of tags, held at most.
const TAG_LIST_LIMIT: usize = 32 << 20;
const MAX_TAGS: usize = 1_000_000;

/// Every tag of a repository as far as the page budget reached.
#[derive(Debug, Default)]
pub(crate) struct TagList {
    /// In the registry's order (which is not always sorted).
    pub tags: Vec<String>,
    /// False when the page budget ran out before the last page.
    pub complete: bool,
    /// Requests made, for the logs.
    pub requests: usize,
    /// False when the repository does not exist (404).
    pub found: bool,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default, deserialize_with = "null_as_default")]
    tags: Vec<String>,
}

impl Registry {
    /// Lists tags, following `Link: <…>; rel="next"` for at most `max_pages` pages.
    pub(crate) async fn list_tags(
        &self,
        repository: &Repository,
        max_pages: usize,
    ) -> Result<TagList, RegistryError> {
        let base = format!("/v2/{}/tags/list", repository.path());
        let what = format!("the tags of {}", repository.path());
        let mut list = TagList {
            complete: true,
            found: true,
            ..TagList::default()
        };
        let mut size = 0;
        let mut next = Some(page_url(&base, PAGE_SIZES[0]));
        let mut first = true;
        let mut read = 0;
        while let Some(path) = next.take() {
            if list.requests >= max_pages {
                list.complete = false;
                break;
            }
            let call = Call {
                method: Method::GET,
                path: path.clone(),
                accept: Some("application/json"),
                scope: Self::pull_scope(repository),
                what: what.clone(),
                range_from: None,
                body: None,
            };
            let response = self.send(&call).await?;
            list.requests += 1;
            let status = response.status();
            if first && status == StatusCode::NOT_FOUND {
                list.found = false;
                return Ok(list);
            }
            if first
                && matches!(
                    status,
                    StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
                )
                && size + 1 < PAGE_SIZES.len()
            {
                size += 1;
                tracing::debug!(
                    "registry {} refused page size {:?} for {what} ({status}); asking for {:?}",
                    self.host,
                    PAGE_SIZES[size - 1],
                    PAGE_SIZES[size]
                );
                next = Some(page_url(&base, PAGE_SIZES[size]));
                continue;
            }
            if !status.is_success() {
                return Err(self.status_error(response, repository, &what).await);
            }
            next = response
                .headers()
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link)
                .map(|link| resolve_link(&path, &link));
            let body = read_limited(response, TAG_PAGE_LIMIT)
                .await
                .map_err(|e| self.read_error(e, &what, TAG_PAGE_LIMIT))?;
            let page: Page = serde_json::from_slice(&body).map_err(|_| RegistryError::Status {
                host: self.host.to_string(),
                status,
                what: what.clone(),
                detail: ": the answer is not a tag list".into(),
            })?;
            read += body.len();
            list.tags.extend(page.tags);
            if read > TAG_LIST_LIMIT || list.tags.len() > MAX_TAGS {
                return Err(RegistryError::TooMany {
                    host: self.host.to_string(),
                    what,
                    limit: format!("{MAX_TAGS} tags or {TAG_LIST_LIMIT} bytes"),
                });
            }
            first = false;
        }
        Ok(list)
    }
}

fn page_url(base: &str, size: Option<u32>) -> String {
    match size {
        Some(n) => format!("{base}?n={n}"),
        None => base.to_string(),
    }
}

/// The target of a `rel="next"` link: `<url>; rel="next"` as the spec writes it, or a bare
/// `url; rel=next` as some registries send it. A header may hold several comma-separated links.
pub(crate) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let target = pieces.next()?.trim();
        let is_next = pieces.any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            return None;
        }
        let target = target.trim_start_matches('<').trim_end_matches('>').trim();
        (!target.is_empty()).then(|| target.to_string())
    })
}

/// Links are absolute URLs, absolute paths, or (rarely) a bare `?query` relative to the
/// current page.
pub(crate) fn resolve_link(current: &str, link: &str) -> String {
    if link.starts_with("http://") || link.starts_with("https://") || link.starts_with('/') {
        link.to_string()
    } else if let Some(query) = link.strip_prefix('?') {
        let path = current.split('?').next().unwrap_or(current);
        format!("{path}?{query}")
    } else {
        // A path relative to the current page's directory.
        let path = current.split('?').next().unwrap_or(current);
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{link}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=100>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=100")
        );
        assert_eq!(
            next_link("/v2/a/tags/list?last=x; rel=next").as_deref(),
            Some("/v2/a/tags/list?last=x")
        );
        assert_eq!(
            next_link(r#"<https://r/prev>; rel="prev", <https://r/next>; rel="next""#).as_deref(),
            Some("https://r/next")
        );
        assert_eq!(next_link(r#"<https://r/prev>; rel="prev""#), None);
    }

    #[test]
    fn relative_links() {
        let cur = "/v2/a/tags/list?n=1000";
        assert_eq!(
            resolve_link(cur, "/v2/a/tags/list?last=b"),
            "/v2/a/tags/list?last=b"
        );
        assert_eq!(resolve_link(cur, "?last=b"), "/v2/a/tags/list?last=b");
        assert_eq!(resolve_link(cur, "list?last=b"), "/v2/a/tags/list?last=b");
        assert_eq!(resolve_link(cur, "https://h/x"), "https://h/x");
    }
}
