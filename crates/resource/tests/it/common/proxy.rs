//! A fault-injecting HTTP/1.1 reverse proxy in front of a real plain-HTTP registry.
//!
//! It forwards method, path+query, headers and body in both directions as streams (large
//! blobs and chunked uploads work, connections are kept alive), keeps the `Host` header (so
//! the registry's absolute `Location`s already name the proxy) and rewrites any `Location`
//! that still names the upstream. Rules added at run time make the next N matching requests
//! fail in a chosen way; every request is recorded. Optionally it enforces a page size on tag
//! listing, which distribution 2.8 itself does not do (it ignores `n` and `last`).
//!
//! [`FaultProxy::route`] sends paths under a prefix to another upstream (ACR serves its token
//! endpoints on the registry's own host).
//!
//! A [`Profile`] makes it behave as one registry family does where that differs from
//! distribution (Docker Hub, GHCR, Quay, ECR, ACR, Artifactory, Forgejo): its challenges, its
//! tag paging and order, its manifest headers, its answers to a missing manifest, its
//! compression of blobs. The README's "Registries" table lists what each one plays.
//!
//! Each `FaultProxy` is its own server on its own loopback port; dropping it stops accepting.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::http::{self, full, Abort, Body, BoxError, Conn};

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status, extra headers and body; the upstream never sees the request.
    Status(u16, Vec<(String, String)>, String),
    /// Drop the connection without an answer (a TCP RST).
    Reset,
    /// Forward, but after the response head (with the full `Content-Length`) send only the
    /// first N bytes of the body, then close the connection.
    Truncate(usize),
    /// Forward, without this response header.
    StripHeader(String),
    /// Wait this long, then forward.
    Delay(Duration),
}

impl Fault {
    /// A bare status, e.g. `Fault::status(503)`.
    pub fn status(code: u16) -> Fault {
        Fault::Status(code, Vec::new(), String::new())
    }

    /// A status with a registry-style JSON error body.
    pub fn status_json(code: u16, error_code: &str, message: &str) -> Fault {
        Fault::Status(
            code,
            vec![("Content-Type".into(), "application/json".into())],
            serde_json::json!({"errors": [{"code": error_code, "message": message}]}).to_string(),
        )
    }

    /// 429 with `Retry-After: secs`.
    pub fn too_many_requests(retry_after_secs: u64) -> Fault {
        Fault::Status(
            429,
            vec![("Retry-After".into(), retry_after_secs.to_string())],
            "slow down".into(),
        )
    }
}

/// How the `WWW-Authenticate` of a 401 is rewritten.
#[derive(Clone, Debug)]
pub enum ChallengeStyle {
    /// As the upstream sent it.
    Upstream,
    /// Replaced by this value (ECR's and Artifactory's `Basic realm=...`).
    Replace(String),
    /// The upstream's, then `,` and this second challenge in the same header (Forgejo's
    /// `Bearer ...,Basic ...`).
    Append(String),
    /// This challenge, then `,` and the upstream's in the same header.
    Prepend(String),
}

/// How the next page of tags is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkStyle {
    /// `</v2/NAME/tags/list?last=TAG&n=N>; rel="next"` (distribution, GHCR, ECR).
    Last,
    /// `</v2/NAME/tags/list?n=N&next_page=OPAQUE>; rel="next"` (Quay).
    Opaque,
}

/// Tag listing as a registry family pages it.
#[derive(Clone, Debug)]
pub struct Paging {
    /// Tags a page when `n` is absent.
    pub default: usize,
    /// The most tags a page holds; a larger `n` is silently clamped to it.
    pub max: usize,
    pub links: LinkStyle,
    /// Tags listed before the repository's own, named `old-<number>`, the number padded to
    /// `old_width` digits: a repository with a long history, listed oldest first (GHCR,
    /// Quay).
    pub old_tags: usize,
    pub old_width: usize,
}

