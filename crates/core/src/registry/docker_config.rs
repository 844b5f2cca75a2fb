//! Credentials from the Docker CLI's configuration: `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`, with its `auths`, `credHelpers` and `credsStore`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::auth::Credentials;
use crate::reference::Host;
use crate::secret::Secret;

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The host a `config.json` key names: `https://index.docker.io/v1/` → Docker Hub.
fn config_key_host(key: &str) -> Option<Host> {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    Host::parse(k.split('/').next()?).ok()
}

/// What the Docker CLI's configuration has for `host`: a credential helper for it, its
/// `auths` entry, or the `credsStore`.
pub(super) async fn credentials(host: &Host) -> Option<Credentials> {
    let path = docker_config_path()?;
    let text = tokio::fs::read(&path).await.ok()?;
    let config: DockerConfig = match serde_json::from_slice(&text) {
        Ok(c) => c,
        Err(_) => {
            tracing::warn!("ignoring {}: not valid JSON", path.display());
            return None;
        }
    };
    let origin = path.display().to_string();
    let server = if host.is_docker_hub() {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    };
    if let Some((_, helper)) = config
        .cred_helpers
        .iter()
        .find(|(k, _)| config_key_host(k).as_ref() == Some(host))
    {
        return run_helper(helper, &server).await;
    }
    if let Some((_, entry)) = config
        .auths
        .iter()
        .find(|(k, _)| config_key_host(k).as_ref() == Some(host))
    {
        if let Some(auth) = &entry.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (user, pass) = decoded.split_once(':')?;
            return Some(Credentials {
                username: user.to_string(),
                password: Secret::new(pass),
                origin,
            });
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Some(Credentials {
                username: u.clone(),
                password: Secret::new(p.clone()),
                origin,
            });
        }
    }
    match &config.creds_store {
        Some(store) if !store.is_empty() => run_helper(store, &server).await,
        _ => None,
    }
}

/// `docker-credential-<helper> get`, server URL on stdin, JSON on stdout.
async fn run_helper(helper: &str, server: &str) -> Option<Credentials> {
    use tokio::io::AsyncWriteExt;
    let program = format!("docker-credential-{helper}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| tracing::warn!("cannot run credential helper {program}: {e}"))
        .ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).await.ok()?;
    }
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        tracing::debug!("credential helper {program} has nothing for {server}");
        return None;
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout).ok()?;
    if answer.username == "<token>" {
        tracing::warn!(
            "credential helper {program} returned an identity token, which dockhand does not use"
        );
        return None;
    }
    Some(Credentials {
        username: answer.username,
        password: Secret::new(answer.secret),
        origin: format!("credential helper {program}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys() {
        assert!(config_key_host("https://index.docker.io/v1/")
            .unwrap()
            .is_docker_hub());
        assert_eq!(
            config_key_host("http://127.0.0.1:5000").unwrap().as_str(),
            "127.0.0.1:5000"
        );
        assert_eq!(config_key_host("quay.io").unwrap().as_str(), "quay.io");
    }

    #[tokio::test]
    async fn docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"https://127.0.0.1:5000/v1/":{"auth":"dXNlcjpwQHNzOndvcmQ="}}}"#,
        )
        .unwrap();
        // SAFETY of the env change: this is the only test that reads DOCKER_CONFIG.
        std::env::set_var("DOCKER_CONFIG", dir.path());
        let c = credentials(&Host::parse("127.0.0.1:5000").unwrap())
            .await
            .unwrap();
        assert_eq!(c.username, "user");
        assert_eq!(c.password.expose(), "p@ss:word");
        assert!(credentials(&Host::parse("127.0.0.1:5001").unwrap())
            .await
            .is_none());
        std::env::remove_var("DOCKER_CONFIG");
    }
}
