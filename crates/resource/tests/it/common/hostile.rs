//! A registry that misbehaves on purpose, served in-process by hyper on the harness runtime.
//!
//! [`Hostile`] speaks enough of the distribution API
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md>) to be pulled from:
//! `/v2/` with a chosen challenge (none, Basic, or Bearer with a token endpoint of its own at
//! `/token`), tag lists, manifests by tag or digest (HEAD and GET), and blobs (with `Range`).
//! Rules added at run time replace the answer to matching requests with a [`Reply`]: any
//! status, headers and body, a body that echoes the request's `Authorization`, a generated
//! body of any size (endless tag pages, huge manifests), a body cut short, a body dribbled a
//! byte at a time, no answer at all, or a reset. Every request is recorded with its headers.
//!
//! [`RawServer`] is plain TCP for what hyper cannot be made to do: accept and never answer
//! (not even a TLS handshake), or dribble the response head one byte at a time.
//!
//! Dropping either stops it accepting.

use std::collections::{BTreeMap, HashMap};
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response};

use super::http::{self, full, Abort, Body, BoxError, Conn};
use super::image::sha256;

/// The `service` of the Bearer challenge.
pub const SERVICE: &str = "hostile-registry";

/// What `/v2/` (and every unauthenticated request) is answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Everything is open.
    None,
    /// `401 Basic realm="hostile"` until the request carries the user's Basic credentials.
    Basic,
    /// `401 Bearer realm=<realm>,service=hostile-registry` until the request carries a token
    /// this server issued. The realm is this server's `/token` unless [`Hostile::set_realm`]
    /// changed it.
    Bearer,
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    /// All request headers, names lowercase.
    pub headers: Vec<(String, String)>,
}

impl Received {
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

/// What a rule answers with.
#[derive(Clone, Debug)]
pub enum Reply {
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Payload,
    },
    /// Read the request, then never answer (the connection stays open).
    Hang,
    /// Close the connection without an answer, with a TCP RST.
    Reset,
}

/// The body of a [`Reply::Answer`].
#[derive(Clone, Debug)]
pub enum Payload {
    Bytes(Bytes),
    /// The text with every `{authorization}` replaced by the request's `Authorization` header
    /// (JSON-escaped, so the template can be a JSON document), `""` when it had none.
    EchoAuthorization(String),
    /// `head`, then `fill` repeated, then `tail`: `len` bytes in all (the last `fill` is cut to
    /// fit; `None` is endless). `Content-Length` is sent when `declared` and `len` is known.
    /// Made as it is sent, so a 400 MB body costs the server no memory.
    Generated {
        head: Bytes,
        fill: Bytes,
        tail: Bytes,
        len: Option<u64>,
        declared: bool,
    },
    /// `Content-Length` of all of `bytes`, but only the first `after` are sent; then the
    /// connection closes.
    Cut {
        bytes: Bytes,
        after: usize,
    },
    /// `bytes` (with their `Content-Length`), one byte every `every`.
    Dribble {
        bytes: Bytes,
        every: Duration,
    },
}

impl Reply {
    /// `status`, no headers, an empty body.
    pub fn status(status: u16) -> Reply {
        Reply::Answer {
            status,
            headers: Vec::new(),
            body: Payload::Bytes(Bytes::new()),
        }
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply::status(status)
            .header("Content-Type", "application/json")
            .payload(Payload::Bytes(value.to_string().into()))
    }

    /// `status` with a registry error body: `{"errors":[{"code":..,"message":..}]}`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({"errors": [{"code": code, "message": message}]}),
        )
    }

    /// `status` with a registry error body whose message (and detail) repeat the request's
    /// `Authorization` header, as careless servers and proxies do.
    pub fn echo_authorization(status: u16) -> Reply {
        Reply::status(status)
            .header("Content-Type", "application/json")
            .payload(Payload::EchoAuthorization(
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"rejected Authorization: {authorization}","detail":{"authorization":"{authorization}"}}]}"#.into(),
            ))
    }

    /// `307` to `location`.
    pub fn redirect(location: &str) -> Reply {
        Reply::status(307).header("Location", location)
    }

    /// Adds a response header (to an answer; ignored by `Hang` and `Reset`).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Answer { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    pub fn body(self, bytes: impl Into<Bytes>) -> Reply {
        self.payload(Payload::Bytes(bytes.into()))
    }

    pub fn payload(mut self, payload: Payload) -> Reply {
        if let Reply::Answer { body, .. } = &mut self {
            *body = payload;
        }
        self
    }
}