/// What one registry family does differently from distribution, as the proxy plays it.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: &'static str,
    pub challenge: ChallengeStyle,
    /// Docker Hub's `ratelimit-limit`/`ratelimit-remaining` on every manifest answer:
    /// (limit, remaining, window in seconds). With none remaining, a GET of a manifest is
    /// answered 429 `TOOMANYREQUESTS`; a HEAD (free on Docker Hub) is answered as ever.
    pub rate_limit: Option<(u64, u64, u64)>,
    /// Tag paging; `None` leaves it to the upstream (or to `limit_tag_pages`).
    pub paging: Option<Paging>,
    /// Artifactory's virtual repositories: requests name `/v2/<prefix>/NAME/...`, the
    /// upstream knows `NAME`; next-page links name `NAME` without the prefix.
    pub virtual_prefix: Option<String>,
    /// Artifactory: a manifest HEAD answers `application/octet-stream`, without
    /// `Docker-Content-Digest`, with `X-Checksum-Sha256`.
    pub checksum_head: bool,
    /// A HEAD of a missing manifest answers 500 (a GET still answers 404).
    pub head_missing_is_500: bool,
    /// Blobs are gzipped (`Content-Encoding: gzip`) when the request accepts it.
    pub gzip_when_asked: bool,
}

impl Profile {
    /// Distribution as it is: the proxy forwards.
    pub fn distribution() -> Profile {
        Profile {
            name: "distribution",
            challenge: ChallengeStyle::Upstream,
            rate_limit: None,
            paging: None,
            virtual_prefix: None,
            checksum_head: false,
            head_missing_is_500: false,
            gzip_when_asked: false,
        }
    }

    /// Docker Hub: manifest answers carry the pull quota (100 per 6 h, 76 left); blobs come
    /// gzipped to a client that asks.
    pub fn docker_hub() -> Profile {
        Profile {
            name: "docker hub",
            rate_limit: Some((100, 76, 21_600)),
            gzip_when_asked: true,
            ..Profile::distribution()
        }
    }

    /// GHCR: tags oldest first, `old_tags` of them before the repository's own, 1000 a page
    /// with `last` links (anonymous pulls take a token: put it in front of the token
    /// registry).
    pub fn ghcr(old_tags: usize) -> Profile {
        Profile {
            name: "ghcr",
            paging: Some(Paging {
                default: 100,
                max: 1000,
                links: LinkStyle::Last,
                old_tags,
                old_width: 6,
            }),
            ..Profile::distribution()
        }
    }

    /// Quay: tags oldest first, 50 a page by default and at most 100, opaque `next_page`
    /// links.
    pub fn quay(old_tags: usize) -> Profile {
        Profile {
            name: "quay",
            paging: Some(Paging {
                default: 50,
                max: 100,
                links: LinkStyle::Opaque,
                old_tags,
                old_width: 6,
            }),
            ..Profile::distribution()
        }
    }

    /// ECR: `Basic realm="https://HOST/",service="ecr.amazonaws.com"` without Bearer, pages
    /// of at most 1000.
    pub fn ecr() -> Profile {
        Profile {
            name: "ecr",
            challenge: ChallengeStyle::Replace(
                r#"Basic realm="https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/",service="ecr.amazonaws.com""#
                    .into(),
            ),
            paging: Some(Paging {
                default: 100,
                max: 1000,
                links: LinkStyle::Last,
                old_tags: 0,
                old_width: 6,
            }),
            ..Profile::distribution()
        }
    }

    /// ACR: token auth, pages of at most 100 (put it in front of the token registry).
    pub fn acr() -> Profile {
        Profile {
            name: "acr",
            paging: Some(Paging {
                default: 100,
                max: 100,
                links: LinkStyle::Last,
                old_tags: 0,
                old_width: 6,
            }),
            ..Profile::distribution()
        }
    }

