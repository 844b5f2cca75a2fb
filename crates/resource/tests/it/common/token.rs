//! A small token server for the registry's `auth.token` mode
//! (<https://distribution.github.io/distribution/spec/auth/token/>), served in-process by hyper
//! on the harness runtime.
//!
//! `GET /token?service=..&scope=repository:NAME:pull,push` (scope may repeat or be absent), or
//! `POST /token` with an OAuth2 password-grant form. HTTP Basic credentials (or the form's
//! username/password) must be [`USER`](super::USER)/[`PASSWORD`](super::PASSWORD): wrong ones
//! get a 401, none get an anonymous token. The answer is an ES256 JWT signed with ring; its
//! header carries the signing certificate in `x5c`, and that certificate is the registry's
//! `rootcertbundle`, which is how distribution 2.8 verifies it (x5c chain verified against the
//! bundle with `ExtKeyUsageAny`, `iss` = the configured issuer, `aud` = the service).
//!
//! `/oauth2/token` is the same endpoint (ACR's path), and `POST /oauth2/exchange` plays ACR's
//! exchange of an Entra ID (AAD) access token for a refresh token
//! (<https://github.com/Azure/acr/blob/main/docs/AAD-OAuth.md>): a form with
//! `grant_type=access_token`, `service`, optional `tenant`, and an `access_token` that
//! [`TokenServer::accept_exchange`] registered; the answer is `{"refresh_token": ...}`.
//! [`TokenServer::also_accept`] adds a user and password (the refresh token's null-GUID user,
//! GCP's `oauth2accesstoken`, `_json_key`) that get what the main user gets.
//!
//! What a token grants:
//! - the user: every action asked for, except on repositories under a *denied* prefix
//!   (default `forbidden/`), which get nothing (the registry then answers 401
//!   `insufficient_scope`);
//! - anonymous: nothing, except `pull` on repositories under an *anonymous pull* prefix
//!   (default `public/`). Per-prefix rather than a global switch, so parallel tests never
//!   see each other's settings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::http::{self, full, Abort, Body, Conn};
use super::pki::Pair;

pub const SERVICE: &str = "dockhand-test-registry";
pub const ISSUER: &str = "dockhand-test-issuer";
/// Lifetime of the tokens, seconds.
pub const EXPIRES_IN: u64 = 300;
/// The user of ACR's refresh tokens.
pub const ACR_USER: &str = "00000000-0000-0000-0000-000000000000";

/// One `/oauth2/exchange` request.
#[derive(Clone, Debug)]
pub struct ExchangeRequest {
    pub grant_type: Option<String>,
    pub service: Option<String>,
    pub tenant: Option<String>,
    pub access_token: Option<String>,
    pub content_type: Option<String>,
    /// 200, or 401 for an access token it does not know.
    pub status: u16,
}

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    /// The user the credentials named (also when they were wrong); `None` when anonymous.
    pub user: Option<String>,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// 200, or 401 for wrong credentials.
    pub status: u16,
    /// What the token granted, as `type:name:action,action` strings.
    pub granted: Vec<String>,
}

struct State {
    key: EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    x5c: String,
    username: String,
    password: String,
    /// More `(user, password)` pairs that are the user.
    also: Mutex<Vec<(String, String)>>,
    /// ACR exchange: access token → refresh token.
    exchanges: Mutex<Vec<(String, String)>>,
    exchange_log: Mutex<Vec<ExchangeRequest>>,
    anonymous_pull: Mutex<Vec<String>>,
    denied: Mutex<Vec<String>>,
    log: Mutex<Vec<TokenRequest>>,
    requests: Arc<AtomicUsize>,
    jti: AtomicUsize,
}

