//! `params.build`: `docker build` through the daemon with docker-image-resource's params,
//! then the built image exported (`docker save`) and pushed without the daemon, like every
//! other image `out` pushes.
//!
//! The classic builder is driven through the Engine API (bollard). BuildKit builds
//! (`docker_buildkit`, and `secrets`, which only BuildKit has) run the docker CLI with
//! `DOCKER_BUILDKIT=1` against the same daemon, as docker-image-resource does: BuildKit asks
//! the client for secrets over a session that only the CLI serves. Build arg values reach the
//! CLI through its environment and registry credentials through a private `DOCKER_CONFIG`,
//! never on its command line.

mod args;
mod buildkit;
mod classic;
mod credentials;
mod dockerfile;
mod dockerignore;
mod params;
mod saved;
mod secrets;
mod stream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::CreateImageOptions;

use crate::daemon::Daemon;
use crate::error::Error;
use crate::source::Settings;
pub(crate) use params::BuildParams;

use args::{build_args, labels};
use credentials::{add_token_credentials, auth_key, credentials};
use saved::Saved;
use secrets::{secrets, SecretSource};
use stream::drain;

fn input(path: &Path, reason: impl Into<crate::error::Cause>) -> Error {
    Error::Input {
        path: path.display().to_string(),
        source: reason.into(),
    }
}

fn daemon_error(e: bollard::errors::Error) -> Error {
    Error::Daemon { source: e.into() }
}

/// Everything `params.build` needs, read and checked before a daemon is asked for: a typo
/// in a path fails the put at once instead of after dockerd's start-up.
pub(crate) struct Build {
    context: PathBuf,
    dockerfile: PathBuf,
    build_args: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    secrets: Vec<(String, SecretSource)>,
    buildkit: bool,
    bases: Vec<Saved>,
    cache_from: Vec<Saved>,
}

impl Build {
    pub(crate) fn prepare(params: &BuildParams, src: &Path) -> Result<Build, Error> {
        let build = params.build.as_deref().expect("called for params.build");
        let context = src.join(build);
        if !context.is_dir() {
            return Err(input(&context, "params.build: no such directory"));
        }
        let dockerfile = match &params.dockerfile {
            Some(f) => src.join(f),
            None => context.join("Dockerfile"),
        };
        if !dockerfile.is_file() {
            return Err(input(&dockerfile, "params.dockerfile: no such file"));
        }
        let secrets = secrets(params.secrets.as_ref(), src)?;
        let buildkit = match params.docker_buildkit.as_ref().map(truthy).transpose()? {
            Some(false) if !secrets.is_empty() => {
                return Err(Error::field(
                    "params.secrets",
                    "needs BuildKit, and params.docker_buildkit turns it off",
                ))
            }
            Some(on) => on,
            None => !secrets.is_empty(),
        };
        let bases = (params.load_base.iter().map(|d| (d, "params.load_base")))
            .chain((params.load_bases.iter().flatten()).map(|d| (d, "params.load_bases")))
            .map(|(dir, field)| Saved::read(&src.join(dir), field))
            .collect::<Result<_, _>>()?;
        let cache_from = (params.cache_from.iter().flatten())
            .map(|dir| Saved::read(&src.join(dir), "params.cache_from"))
            .collect::<Result<_, _>>()?;
        Ok(Build {
            context,
            dockerfile,
            build_args: build_args(params, src)?,
            labels: labels(params, src)?,
            secrets,
            buildkit,
            bases,
            cache_from,
        })
    }

    /// The image the build starts from (the `FROM` of the stage built), whose layers the
    /// push can refer to instead of compressing them again; `None` for `scratch`, or when
    /// the Dockerfile cannot be read.
    pub(crate) fn base_image(&self, params: &BuildParams) -> Option<String> {
        let text = crate::layout::read_capped_text(
            &self.dockerfile,
            "params.dockerfile",
            dockerfile::MAX_DOCKERFILE_BYTES,
        )
        .ok()?;
        dockerfile::base_image(&text, &self.build_args, params.target_name.as_deref())
    }

    /// Builds the image and writes it as a `docker save` tarball to `out`.
    pub(crate) async fn run(
        &self,
        daemon: &Daemon,
        params: &BuildParams,
        settings: &Settings,
        staging: &Path,
        out: &Path,
    ) -> Result<(), Error> {
        let docker = &daemon.docker;
        let mut registry_auth = credentials(settings);
        add_token_credentials(
            &mut registry_auth,
            &self.dockerfile,
            &self.build_args,
            settings,
        )
        .await?;
        for saved in self.bases.iter().chain(&self.cache_from) {
            saved.load(docker).await?;
        }
        let mut cache_from: Vec<String> = self.cache_from.iter().map(Saved::name).collect();
        if params.cache.unwrap_or(false) {
            let tag = params
                .cache_tag
                .clone()
                .unwrap_or_else(|| settings.tag.to_string());
            let image = format!("{}:{tag}", settings.repository);
            let pull = docker.create_image(
                Some(CreateImageOptions {
                    from_image: Some(image.clone()),
                    ..Default::default()
                }),
                None,
                registry_auth
                    .get(&auth_key(settings.repository.host()))
                    .cloned(),
            );
            match drain(pull).await {
                Ok(()) => cache_from.push(image),
                Err(e) => {
                    tracing::warn!("cannot pull the cache image {image}, building without it: {e}")
                }
            }
        }

        let tag = format!("dockhand-build/{}:latest", std::process::id());
        if self.buildkit {
            self.run_cli(daemon, &registry_auth, &cache_from, params, staging, &tag)
                .await?;
        } else {
            self.run_classic(docker, registry_auth, cache_from, params, staging, &tag)
                .await?;
        }

        // `docker save` of the result, for the daemonless push; the tag goes either way.
        let exported = saved::export(docker, &tag, out).await;
        let _ = docker
            .remove_image(
                &tag,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
        exported
    }
}

/// `docker_buildkit: 1` is docker-image-resource's spelling; true/false and "0"/"1" too.
fn truthy(value: &serde_json::Value) -> Result<bool, Error> {
    use serde_json::Value;
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        Value::String(s) if matches!(s.as_str(), "1" | "true") => Ok(true),
        Value::String(s) if matches!(s.as_str(), "0" | "false" | "") => Ok(false),
        Value::Null => Ok(false),
        other => Err(Error::field(
            "params.docker_buildkit",
            format!("must be 1 or 0 (or true or false), not {other}"),
        )),
    }
}