    /// Artifactory: `Basic realm="Artifactory Realm"`, a virtual repository prefix the
    /// next-page links leave out, manifest HEADs with `X-Checksum-Sha256` only, and 500 to
    /// a HEAD of a missing manifest.
    pub fn artifactory(prefix: &str) -> Profile {
        Profile {
            name: "artifactory",
            challenge: ChallengeStyle::Replace(r#"Basic realm="Artifactory Realm""#.into()),
            paging: Some(Paging {
                default: 100,
                max: 100,
                links: LinkStyle::Last,
                old_tags: 0,
                old_width: 6,
            }),
            virtual_prefix: Some(prefix.trim_matches('/').to_string()),
            checksum_head: true,
            head_missing_is_500: true,
            ..Profile::distribution()
        }
    }

    /// Forgejo (and Codeberg): the token challenge and a Basic one in one header.
    pub fn forgejo() -> Profile {
        Profile {
            name: "forgejo",
            challenge: ChallengeStyle::Append(r#"Basic realm="Forgejo""#.into()),
            ..Profile::distribution()
        }
    }
}

struct Rule {
    path_contains: String,
    method: Option<String>,
    remaining: usize,
    fault: Fault,
}

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    /// All request headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The status sent back (`None` while in flight, or when the connection was reset or
    /// the upstream could not be reached before a status).
    pub status: Option<u16>,
    /// The fault applied, if a rule matched.
    pub fault: Option<Fault>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
    tag_page_limit: Option<usize>,
    /// `(path prefix, upstream)`: the first match wins over the proxy's upstream.
    routes: Vec<(String, String)>,
    profile: Option<Profile>,
    /// The referrers API, when the proxy serves it: (repository, subject digest) → the
    /// descriptors of the manifests pushed through it with that subject.
    referrers: Option<std::collections::HashMap<(String, String), Vec<serde_json::Value>>>,
}

pub struct FaultProxy {
    pub port: u16,
    upstream: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: String,
    me: String,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    /// A proxy on a fresh loopback port forwarding to `upstream` (`host:port`, plain HTTP).
    pub fn start(upstream: &str) -> FaultProxy {
        let (listener, port) = http::bind_loopback();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            me: format!("127.0.0.1:{port}"),
            state: state.clone(),
        });
        let task = http::serve(listener, move |req, conn| {
            let shared = shared.clone();
            async move { handle(&shared, req, conn).await }
        });
        FaultProxy {
            port,
            upstream: upstream.to_string(),
            state,
            task,
        }
    }

    /// `127.0.0.1:PORT`, to use in place of the registry's host.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// `127.0.0.1:PORT/<name>`
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// The next `times` requests whose path+query contains `path_contains` (and whose method
    /// is `method`, when given) get `fault`. Rules are tried in the order they were added; a
    /// request takes at most one fault.
    pub fn add(&self, path_contains: &str, method: Option<&str>, times: usize, fault: Fault) {
        self.state.lock().unwrap().rules.push(Rule {
            path_contains: path_contains.into(),
            method: method.map(|m| m.to_ascii_uppercase()),
            remaining: times,
            fault,
        });
    }

    /// Tag lists (`/v2/<name>/tags/list`) come back at most `limit` tags at a time, sorted,
    /// after `last`, with a `Link: <...?last=X&n=N>; rel="next"` header while more remain,
    /// whatever `n` the client asked for above `limit` (or none). `None` turns it off.
    pub fn limit_tag_pages(&self, limit: Option<usize>) {
        self.state.lock().unwrap().tag_page_limit = limit;
    }

    /// Requests whose path starts with `prefix` go to `upstream` (`host:port`, plain HTTP)
    /// instead, faults and recording as for any other.
    pub fn route(&self, prefix: &str, upstream: &str) {
        self.state
            .lock()
            .unwrap()
            .routes
            .push((prefix.into(), upstream.into()));
    }

    /// Behave as `profile`'s registry family from now on.
    pub fn set_profile(&self, profile: Profile) {
        self.state.lock().unwrap().profile = Some(profile);
    }

    /// A proxy playing `profile` in front of `upstream`.
    pub fn with_profile(upstream: &str, profile: Profile) -> FaultProxy {
        let proxy = FaultProxy::start(upstream);
        proxy.set_profile(profile);
        proxy
    }

    /// `127.0.0.1:PORT/<prefix>/<name>` with the profile's virtual repository prefix, else
    /// as [`FaultProxy::repo`].
    pub fn profile_repo(&self, name: &str) -> String {
        match self
            .state
            .lock()
            .unwrap()
            .profile
            .as_ref()
            .and_then(|p| p.virtual_prefix.clone())
        {
            Some(prefix) => format!("{}/{prefix}/{name}", self.host()),
            None => self.repo(name),
        }
    }

    /// Serves the OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`), which
    /// distribution 2.8 lacks: every manifest PUT through the proxy with a `subject` is
    /// listed under its subject's digest. Before this is called, referrers requests go to
    /// the registry (which answers 404).
    pub fn serve_referrers(&self) {
        let mut s = self.state.lock().unwrap();
        if s.referrers.is_none() {
            s.referrers = Some(Default::default());
        }
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many requests' path+query contained `path_contains`.
    pub fn count(&self, path_contains: &str) -> usize {
        self.count_method(None, path_contains)
    }

    /// How many `method` requests (any, when `None`) contained `path_contains`.
    pub fn count_method(&self, method: Option<&str>, path_contains: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.target.contains(path_contains))
            .filter(|s| method.is_none_or(|m| s.method.eq_ignore_ascii_case(m)))
            .count()
    }

    /// Rules not yet used up.
    pub fn pending_faults(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .rules
            .iter()
            .map(|r| r.remaining)
            .sum()
    }

    /// Forgets rules and recorded requests.
    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap();
        s.rules.clear();
        s.seen.clear();
    }

    pub fn clear_rules(&self) {
        self.state.lock().unwrap().rules.clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    conn: Conn,
) -> Result<Response<Body>, Abort> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let headers = http::header_pairs(req.headers());
    let (index, fault, page_limit, upstream) = {
        let mut s = shared.state.lock().unwrap();
        let fault = s
            .rules
            .iter_mut()
            .find(|r| {
                r.remaining > 0
                    && target.contains(&r.path_contains)
                    && r.method.as_ref().is_none_or(|m| *m == method)
            })
            .map(|r| {
                r.remaining -= 1;
                r.fault.clone()
            });
        s.seen.push(Seen {
            method: method.clone(),
            target: target.clone(),
            headers,
            status: None,
            fault: fault.clone(),
        });
        let path = req.uri().path();
        let upstream = s
            .routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map_or_else(|| shared.upstream.clone(), |(_, u)| u.clone());
        (s.seen.len() - 1, fault, s.tag_page_limit, upstream)
    };
    let record = |status: u16| {
        if let Some(seen) = shared.state.lock().unwrap().seen.get_mut(index) {
            seen.status = Some(status);
        }
    };
    match &fault {
        Some(Fault::Status(code, extra, text)) => {
            let mut response = Response::builder().status(*code);
            for (k, v) in extra {
                response = response.header(k.as_str(), v.as_str());
            }
            record(*code);
            return Ok(response.body(full(text.clone())).unwrap());
        }
        Some(Fault::Reset) => {
            conn.reset_on_close();
            return Err(Abort);
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }

    let profile = shared.state.lock().unwrap().profile.clone();
    let mut req = req;
    if let Some(prefix) = profile.as_ref().and_then(|p| p.virtual_prefix.as_ref()) {
        let virtual_path = format!("/v2/{prefix}/");
        if let Some(rest) = target.strip_prefix(&virtual_path) {
            *req.uri_mut() = format!("/v2/{rest}").parse().unwrap();
        } else if target.starts_with("/v2/") && req.uri().path() != "/v2/" {
            // Outside the virtual repository: Artifactory knows no such repository key.
            record(404);
            return Ok(Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("Content-Type", "application/json")
                .body(full(
                    r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
                ))
                .unwrap());
        }
    }
    let referrers_on = shared.state.lock().unwrap().referrers.is_some();
    let route = referrers_route(req.method(), req.uri().path());
    if let (true, Some(Route::List(name, digest))) = (referrers_on, &route) {
        let manifests = shared
            .state
            .lock()
            .unwrap()
            .referrers
            .as_ref()
            .and_then(|r| r.get(&(name.clone(), digest.clone())).cloned())
            .unwrap_or_default();
        record(200);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        return Ok(Response::builder()
            .status(200)
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .body(full(index.to_string()))
            .unwrap());
    }
    let accepts_gzip = req
        .headers()
        .get(hyper::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let is_get = req.method() == hyper::Method::GET;
    let is_head = req.method() == hyper::Method::HEAD;
    let forwarded_path = req.uri().path().to_string();
    let tag_list_name = forwarded_path
        .strip_prefix("/v2/")
        .and_then(|p| p.strip_suffix("/tags/list"))
        .filter(|_| is_get)
        .map(str::to_string);
    let tag_list = page_limit.and_then(|limit| Some((tag_list_name.clone()?, limit)));
    let profile_paging = profile
        .as_ref()
        .and_then(|p| Some((tag_list_name.clone()?, p.paging.clone()?)));
    let is_manifest = forwarded_path.contains("/manifests/");
    let is_blob = forwarded_path.contains("/blobs/sha256:");

    let forwarded = match (referrers_on, route) {
        (true, Some(Route::PutManifest(name))) => {
            // Manifests are small: read whole, so that a subject can be recorded.
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.map_err(|_| Abort)?.to_bytes();
            let media_type = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let response =
                forward(&upstream, Request::from_parts(parts, full(bytes.clone()))).await;
            if response.as_ref().is_ok_and(|r| r.status().is_success()) {
                record_referrer(shared, &name, &media_type, &bytes);
            }
            response
        }
        _ => forward(&upstream, req).await,
    };
    let response = match forwarded {
        Ok(r) => r,
        Err(e) => {
            record(502);
            return Ok(Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(full(format!("fault proxy: upstream {upstream}: {e}")))
                .unwrap());
        }
    };
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP.iter().chain(&["transfer-encoding"]) {
        parts.headers.remove(*name);
    }
    if let Some(location) = parts
        .headers
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    {
        let from = format!("http://{}", shared.upstream);
        let mut rewritten = match location.strip_prefix(&from) {
            Some(rest) => format!("http://{}{rest}", shared.me),
            None => location.to_string(),
        };
        if let Some(prefix) = profile.as_ref().and_then(|p| p.virtual_prefix.as_ref()) {
            rewritten = rewritten.replacen("/v2/", &format!("/v2/{prefix}/"), 1);
        }
        parts
            .headers
            .insert(hyper::header::LOCATION, rewritten.parse().unwrap());
    }
    if let Some(Fault::StripHeader(name)) = &fault {
        parts.headers.remove(name.as_str());
    }
    if let Some(profile) = &profile {
        play_head(profile, &mut parts, is_manifest, is_head);
    }
    record(parts.status.as_u16());
    let quota_spent = profile
        .as_ref()
        .and_then(|p| p.rate_limit)
        .is_some_and(|(_, remaining, _)| remaining == 0);
    if quota_spent && parts.status == StatusCode::TOO_MANY_REQUESTS && is_manifest {
        // The quota the profile spent: Docker Hub's answer, not the manifest.
        drop(body);
        let text = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit"}]}"#;
        return Ok(Response::from_parts(parts, full(text)));
    }
    if let (Some((name, paging)), StatusCode::OK) = (profile_paging, parts.status) {
        let bytes = body.collect().await.map_err(|_| Abort)?.to_bytes();
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let (page, link) = profile_page(&name, &bytes, query, &paging);
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
        if let Some(link) = link {
            parts.headers.insert("link", link.parse().unwrap());
        }
        return Ok(Response::from_parts(parts, full(page)));
    }
    let gzip = profile.as_ref().is_some_and(|p| p.gzip_when_asked);
    if gzip && accepts_gzip && is_blob && is_get && parts.status == StatusCode::OK {
        let bytes = body.collect().await.map_err(|_| Abort)?.to_bytes();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &bytes).unwrap();
        let gzipped = encoder.finish().unwrap();
        parts.headers.insert(
            hyper::header::CONTENT_ENCODING,
            hyper::header::HeaderValue::from_static("gzip"),
        );
        parts.headers.insert(
            hyper::header::CONTENT_LENGTH,
            gzipped.len().to_string().parse().unwrap(),
        );
        return Ok(Response::from_parts(parts, full(gzipped)));
    }
    let body = match (&fault, tag_list) {
        (_, Some((name, limit))) if parts.status == StatusCode::OK => {
            let bytes = body.collect().await.map_err(|_| Abort)?.to_bytes();
            let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let (page, link) = page_tags(&name, &bytes, query, limit);
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            if let Some(link) = link {
                parts.headers.insert("link", link.parse().unwrap());
            }
            full(page)
        }
        (Some(Fault::Truncate(n)), _) => Truncated::new(body, *n).boxed_body(),
        _ => http::incoming(body),
    };
    Ok(Response::from_parts(parts, body))
}