pub struct TokenServer {
    pub port: u16,
    /// Every request to the token endpoint, whatever its outcome.
    pub requests: Arc<AtomicUsize>,
    state: Arc<State>,
    _task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    pub fn start(signer: &Pair, username: &str, password: &str) -> TokenServer {
        let rng = ring::rand::SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &signer.key_pkcs8, &rng)
                .expect("the token signer is a P-256 key");
        let requests = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            key,
            rng,
            x5c: base64::engine::general_purpose::STANDARD.encode(&signer.cert_der),
            username: username.into(),
            password: password.into(),
            also: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
            exchange_log: Mutex::new(Vec::new()),
            anonymous_pull: Mutex::new(vec!["public/".into()]),
            denied: Mutex::new(vec!["forbidden/".into()]),
            log: Mutex::new(Vec::new()),
            requests: requests.clone(),
            jti: AtomicUsize::new(0),
        });
        let (listener, port) = http::bind_loopback();
        let shared = state.clone();
        let task = http::serve(listener, move |req, conn| {
            let state = shared.clone();
            async move { handle(&state, req, conn).await }
        });
        TokenServer {
            port,
            requests,
            state,
            _task: task,
        }
    }

    /// The `realm` the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// How many requests reached the token endpoint.
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// How many token requests named a scope on `repository`.
    pub fn requests_for(&self, repository: &str) -> usize {
        let needle = format!("repository:{repository}:");
        self.log()
            .iter()
            .filter(|r| r.scopes.iter().any(|s| s.starts_with(&needle)))
            .count()
    }

    /// Every request answered so far, oldest first.
    pub fn log(&self) -> Vec<TokenRequest> {
        self.state.log.lock().unwrap().clone()
    }

    /// Anonymous clients may pull repositories whose name starts with `prefix`.
    pub fn allow_anonymous_pull(&self, prefix: &str) {
        self.state
            .anonymous_pull
            .lock()
            .unwrap()
            .push(prefix.into());
    }

    /// `user` with `password` is granted what the main user is.
    pub fn also_accept(&self, user: &str, password: &str) {
        self.state
            .also
            .lock()
            .unwrap()
            .push((user.into(), password.into()));
    }

    /// `/oauth2/exchange` answers `access_token` with `refresh_token` (which is then also
    /// accepted as the password of ACR's null-GUID user).
    pub fn accept_exchange(&self, access_token: &str, refresh_token: &str) {
        self.state
            .exchanges
            .lock()
            .unwrap()
            .push((access_token.into(), refresh_token.into()));
        self.also_accept(ACR_USER, refresh_token);
    }

    /// Every `/oauth2/exchange` request so far, oldest first.
    pub fn exchange_log(&self) -> Vec<ExchangeRequest> {
        self.state.exchange_log.lock().unwrap().clone()
    }

    /// `host:port`, for a proxy route to this server.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Even the user gets nothing on repositories whose name starts with `prefix`.
    pub fn deny(&self, prefix: &str) {
        self.state.denied.lock().unwrap().push(prefix.into());
    }
}

enum Who {
    Anonymous,
    User(String),
    Wrong(String),
}