struct Rule {
    method: Option<String>,
    path_contains: String,
    /// `None`: every time.
    remaining: Option<usize>,
    reply: Reply,
}

#[derive(Default)]
struct Store {
    /// repository → tag → manifest digest.
    tags: HashMap<String, BTreeMap<String, String>>,
    /// digest → (media type, bytes).
    manifests: HashMap<String, (String, Bytes)>,
    /// digest → bytes.
    blobs: HashMap<String, Bytes>,
}

struct State {
    me: String,
    challenge: Challenge,
    username: String,
    password: String,
    realm: Mutex<String>,
    /// The token endpoint's answer; `{token}` is replaced by the token issued.
    token_answer: Mutex<String>,
    tokens: Mutex<Vec<String>>,
    rules: Mutex<Vec<Rule>>,
    store: Mutex<Store>,
    seen: Mutex<Vec<Received>>,
    serial: AtomicUsize,
}

/// See the module docs.
pub struct Hostile {
    pub port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Hostile {
    /// A registry on a fresh loopback port asking for `challenge`; Basic credentials (at the
    /// registry, or at the token endpoint) are accepted when they are `username`/`password`.
    /// The token endpoint issues tokens to anyone, anonymous or not, and records them.
    pub fn start(challenge: Challenge, username: &str, password: &str) -> Hostile {
        let (listener, port) = http::bind_loopback();
        let me = format!("127.0.0.1:{port}");
        let state = Arc::new(State {
            realm: Mutex::new(format!("http://{me}/token")),
            me,
            challenge,
            username: username.into(),
            password: password.into(),
            token_answer: Mutex::new(r#"{"token":"{token}","expires_in":300}"#.into()),
            tokens: Mutex::new(Vec::new()),
            rules: Mutex::new(Vec::new()),
            store: Mutex::new(Store::default()),
            seen: Mutex::new(Vec::new()),
            serial: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = http::serve(listener, move |req, conn| {
            let state = shared.clone();
            async move { handle(&state, req, conn).await }
        });
        Hostile { port, state, task }
    }

    /// No authentication at all.
    pub fn open() -> Hostile {
        Hostile::start(Challenge::None, "", "")
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.state.me.clone()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.state.me)
    }

    /// `127.0.0.1:PORT/<name>`
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }

    /// The realm the Bearer challenge names (this server's `/token` by default).
    pub fn realm(&self) -> String {
        self.state.realm.lock().unwrap().clone()
    }

    pub fn set_realm(&self, realm: &str) {
        *self.state.realm.lock().unwrap() = realm.into();
    }

    /// The token endpoint's answer from now on: a JSON text in which `{token}` stands for the
    /// token issued (e.g. `{"token":"{token}","expires_in":18446744073709551615}`).
    pub fn set_token_answer(&self, template: &str) {
        *self.state.token_answer.lock().unwrap() = template.into();
    }

    /// Every token issued so far: secrets that must never be printed.
    pub fn tokens(&self) -> Vec<String> {
        self.state.tokens.lock().unwrap().clone()
    }

    /// The next `times` requests (`None`: all of them) whose path+query contains
    /// `path_contains`, and whose method is `method` when given, get `reply`. Rules are tried
    /// in the order added and before authentication; a request takes at most one.
    pub fn on(
        &self,
        method: Option<&str>,
        path_contains: &str,
        times: Option<usize>,
        reply: Reply,
    ) {
        self.state.rules.lock().unwrap().push(Rule {
            method: method.map(|m| m.to_ascii_uppercase()),
            path_contains: path_contains.into(),
            remaining: times,
            reply,
        });
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Received> {
        self.state.seen.lock().unwrap().clone()
    }

    /// A blob, by its sha256 digest (returned).
    pub fn put_blob(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = sha256(&bytes);
        self.state
            .store
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), bytes);
        digest
    }

    /// A manifest (or index) under `repository:tag` and its digest (returned).
    pub fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> String {
        let bytes = bytes.into();
        let digest = sha256(&bytes);
        let mut store = self.state.store.lock().unwrap();
        store
            .manifests
            .insert(digest.clone(), (media_type.into(), bytes));
        store
            .tags
            .entry(repository.into())
            .or_default()
            .insert(tag.into(), digest.clone());
        digest
    }

    /// Everything an OCI layout written by the image builder holds, under
    /// `repository:tag`: its manifest (or index) and every blob; returns the digest.
    pub fn put_layout(&self, repository: &str, tag: &str, layout: &super::Layout) -> String {
        let blobs = layout.path().join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).unwrap() {
            let path = entry.unwrap().path();
            self.put_blob(std::fs::read(&path).unwrap());
        }
        let built = &layout.built;
        self.put_manifest(repository, tag, built.media_type, built.manifest.clone())
    }