enum Route {
    /// `GET /v2/<name>/referrers/<digest>`
    List(String, String),
    /// `PUT /v2/<name>/manifests/<reference>`
    PutManifest(String),
}

fn referrers_route(method: &hyper::Method, path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2/")?;
    if method == hyper::Method::GET {
        let (name, digest) = rest.rsplit_once("/referrers/")?;
        return Some(Route::List(name.to_string(), digest.to_string()));
    }
    if method == hyper::Method::PUT {
        let (name, _) = rest.rsplit_once("/manifests/")?;
        return Some(Route::PutManifest(name.to_string()));
    }
    None
}

/// A pushed manifest with a `subject`, listed under the subject's digest.
fn record_referrer(shared: &Shared, name: &str, media_type: &str, bytes: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let Some(subject) = manifest["subject"]["digest"].as_str() else {
        return;
    };
    let digest = super::image::sha256(bytes);
    let artifact_type = manifest["artifactType"]
        .as_str()
        .or(manifest["config"]["mediaType"].as_str())
        .unwrap_or_default();
    let mut descriptor = serde_json::json!({
        "mediaType": if media_type.is_empty() { manifest["mediaType"].as_str().unwrap_or_default() } else { media_type },
        "digest": digest,
        "size": bytes.len(),
        "artifactType": artifact_type,
    });
    if manifest["annotations"].is_object() {
        descriptor["annotations"] = manifest["annotations"].clone();
    }
    let mut s = shared.state.lock().unwrap();
    let list = s
        .referrers
        .get_or_insert_with(Default::default)
        .entry((name.to_string(), subject.to_string()))
        .or_default();
    if !list.iter().any(|d| d["digest"] == descriptor["digest"]) {
        list.push(descriptor);
    }
}

