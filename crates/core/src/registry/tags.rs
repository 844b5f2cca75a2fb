//! Tag listing (`GET /v2/<name>/tags/list`) with `Link` paging.
//!
//! Every page is read: GHCR and Quay list tags oldest first, so a listing cut after N pages
//! drops exactly the newest tags. What bounds it is time ([`TAG_LISTING_BUDGET`]) and memory
//! ([`TAG_LIST_LIMIT`], [`MAX_TAGS`]); reaching either is an error that says which, never a
//! silently shorter list.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::body::read_limited;
use super::{Call, Registry, RegistryError};
use crate::image::null_as_default;
use crate::reference::Repository;

/// Page sizes asked for, largest first; a registry that refuses one (400 or 422, as Quay and
/// some proxies do above 100; 405, as ECR-compatible proxies do to any `n`) is asked again
/// with the next. `None` lets the registry choose.
const PAGE_SIZES: [Option<u32>; 3] = [Some(1000), Some(100), None];

/// The longest one listing may take, all pages together: 200,000 tags in Quay's pages of
/// 100 are 2,000 requests. `check` has 15 minutes in all; this leaves time for the digests.
const TAG_LISTING_BUDGET: Duration = Duration::from_secs(10 * 60);

/// A page of tags is JSON text; refuse to read one without bound (1000 tags of the longest
/// name the spec allows, 128 characters, take about 130 KiB).
const TAG_PAGE_LIMIT: usize = 8 << 20;

/// The text of all pages together, and the number of tags, held at most.
const TAG_LIST_LIMIT: usize = 32 << 20;
const MAX_TAGS: usize = 1_000_000;

/// Every tag of a repository.
#[derive(Debug, Default)]
pub(crate) struct TagList {
    /// In the registry's order (which is not always sorted).
    pub tags: Vec<String>,
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
    /// Lists every tag, following `Link: <…>; rel="next"` to the last page, within
    /// [`TAG_LISTING_BUDGET`].
    pub(crate) async fn list_tags(
        &self,
        repository: &Repository,
    ) -> Result<TagList, RegistryError> {
        self.list_tags_within(repository, TAG_LISTING_BUDGET).await
    }

    async fn list_tags_within(
        &self,
        repository: &Repository,
        budget: Duration,
    ) -> Result<TagList, RegistryError> {
        let base = format!("/v2/{}/tags/list", repository.path());
        let what = format!("the tags of {}", repository.path());
        let started = Instant::now();
        let mut list = TagList {
            found: true,
            ..TagList::default()
        };
        let mut size = 0;
        let mut next = Some(page_url(&base, PAGE_SIZES[0]));
        let mut first = true;
        let mut read = 0;
        while let Some(path) = next.take() {
            if started.elapsed() > budget {
                return Err(RegistryError::TooSlow {
                    host: self.host.to_string(),
                    what,
                    budget: budget.as_secs_f64(),
                    done: format!("{} tags in {} pages", list.tags.len(), list.requests),
                });
            }
            let call = Call {
                method: Method::GET,
                path: path.clone(),
                accept: Some("application/json"),
                scope: Self::pull_scope(repository),
                what: what.clone(),
                range_from: None,
                fallback_on_500: false,
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
                    StatusCode::BAD_REQUEST
                        | StatusCode::UNPROCESSABLE_ENTITY
                        | StatusCode::METHOD_NOT_ALLOWED
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
                .map(|link| same_repository(&base, &resolve_link(&path, &link)));
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

/// Artifactory names the next page without the virtual repository's prefix
/// (`/v2/app/tags/list?last=x` while listing `/v2/docker-virtual/app/tags/list`): a link to
/// the tag list of a repository that our own name ends with is our list, with its query.
fn same_repository(base: &str, link: &str) -> String {
    let (head, query) = match link.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (link, None),
    };
    let (origin, path) = match head.find("://") {
        Some(i) => match head[i + 3..].find('/') {
            Some(j) => head.split_at(i + 3 + j),
            None => return link.to_string(),
        },
        None => ("", head),
    };
    let name_of = |p: &'_ str| -> Option<String> {
        Some(
            p.strip_prefix("/v2/")?
                .strip_suffix("/tags/list")?
                .to_string(),
        )
    };
    match (name_of(path), name_of(base)) {
        (Some(theirs), Some(ours)) if theirs != ours && ours.ends_with(&format!("/{theirs}")) => {
            tracing::debug!("the registry's next page names {theirs}, not {ours}; reading {ours}");
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{origin}{base}{query}")
        }
        _ => link.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A plain-HTTP registry on loopback whose every tag page takes `delay` and links to
    /// another; TLS hellos are hung up on. Returns `host:port`.
    fn endless_slow_registry(delay: Duration) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let pages = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let pages = pages.clone();
                std::thread::spawn(move || {
                    let mut first = [0u8; 1];
                    if stream.peek(&mut first).is_err() || first[0] == 0x16 {
                        return;
                    }
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut request = String::new();
                        if reader.read_line(&mut request).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            if header.trim().is_empty() {
                                break;
                            }
                        }
                        let (body, link) = if request.contains("/tags/list") {
                            std::thread::sleep(delay);
                            let n = pages.fetch_add(1, Ordering::SeqCst);
                            (
                                format!(r#"{{"name":"app","tags":["t{n}"]}}"#),
                                format!(
                                    "Link: </v2/app/tags/list?last=t{n}&n=1000>; rel=\"next\"\r\n"
                                ),
                            )
                        } else {
                            ("{}".to_string(), String::new())
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{link}Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        host
    }

    #[test]
    fn a_listing_over_its_time_budget_is_an_error_saying_so() {
        let host = endless_slow_registry(Duration::from_millis(100));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime.block_on(async {
            let registry = Registry::new(
                crate::reference::Host::parse(&host).unwrap(),
                &super::super::config::RegistryConfig::default(),
            )
            .await;
            let repository: Repository = format!("{host}/app").parse().unwrap();
            registry
                .list_tags_within(&repository, Duration::from_millis(500))
                .await
                .unwrap_err()
        });
        let text = err.to_string();
        assert!(matches!(err, RegistryError::TooSlow { .. }), "{text}");
        assert!(
            text.starts_with(&format!(
                "reading the tags of app from registry {host} took more than 0.5 s ("
            )),
            "{text}"
        );
        assert!(
            text.ends_with("read); the newest tags may be on the pages not read"),
            "{text}"
        );
    }

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

    #[test]
    fn a_link_without_the_virtual_repository_prefix_stays_on_our_list() {
        let base = "/v2/docker-virtual/team/app/tags/list";
        assert_eq!(
            same_repository(base, "/v2/team/app/tags/list?last=b&n=100"),
            "/v2/docker-virtual/team/app/tags/list?last=b&n=100"
        );
        assert_eq!(
            same_repository(base, "https://h:5000/v2/app/tags/list?last=b"),
            "https://h:5000/v2/docker-virtual/team/app/tags/list?last=b"
        );
        // Our own list, another repository's (not a suffix of ours), and non-list links.
        for link in [
            "/v2/docker-virtual/team/app/tags/list?last=b",
            "/v2/other/tags/list?last=b",
            "/v2/eam/app/tags/list?last=b",
            "https://h/next?page=2",
        ] {
            assert_eq!(same_repository(base, link), link);
        }
    }
}