    /// `Authorization: Basic base64(user:password)` as this server expects it, for
    /// "never printed" assertions.
    pub fn basic_value(username: &str, password: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    state: &State,
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
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    state.seen.lock().unwrap().push(Received {
        method: method.clone(),
        target: target.clone(),
        headers,
    });
    let path = req.uri().path().to_string();

    let rule = {
        let mut rules = state.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| {
                r.remaining != Some(0)
                    && target.contains(&r.path_contains)
                    && r.method.as_ref().is_none_or(|m| *m == method)
            })
            .map(|r| {
                if let Some(n) = &mut r.remaining {
                    *n -= 1;
                }
                r.reply.clone()
            })
    };
    if let Some(reply) = rule {
        // Drain the request body first, so the client is not stuck sending.
        let _ = req.into_body().collect().await;
        return answer(reply, authorization.as_deref(), conn).await;
    }

    if path == "/token" {
        return Ok(token(state));
    }
    if !authorized(state, authorization.as_deref()) {
        return Ok(challenge(state));
    }
    Ok(registry(state, req.method(), &path, req.headers()))
}

fn authorized(state: &State, authorization: Option<&str>) -> bool {
    match state.challenge {
        Challenge::None => true,
        Challenge::Basic => {
            authorization.and_then(|a| a.strip_prefix("Basic "))
                == Some(Hostile::basic_value(&state.username, &state.password).as_str())
        }
        Challenge::Bearer => authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| state.tokens.lock().unwrap().iter().any(|x| x == t)),
    }
}

fn challenge(state: &State) -> Response<Body> {
    let value = match state.challenge {
        Challenge::None => unreachable!("an open registry never challenges"),
        Challenge::Basic => r#"Basic realm="hostile""#.to_string(),
        Challenge::Bearer => format!(
            r#"Bearer realm="{}",service="{SERVICE}""#,
            state.realm.lock().unwrap()
        ),
    };
    Response::builder()
        .status(401)
        .header("WWW-Authenticate", value)
        .header("Content-Type", "application/json")
        .body(full(
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        ))
        .unwrap()
}

/// Issues a token to whoever asks.
fn token(state: &State) -> Response<Body> {
    let n = state.serial.fetch_add(1, Ordering::SeqCst);
    let value = format!(
        "hostile-token-{}-{n}-{:x}",
        state.me.rsplit(':').next().unwrap_or_default(),
        http::now_secs().wrapping_mul(2_654_435_761) ^ (n as u64) << 17
    );
    state.tokens.lock().unwrap().push(value.clone());
    let body = state
        .token_answer
        .lock()
        .unwrap()
        .replace("{token}", &value);
    Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .body(full(body))
        .unwrap()
}