/// One upstream connection per request: simple, and a reset upstream cannot poison a pool.
async fn forward<B>(upstream: &str, req: Request<B>) -> Result<Response<Incoming>, BoxError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let (mut parts, body) = req.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    // Origin-form target, as received.
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = target.parse()?;
    Ok(sender
        .send_request(Request::from_parts(parts, body))
        .await?)
}

/// The response head as `profile`'s registry family sends it.
fn play_head(
    profile: &Profile,
    parts: &mut hyper::http::response::Parts,
    is_manifest: bool,
    is_head: bool,
) {
    use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
    if parts.status == StatusCode::UNAUTHORIZED {
        let upstream = parts
            .headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let value = match &profile.challenge {
            ChallengeStyle::Upstream => upstream,
            ChallengeStyle::Replace(v) => v.clone(),
            ChallengeStyle::Append(v) => format!("{upstream},{v}"),
            ChallengeStyle::Prepend(v) => format!("{v},{upstream}"),
        };
        parts
            .headers
            .insert(WWW_AUTHENTICATE, HeaderValue::from_str(&value).unwrap());
    }
    if !is_manifest {
        return;
    }
    if let Some((limit, remaining, window)) = profile.rate_limit {
        // A spent quota refuses a GET of a manifest; a HEAD is free and still answered.
        if remaining == 0 && !is_head && parts.status.is_success() {
            parts.status = StatusCode::TOO_MANY_REQUESTS;
            parts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
        }
        parts.headers.insert(
            "ratelimit-limit",
            format!("{limit};w={window}").parse().unwrap(),
        );
        parts.headers.insert(
            "ratelimit-remaining",
            format!("{remaining};w={window}").parse().unwrap(),
        );
    }
    if is_head && profile.head_missing_is_500 && parts.status == StatusCode::NOT_FOUND {
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.headers.remove(CONTENT_TYPE);
    }
    if is_head && profile.checksum_head && parts.status.is_success() {
        if let Some(digest) = parts.headers.remove("docker-content-digest") {
            let hex = digest
                .to_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string();
            parts
                .headers
                .insert("x-checksum-sha256", hex.parse().unwrap());
        }
        parts.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
}

/// The old tags' names and the upstream's own, in the order the family lists them.
struct Listing<'a> {
    paging: &'a Paging,
    own: Vec<String>,
}

