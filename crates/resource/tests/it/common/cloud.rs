//! Small metadata servers of the clouds, served in-process by hyper on the harness runtime,
//! for the cloud logins: Azure's instance metadata service (managed identity tokens,
//! <https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token>)
//! and the GCE metadata server (service account tokens,
//! <https://cloud.google.com/compute/docs/access/authenticate-workloads#applications>).
//!
//! Each answers its token path with the token it was made with, when the request carries the
//! header the real one requires (`Metadata: true`, `Metadata-Flavor: Google`); Azure's also
//! checks `api-version`, `resource` and, when it was given one, the identity's `client_id`.
//! Errors are answered as the real ones do (OAuth2 `error`/`error_description` for Azure).
//! Every request is recorded.

use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::http::{self, full, Abort, Body, Conn};

pub const AZURE_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
pub const GCE_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    Azure,
    Gce,
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct MetadataRequest {
    pub method: String,
    pub path: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// All request headers, names lowercase.
    pub headers: Vec<(String, String)>,
    pub status: u16,
}

impl MetadataRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    cloud: Cloud,
    token: String,
    /// Azure: the user-assigned identity it has; `None`: only the system-assigned one.
    client_id: Option<String>,
    log: Mutex<Vec<MetadataRequest>>,
}

pub struct MetadataServer {
    pub port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl MetadataServer {
    /// Azure's IMDS, issuing `token` for the system-assigned identity, or only for the
    /// user-assigned `client_id` when given.
    pub fn azure(token: &str, client_id: Option<&str>) -> MetadataServer {
        MetadataServer::start(Cloud::Azure, token, client_id)
    }

    /// The GCE metadata server, issuing `token` for the default service account.
    pub fn gce(token: &str) -> MetadataServer {
        MetadataServer::start(Cloud::Gce, token, None)
    }

    fn start(cloud: Cloud, token: &str, client_id: Option<&str>) -> MetadataServer {
        let state = Arc::new(State {
            cloud,
            token: token.into(),
            client_id: client_id.map(str::to_string),
            log: Mutex::new(Vec::new()),
        });
        let (listener, port) = http::bind_loopback();
        let shared = state.clone();
        let task = http::serve(listener, move |req, conn| {
            let state = shared.clone();
            async move { handle(&state, req, conn).await }
        });
        MetadataServer { port, state, task }
    }

    /// `127.0.0.1:PORT` (what `GCE_METADATA_HOST` takes).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` (what `AZURE_POD_IDENTITY_AUTHORITY_HOST` takes).
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Every request so far, oldest first.
    pub fn log(&self) -> Vec<MetadataRequest> {
        self.state.log.lock().unwrap().clone()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    state: &State,
    req: Request<Incoming>,
    _conn: Conn,
) -> Result<Response<Body>, Abort> {
    let query = http::query_pairs(req.uri().query().unwrap_or_default());
    let headers = http::header_pairs(req.headers());
    let mut record = MetadataRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query,
        headers,
        status: 0,
    };
    let (status, body) = match state.cloud {
        Cloud::Azure => azure(state, &record),
        Cloud::Gce => gce(state, &record),
    };
    record.status = status.as_u16();
    state.log.lock().unwrap().push(record);
    let mut response = Response::builder()
        .status(status)
        .header("Content-Type", "application/json");
    if state.cloud == Cloud::Gce {
        response = response.header("Metadata-Flavor", "Google");
    }
    Ok(response.body(full(body)).unwrap())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> (StatusCode, String) {
    (
        status,
        serde_json::json!({"error": error, "error_description": description}).to_string(),
    )
}

fn azure(state: &State, r: &MetadataRequest) -> (StatusCode, String) {
    if r.path != AZURE_TOKEN_PATH || r.method != "GET" {
        return (StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into());
    }
    if r.header("metadata") != Some("true") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let Some(resource) = r
        .param("resource")
        .filter(|_| r.param("api-version").is_some())
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' or 'api-version' is missing",
        );
    };
    if r.param("client_id") != state.client_id.as_deref() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        );
    }
    let now = http::now_secs();
    (
        StatusCode::OK,
        serde_json::json!({
            "access_token": state.token,
            "refresh_token": "",
            "expires_in": "86399",
            "expires_on": (now + 86_399).to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        })
        .to_string(),
    )
}

fn gce(state: &State, r: &MetadataRequest) -> (StatusCode, String) {
    if r.header("metadata-flavor") != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing required header: Metadata-Flavor".into(),
        );
    }
    if r.path != GCE_TOKEN_PATH || r.method != "GET" {
        return (StatusCode::NOT_FOUND, "not found".into());
    }
    (
        StatusCode::OK,
        serde_json::json!({
            "access_token": state.token,
            "expires_in": 3599,
            "token_type": "Bearer",
        })
        .to_string(),
    )
}
