//! Registry credentials handed to the build: the source's registries and ECR tokens for the
//! registries the Dockerfile pulls from, keyed as the daemon and the CLI name registries,
//! and written as a private `DOCKER_CONFIG` for the CLI.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bollard::auth::DockerCredentials;

use super::dockerfile::{from_images, MAX_DOCKERFILE_BYTES};
use crate::error::Error;
use crate::source::Settings;

/// How the daemon and the CLI name a registry in credentials: Docker Hub by its index URL.
pub(super) fn auth_key(host: &crate::reference::Host) -> String {
    if host.is_docker_hub() {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    }
}

pub(super) fn credentials(settings: &Settings) -> HashMap<String, DockerCredentials> {
    settings
        .registries
        .credentials
        .iter()
        .map(|c| {
            let key = auth_key(&c.host);
            (
                key.clone(),
                DockerCredentials {
                    username: Some(c.username.clone()),
                    password: Some(c.password.expose().to_string()),
                    serveraddress: Some(key),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Registry credentials for the daemon's pulls during the build (X-Registry-Config): the
/// cloud login's (`azure_acr`, `gcp_metadata`) for the repository's registry, and ECR tokens
/// for it and for every ECR registry a `FROM` line names (after `ARG` defaults and build args
/// are substituted), so the daemon can pull base images and the cache image from there.
pub(super) async fn add_token_credentials(
    auth: &mut HashMap<String, DockerCredentials>,
    dockerfile: &Path,
    build_args: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<(), Error> {
    let text =
        crate::layout::read_capped_text(dockerfile, "params.dockerfile", MAX_DOCKERFILE_BYTES)?;
    let mut hosts = vec![settings.repository.host().clone()];
    for image in from_images(&text, build_args) {
        if let Ok(r) = image.parse::<crate::reference::Repository>() {
            if !hosts.contains(r.host()) {
                hosts.push(r.host().clone());
            }
        }
    }
    for host in hosts {
        if auth.contains_key(&auth_key(&host)) {
            continue;
        }
        let token = match crate::registry::cloud_credentials(&host, &settings.registries).await? {
            Some(c) => {
                tracing::info!("using the cloud login's credentials for {host} in the build");
                Some(c)
            }
            None => {
                let c = crate::registry::ecr_credentials(&host, &settings.registries).await?;
                if c.is_some() {
                    tracing::info!("using an ECR token for {host} in the build");
                }
                c
            }
        };
        if let Some((username, password)) = token {
            auth.insert(
                auth_key(&host),
                DockerCredentials {
                    username: Some(username),
                    password: Some(password.expose().to_string()),
                    serveraddress: Some(host.to_string()),
                    ..Default::default()
                },
            );
        }
    }
    Ok(())
}

/// A private `DOCKER_CONFIG` holding exactly the credentials the classic builder would get,
/// readable only by this user; it goes with the staging directory.
pub(super) fn docker_config(
    auth: &HashMap<String, DockerCredentials>,
    staging: &Path,
) -> Result<PathBuf, Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = staging.join("docker-config");
    let auths: serde_json::Map<String, serde_json::Value> = auth
        .iter()
        .map(|(host, c)| {
            let pair = format!(
                "{}:{}",
                c.username.as_deref().unwrap_or_default(),
                c.password.as_deref().unwrap_or_default()
            );
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            (host.clone(), serde_json::json!({ "auth": encoded }))
        })
        .collect();
    let path = dir.join("config.json");
    std::fs::create_dir_all(&dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        })
        .and_then(|mut f| f.write_all(serde_json::json!({ "auths": auths }).to_string().as_bytes()))
        .map_err(|e| Error::Output {
            path: path.display().to_string(),
            source: e.into(),
        })?;
    Ok(dir)
}