impl Listing<'_> {
    fn len(&self) -> usize {
        self.paging.old_tags + self.own.len()
    }

    fn name(&self, i: usize) -> String {
        if i < self.paging.old_tags {
            format!("old-{i:0w$}", w = self.paging.old_width)
        } else {
            self.own[i - self.paging.old_tags].clone()
        }
    }

    /// The position after the tag `last`.
    fn after(&self, last: &str) -> usize {
        if let Some(i) = last
            .strip_prefix("old-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            return i + 1;
        }
        match self.own.iter().position(|t| t == last) {
            Some(i) => self.paging.old_tags + i + 1,
            None => self.len(),
        }
    }
}

/// Quay's opaque page token for the position `offset`.
fn opaque_token(offset: usize) -> String {
    use base64::Engine as _;
    format!(
        "gAAAAAB{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("quay:{offset}"))
    )
}

fn opaque_offset(token: &str) -> Option<usize> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.strip_prefix("gAAAAAB")?)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("quay:")?
        .parse()
        .ok()
}

/// One page of the tag list as `paging` serves it, and its next-page link. The links name
/// `name` (for Artifactory, the upstream's name: without the virtual prefix).
fn profile_page(
    name: &str,
    body: &[u8],
    query: &str,
    paging: &Paging,
) -> (Vec<u8>, Option<String>) {
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (body.to_vec(), None);
    };
    let own = listed_tags(&list);
    let listing = Listing { paging, own };
    let n = match http::query_values(query, "n")
        .pop()
        .and_then(|n| n.parse::<usize>().ok())
    {
        Some(n) if n > 0 => n.min(paging.max),
        _ => paging.default,
    };
    let start = match paging.links {
        LinkStyle::Last => http::query_values(query, "last")
            .pop()
            .map_or(0, |l| listing.after(&l)),
        LinkStyle::Opaque => http::query_values(query, "next_page")
            .pop()
            .map_or(0, |t| opaque_offset(&t).unwrap_or(usize::MAX)),
    };
    let end = start.saturating_add(n).min(listing.len());
    let page: Vec<String> = (start.min(end)..end).map(|i| listing.name(i)).collect();
    let link = (end < listing.len()).then(|| match paging.links {
        LinkStyle::Last => format!(
            "</v2/{name}/tags/list?last={}&n={n}>; rel=\"next\"",
            listing.name(end - 1)
        ),
        LinkStyle::Opaque => format!(
            "</v2/{name}/tags/list?n={n}&next_page={}>; rel=\"next\"",
            opaque_token(end)
        ),
    });
    list["tags"] = serde_json::json!(page);
    (serde_json::to_vec(&list).unwrap(), link)
}