/// The well-behaved part: tags, manifests and blobs from the store.
fn registry(
    state: &State,
    method: &Method,
    path: &str,
    headers: &hyper::HeaderMap,
) -> Response<Body> {
    let not_found = |code: &str| {
        Response::builder()
            .status(404)
            .header("Content-Type", "application/json")
            .body(full(format!(
                r#"{{"errors":[{{"code":"{code}","message":"not here"}}]}}"#
            )))
            .unwrap()
    };
    if path == "/v2/" || path == "/v2" {
        return Response::builder()
            .status(200)
            .header("Docker-Distribution-API-Version", "registry/2.0")
            .body(full("{}"))
            .unwrap();
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return not_found("UNSUPPORTED");
    };
    let store = state.store.lock().unwrap();
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let Some(tags) = store.tags.get(name) else {
            return not_found("NAME_UNKNOWN");
        };
        let body = serde_json::json!({"name": name, "tags": tags.keys().collect::<Vec<_>>()});
        return Response::builder()
            .status(200)
            .header("Content-Type", "application/json")
            .body(full(body.to_string()))
            .unwrap();
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let digest = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            store.tags.get(name).and_then(|t| t.get(reference)).cloned()
        };
        let Some((digest, (media_type, bytes))) =
            digest.and_then(|d| store.manifests.get(&d).map(|m| (d, m.clone())))
        else {
            return not_found("MANIFEST_UNKNOWN");
        };
        let response = Response::builder()
            .status(200)
            .header("Content-Type", media_type)
            .header("Content-Length", bytes.len())
            .header("Docker-Content-Digest", digest);
        let body = if method == Method::HEAD {
            http::empty()
        } else {
            full(bytes)
        };
        return response.body(body).unwrap();
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let Some(bytes) = store.blobs.get(digest).cloned() else {
            return not_found("BLOB_UNKNOWN");
        };
        let from = headers
            .get(hyper::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|from| *from < bytes.len());
        let response = Response::builder()
            .header("Docker-Content-Digest", digest)
            .header("Content-Type", "application/octet-stream");
        let (response, body) = match from {
            Some(from) => (
                response.status(206).header(
                    "Content-Range",
                    format!("bytes {from}-{}/{}", bytes.len() - 1, bytes.len()),
                ),
                bytes.slice(from..),
            ),
            None => (response.status(200), bytes),
        };
        let response = response.header("Content-Length", body.len());
        let body = if method == Method::HEAD {
            http::empty()
        } else {
            full(body)
        };
        return response.body(body).unwrap();
    }
    not_found("UNSUPPORTED")
}

async fn answer(
    reply: Reply,
    authorization: Option<&str>,
    conn: Conn,
) -> Result<Response<Body>, Abort> {
    let (status, headers, payload) = match reply {
        Reply::Hang => std::future::pending().await,
        Reply::Reset => {
            conn.reset_on_close();
            return Err(Abort);
        }
        Reply::Answer {
            status,
            headers,
            body,
        } => (status, headers, body),
    };
    let mut response = Response::builder().status(status);
    for (k, v) in &headers {
        response = response.header(k.as_str(), v.as_str());
    }
    let declared = |response: hyper::http::response::Builder, len: usize| {
        if headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            response
        } else {
            response.header("Content-Length", len)
        }
    };
    let body = match payload {
        Payload::Bytes(bytes) => full(bytes),
        Payload::EchoAuthorization(template) => {
            let value = serde_json::to_string(authorization.unwrap_or_default()).unwrap();
            full(template.replace("{authorization}", value.trim_matches('"')))
        }
        Payload::Generated {
            head,
            fill,
            tail,
            len,
            declared: declare,
        } => {
            if let (true, Some(len)) = (declare, len) {
                response = response.header("Content-Length", len);
            }
            Generated::new(head, fill, tail, len).boxed_body()
        }
        Payload::Cut { bytes, after } => {
            response = declared(response, bytes.len());
            Slow::new(bytes.slice(..after.min(bytes.len())), 64 << 10, None, true).boxed_body()
        }
        Payload::Dribble { bytes, every } => {
            response = declared(response, bytes.len());
            Slow::new(bytes, 1, Some(every), false).boxed_body()
        }
    };
    Ok(response.body(body).unwrap())
}