async fn handle(
    state: &State,
    req: Request<Incoming>,
    _conn: Conn,
) -> Result<Response<Body>, Abort> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let method = req.method().clone();
    if req.uri().path() == "/oauth2/exchange" && method == Method::POST {
        return Ok(exchange(state, req).await);
    }
    if req.uri().path() != "/token" && req.uri().path() != "/oauth2/token" {
        return Ok(json(StatusCode::NOT_FOUND, r#"{"details":"not found"}"#));
    }
    let query = req.uri().query().unwrap_or_default().to_string();
    let basic = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .map(|raw| String::from_utf8_lossy(&raw).into_owned())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let mut params = http::query_pairs(&query);
    let mut credentials = basic;
    if method == Method::POST {
        let form = form_of(req).await;
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("grant_type").as_deref() == Some("password") {
            if let (Some(u), Some(p)) = (get("username"), get("password")) {
                credentials = Some((u, p));
            }
        }
        params.extend(form);
    }
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let who = match credentials {
        None => Who::Anonymous,
        Some((u, p)) if u == state.username && p == state.password => Who::User(u),
        Some((u, p))
            if state
                .also
                .lock()
                .unwrap()
                .iter()
                .any(|(au, ap)| *au == u && *ap == p) =>
        {
            Who::User(u)
        }
        Some((u, _)) => Who::Wrong(u),
    };
    let mut record = TokenRequest {
        method: method.to_string(),
        user: match &who {
            Who::Anonymous => None,
            Who::User(u) | Who::Wrong(u) => Some(u.clone()),
        },
        service,
        scopes: scopes.clone(),
        status: 401,
        granted: Vec::new(),
    };
    if let Who::Wrong(_) = who {
        state.log.lock().unwrap().push(record);
        return Ok(json(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#,
        ));
    }
    let access = grant(state, &who, &scopes);
    record.status = 200;
    record.granted = access
        .iter()
        .map(|a| {
            format!(
                "{}:{}:{}",
                a["type"].as_str().unwrap_or_default(),
                a["name"].as_str().unwrap_or_default(),
                a["actions"]
                    .as_array()
                    .map(|v| v
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            )
        })
        .collect();
    state.log.lock().unwrap().push(record);
    let subject = match &who {
        Who::User(u) => u.clone(),
        _ => String::new(),
    };
    let now = http::now_secs();
    let jwt = sign(state, &subject, access, now);
    let body = serde_json::json!({
        "token": jwt,
        "access_token": jwt,
        "expires_in": EXPIRES_IN,
        "issued_at": http::rfc3339(now),
    });
    Ok(json(StatusCode::OK, &body.to_string()))
}

/// The `key=value` pairs of a form body.
async fn form_of(req: Request<Incoming>) -> Vec<(String, String)> {
    let body = (req.into_body().collect().await)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    http::query_pairs(&String::from_utf8_lossy(&body))
}

/// ACR's `/oauth2/exchange`: a known access token gets its refresh token.
async fn exchange(state: &State, req: Request<Incoming>) -> Response<Body> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let form = form_of(req).await;
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut record = ExchangeRequest {
        grant_type: get("grant_type"),
        service: get("service"),
        tenant: get("tenant"),
        access_token: get("access_token"),
        content_type,
        status: 401,
    };
    let refresh = state
        .exchanges
        .lock()
        .unwrap()
        .iter()
        .find(|(a, _)| record.access_token.as_deref() == Some(a.as_str()))
        .map(|(_, r)| r.clone());
    let answer = match refresh {
        Some(refresh) if record.grant_type.as_deref() == Some("access_token") => {
            record.status = 200;
            json(
                StatusCode::OK,
                &serde_json::json!({ "refresh_token": refresh }).to_string(),
            )
        }
        // Echoes the token, as careless servers do: the client must not print it.
        _ => json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"errors": [{
                "code": "UNAUTHORIZED",
                "message": format!(
                    "access token {} is not valid for this registry",
                    record.access_token.as_deref().unwrap_or_default()
                ),
            }]})
            .to_string(),
        ),
    };
    state.exchange_log.lock().unwrap().push(record);
    answer
}

/// `type:name:actions` → the JWT `access` entries this caller gets.
fn grant(state: &State, who: &Who, scopes: &[String]) -> Vec<serde_json::Value> {
    let denied = state.denied.lock().unwrap().clone();
    let anonymous_pull = state.anonymous_pull.lock().unwrap().clone();
    scopes
        .iter()
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let asked: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            let allowed: Vec<&str> = match who {
                Who::User(_) if denied.iter().any(|p| name.starts_with(p.as_str())) => vec![],
                Who::User(_) => asked,
                _ if kind == "repository"
                    && anonymous_pull.iter().any(|p| name.starts_with(p.as_str())) =>
                {
                    asked.into_iter().filter(|a| *a == "pull").collect()
                }
                _ => vec![],
            };
            (!allowed.is_empty())
                .then(|| serde_json::json!({"type": kind, "name": name, "actions": allowed}))
        })
        .collect()
}

fn sign(state: &State, subject: &str, access: Vec<serde_json::Value>, now: u64) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [state.x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + EXPIRES_IN,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("{now}-{}", state.jti.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).unwrap()),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    let signature = state
        .key
        .sign(&state.rng, signing_input.as_bytes())
        .expect("sign a token");
    format!("{signing_input}.{}", b64(signature.as_ref()))
}

fn json(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// Decodes a JWT's header and claims without verifying it (for tests that inspect tokens).
pub fn decode_jwt(jwt: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = jwt.split('.');
    let mut next = || {
        let part = parts.next().expect("a JWT has three parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON")
    };
    let header = next();
    let claims = next();
    (header, claims)
}