/// The tag names of a tag list body's `tags`.
fn listed_tags(list: &serde_json::Value) -> Vec<String> {
    (list["tags"].as_array().into_iter().flatten())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

/// Applies the page limit to a distribution tag list body.
fn page_tags(name: &str, body: &[u8], query: &str, limit: usize) -> (Vec<u8>, Option<String>) {
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (body.to_vec(), None);
    };
    let mut tags = listed_tags(&list);
    tags.sort();
    let last = http::query_values(query, "last").pop();
    let asked: Option<usize> = http::query_values(query, "n")
        .pop()
        .and_then(|n| n.parse().ok());
    let n = match asked {
        Some(n) if n > 0 && n <= limit => n,
        _ => limit,
    };
    let after: Vec<String> = tags
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let more = after.len() > n;
    let page: Vec<String> = after.into_iter().take(n).collect();
    let link = match (more, page.last()) {
        (true, Some(last)) => Some(format!(
            "</v2/{name}/tags/list?last={last}&n={n}>; rel=\"next\""
        )),
        _ => None,
    };
    list["tags"] = serde_json::json!(page);
    (serde_json::to_vec(&list).unwrap(), link)
}

/// A response body cut short: the first `limit` bytes, flushed, then an error that makes
/// hyper close the connection (the client sees fewer bytes than `Content-Length`).
struct Truncated {
    inner: Incoming,
    remaining: usize,
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Truncated {
    fn new(inner: Incoming, limit: usize) -> Truncated {
        Truncated {
            inner,
            remaining: limit,
            closing: None,
        }
    }

    fn boxed_body(self) -> Body {
        http_body_util::BodyExt::boxed(self)
    }
}

impl hyper::body::Body for Truncated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            // Give hyper a chance to flush what was sent, then fail the body.
            let sleep = this
                .closing
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            return match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("truncated by the fault proxy".into()))),
                Poll::Pending => Poll::Pending,
            };
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() > this.remaining {
                        data.truncate(this.remaining);
                    }
                    this.remaining -= data.len();
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                // Trailers: drop them, the body is cut anyway.
                Err(_) => Poll::Ready(Some(Err("truncated by the fault proxy".into()))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            // The body was shorter than the cut: end it as the upstream did.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown: hyper then frames by the Content-Length header the upstream sent.
        SizeHint::default()
    }
}
