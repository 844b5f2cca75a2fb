//! Google Artifact Registry and Container Registry: the documented usernames
//! (<https://cloud.google.com/artifact-registry/docs/docker/authentication>) and the access
//! token of the machine's service account from the GCE metadata server (`gcp_metadata`),
//! which is the password of `oauth2accesstoken`.
//!
//! The metadata server is `metadata.google.internal`, or the `host[:port]` that
//! `GCE_METADATA_HOST` names (the variable Google's client libraries honour).

use base64::Engine as _;

use super::auth::Credentials;
use super::cloud::{endpoint_base, fetch_token, metadata_client, Failed};
use super::error::CloudProblem;
use super::retry::RetryPolicy;
use crate::secret::Secret;

/// The user an OAuth2 access token goes with.
pub(crate) const ACCESS_TOKEN_USERNAME: &str = "oauth2accesstoken";

/// The users a service account key goes with: the JSON text, or its base64.
const JSON_KEY_USERNAME: &str = "_json_key";
const JSON_KEY_BASE64_USERNAME: &str = "_json_key_base64";

const METADATA_HOST: &str = "metadata.google.internal";

/// Overrides [`METADATA_HOST`], as for Google's client libraries.
const METADATA_HOST_VARIABLE: &str = "GCE_METADATA_HOST";

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The shortest line of a key's PEM body registered as a secret of its own.
const MIN_KEY_LINE: usize = 16;

/// The access token of the default service account, as `oauth2accesstoken`'s password.
pub(super) async fn credentials(policy: &RetryPolicy) -> Result<Credentials, Failed> {
    let configured = std::env::var(METADATA_HOST_VARIABLE)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let address = configured.as_deref().unwrap_or(METADATA_HOST);
    let endpoint = |host: &str| format!("the metadata server {host}");
    let (base, host) = endpoint_base(address).map_err(|e| (endpoint(address), e))?;
    let fail = |problem: CloudProblem| (endpoint(host.as_str()), problem);
    let http = metadata_client().map_err(fail)?;
    let url = format!("{base}{TOKEN_PATH}");
    tracing::debug!("asking {host} for the service account's access token");
    let token = fetch_token(
        policy,
        &host,
        "a service account token",
        "access_token",
        async || Ok(http.get(&url).header("Metadata-Flavor", "Google")),
    )
    .await
    .map_err(fail)?;
    Ok(Credentials {
        username: ACCESS_TOKEN_USERNAME.to_string(),
        password: token,
        origin: "the GCE metadata server (source.gcp_metadata)".into(),
    })
}

/// For a service account key given as a password (`_json_key`, `_json_key_base64`): its
/// private key, each line of it, and the decoded JSON are secrets too, so that no part of
/// the key can be printed.
pub(crate) fn register_key_secrets(username: &str, password: &Secret) {
    let json = match username {
        JSON_KEY_USERNAME => password.expose().to_string(),
        JSON_KEY_BASE64_USERNAME => {
            let compact: String = password
                .expose()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            match base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(text) => text,
                None => return,
            }
        }
        _ => return,
    };
    let _ = Secret::new(json.as_str());
    let Ok(key) = serde_json::from_str::<serde_json::Value>(&json) else {
        return;
    };
    for field in ["private_key", "private_key_id"] {
        if let Some(value) = key.get(field).and_then(|v| v.as_str()) {
            let _ = Secret::new(value);
            for line in value.lines().map(str::trim) {
                if line.len() >= MIN_KEY_LINE && !line.starts_with("-----") {
                    let _ = Secret::new(line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_a_json_key_is_a_secret() {
        let key = serde_json::json!({
            "type": "service_account",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7gcpkeyline1\nQ2hlc3RlcnRvbiJrZXlsaW5lMiIgYW5kICJxdW90ZXMi\n-----END PRIVATE KEY-----\n",
            "client_email": "pusher@project.iam.gserviceaccount.com",
        })
        .to_string();
        register_key_secrets("_json_key", &Secret::new(key));
        let line = "echo: MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7gcpkeyline1 and \
                    Q2hlc3RlcnRvbiJrZXlsaW5lMiIgYW5kICJxdW90ZXMi and 0123456789abcdef0123456789abcdef01234567";
        let out = crate::redact::redact(line);
        assert_eq!(out, "echo: *** and *** and ***");
        // The email is not a secret.
        assert_eq!(
            crate::redact::redact("pusher@project.iam.gserviceaccount.com"),
            "pusher@project.iam.gserviceaccount.com"
        );
    }

    #[test]
    fn a_base64_json_key_is_decoded_for_its_secrets() {
        let key = serde_json::json!({"private_key": "-----BEGIN PRIVATE KEY-----\nYmFzZTY0LWtleS1saW5lLWZvci10ZXN0aW5n\n-----END PRIVATE KEY-----\n"}).to_string();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&key);
        register_key_secrets("_json_key_base64", &Secret::new(encoded));
        assert_eq!(
            crate::redact::redact("x YmFzZTY0LWtleS1saW5lLWZvci10ZXN0aW5n y"),
            "x *** y"
        );
    }
}