/// `head`, `fill` repeated, `tail`, made chunk by chunk.
struct Generated {
    head: Option<Bytes>,
    fill: Bytes,
    tail: Option<Bytes>,
    /// Bytes of fill still to send (`None`: endless).
    fill_left: Option<u64>,
}

impl Generated {
    fn new(head: Bytes, fill: Bytes, tail: Bytes, len: Option<u64>) -> Generated {
        assert!(
            !fill.is_empty(),
            "a generated body needs something to fill with"
        );
        let fill_left = len.map(|l| l.saturating_sub((head.len() + tail.len()) as u64));
        Generated {
            head: Some(head),
            fill,
            tail: Some(tail),
            fill_left,
        }
    }

    fn boxed_body(self) -> Body {
        http_body_util::BodyExt::boxed(self)
    }
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take().filter(|h| !h.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        let chunk = match self.fill_left {
            None => Some(self.fill.clone()),
            Some(0) => None,
            Some(left) => {
                let n = (self.fill.len() as u64).min(left) as usize;
                self.fill_left = Some(left - n as u64);
                Some(self.fill.slice(..n))
            }
        };
        if let Some(chunk) = chunk {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match self.tail.take().filter(|t| !t.is_empty()) {
            Some(tail) => Poll::Ready(Some(Ok(Frame::data(tail)))),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Framed by the Content-Length header when one was declared, else chunked.
        SizeHint::default()
    }
}

/// `bytes` in pieces of `piece`, `pause` between them; when `then_break`, an error after the
/// last piece, which makes hyper close the connection short of its `Content-Length`.
struct Slow {
    bytes: Bytes,
    piece: usize,
    pause: Option<Duration>,
    then_break: bool,
    broken: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Slow {
    fn new(bytes: Bytes, piece: usize, pause: Option<Duration>, then_break: bool) -> Slow {
        Slow {
            bytes,
            piece: piece.max(1),
            pause,
            then_break,
            broken: false,
            sleep: None,
        }
    }

    fn boxed_body(self) -> Body {
        http_body_util::BodyExt::boxed(self)
    }
}

impl hyper::body::Body for Slow {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(sleep) = &mut this.sleep {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        if this.bytes.is_empty() {
            if !this.then_break {
                return Poll::Ready(None);
            }
            if this.broken {
                return Poll::Ready(Some(Err("cut short by the hostile registry".into())));
            }
            // Give hyper a moment to flush what was sent, then fail the body.
            this.broken = true;
            this.sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = this.piece.min(this.bytes.len());
        let chunk = this.bytes.split_to(n);
        if let Some(pause) = this.pause {
            this.sleep = Some(Box::pin(tokio::time::sleep(pause)));
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// How a [`RawServer`] treats each connection.
#[derive(Clone, Debug)]
pub enum Raw {
    /// Accept, read whatever comes, never write a byte.
    Silent,
    /// After the first bytes of the request arrive, write `bytes` one at a time, `every`
    /// apart (an HTTP response head dribbled out), then keep the connection open silently.
    Dribble { bytes: Bytes, every: Duration },
}

/// A TCP server on loopback that does one [`Raw`] thing to every connection.
pub struct RawServer {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    pub fn start(mode: Raw) -> RawServer {
        let (listener, port) = http::bind_loopback();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = http::runtime().spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let listener = tokio::net::TcpListener::from_std(listener).expect("register listener");
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mode = mode.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    if let Raw::Dribble { bytes, every } = mode {
                        if !matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                            return;
                        }
                        for b in bytes.iter() {
                            if stream.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(every).await;
                        }
                    }
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                    // Hold the socket until the peer closes it.
                });
            }
        });
        RawServer {
            port,
            connections,
            task,
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host())
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
