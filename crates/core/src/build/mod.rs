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

mod dockerignore;
mod params;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, ImportImageOptions, TagImageOptions,
};
use futures_util::StreamExt as _;

use crate::daemon::Daemon;
use crate::error::Error;
use crate::source::Settings;
pub use params::BuildParams;

/// The variables docker-image-resource expands in build args (nothing else is expanded).
const EXPANDED: &[&str] = &[
    "BUILD_ID",
    "BUILD_NAME",
    "BUILD_JOB_NAME",
    "BUILD_PIPELINE_NAME",
    "BUILD_TEAM_NAME",
    "ATC_EXTERNAL_URL",
];
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

fn input(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Input {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn daemon_error(e: bollard::errors::Error) -> Error {
    Error::Daemon {
        reason: e.to_string(),
    }
}

/// A `params.secrets` entry: BuildKit mounts it at `/run/secrets/<id>` for `RUN
/// --mount=type=secret,id=<id>` and keeps it out of the image.
#[derive(Debug, Clone, PartialEq)]
enum SecretSource {
    /// The value of an environment variable of `out`.
    Env(String),
    /// A file, relative to the put's directory unless absolute.
    File(PathBuf),
}

/// Everything `params.build` needs, read and checked before a daemon is asked for: a typo
/// in a path fails the put at once instead of after dockerd's start-up.
pub struct Build {
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
    pub fn prepare(params: &BuildParams, src: &Path) -> Result<Build, Error> {
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

    /// Builds the image and writes it as a `docker save` tarball to `out`.
    pub async fn run(
        &self,
        daemon: &Daemon,
        params: &BuildParams,
        settings: &Settings,
        staging: &Path,
        out: &Path,
    ) -> Result<(), Error> {
        let docker = &daemon.docker;
        let mut registry_auth = credentials(settings);
        add_ecr_credentials(
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

        // `docker save` of the result, for the daemonless push.
        let mut export = docker.export_image(&tag);
        let mut file = tokio::fs::File::create(out)
            .await
            .map_err(|e| input(out, e))?;
        while let Some(chunk) = export.next().await {
            let chunk = chunk.map_err(daemon_error)?;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(|e| input(out, e))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| input(out, e))?;
        let _ = docker
            .remove_image(
                &tag,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
        Ok(())
    }

    /// The classic builder through the Engine API: the context goes as a tarball (with
    /// `.dockerignore` applied here, as the CLI would), credentials as X-Registry-Config.
    async fn run_classic(
        &self,
        docker: &bollard::Docker,
        registry_auth: HashMap<String, DockerCredentials>,
        cache_from: Vec<String>,
        params: &BuildParams,
        staging: &Path,
        tag: &str,
    ) -> Result<(), Error> {
        // The context as a tarball; a Dockerfile outside the context travels inside it.
        let context_tar = staging.join("context.tar");
        let dockerfile_in_context = match self.dockerfile.strip_prefix(&self.context) {
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => ".dockhand.Dockerfile".to_string(),
        };
        {
            let file = std::fs::File::create(&context_tar).map_err(|e| input(&context_tar, e))?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
            tar.follow_symlinks(false);
            let ignore = dockerignore::Ignore::load(&self.context)?;
            append_context(&mut tar, &self.context, "", &ignore, &dockerfile_in_context)
                .map_err(|e| input(&self.context, e))?;
            if dockerfile_in_context == ".dockhand.Dockerfile" {
                tar.append_path_with_name(&self.dockerfile, &dockerfile_in_context)
                    .map_err(|e| input(&self.dockerfile, e))?;
            }
            tar.into_inner()
                .and_then(|mut w| std::io::Write::flush(&mut w))
                .map_err(|e| input(&context_tar, e))?;
        }
        let options = BuildImageOptions {
            dockerfile: dockerfile_in_context,
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            buildargs: Some(self.build_args.clone().into_iter().collect()),
            labels: Some(self.labels.clone().into_iter().collect()),
            target: params.target_name.clone().unwrap_or_default(),
            cachefrom: (!cache_from.is_empty()).then_some(cache_from),
            ..Default::default()
        };
        let body = file_stream(context_tar.clone())
            .await
            .map_err(|e| input(&context_tar, e))?;
        let stream = docker.build_image(
            options,
            Some(registry_auth),
            Some(bollard::body_stream(body)),
        );
        drain(stream)
            .await
            .map_err(|reason| Error::Build { reason })
    }

    /// BuildKit through the docker CLI (`DOCKER_BUILDKIT=1 docker build`), whose output is
    /// streamed to stderr; the last error line it prints is the failure's reason.
    async fn run_cli(
        &self,
        daemon: &Daemon,
        registry_auth: &HashMap<String, DockerCredentials>,
        cache_from: &[String],
        params: &BuildParams,
        staging: &Path,
        tag: &str,
    ) -> Result<(), Error> {
        let mut command = tokio::process::Command::new("docker");
        command
            .env("DOCKER_HOST", &daemon.host)
            .env("DOCKER_BUILDKIT", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if !registry_auth.is_empty() {
            command.env("DOCKER_CONFIG", docker_config(registry_auth, staging)?);
        }
        command.args(self.cli_args(params, cache_from, tag));
        for (name, value) in &self.build_args {
            if self.arg_by_env(name) {
                command.env(name, value);
            }
        }
        tracing::info!("building with BuildKit (docker build through the docker CLI)");
        let mut child = command.spawn().map_err(|e| Error::Build {
            reason: format!("BuildKit builds run the docker CLI, which cannot be run: {e}"),
        })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (_, last_lines, status) =
            tokio::join!(copy_lines(stdout), copy_lines(stderr), child.wait());
        let status = status.map_err(|e| Error::Build {
            reason: format!("docker CLI: {e}"),
        })?;
        if status.success() {
            return Ok(());
        }
        let reason = last_lines
            .iter()
            .rev()
            .find(|l| l.to_ascii_lowercase().starts_with("error"))
            .or(last_lines.last())
            .cloned()
            .unwrap_or_else(|| format!("docker build exited with {status}"));
        if reason.contains("buildx component is missing") {
            return Err(Error::Build {
                reason: "BuildKit needs a docker CLI that can drive it (docker 20.10, or a newer one with the buildx plugin); the docker on PATH has neither".into(),
            });
        }
        Err(Error::Build { reason })
    }

    /// The CLI's arguments: no build arg values (they come from the environment, unless the
    /// name would change how the CLI itself runs) and no credentials.
    fn cli_args(&self, params: &BuildParams, cache_from: &[String], tag: &str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "build".into(),
            "--progress=plain".into(),
            format!("--file={}", self.dockerfile.display()),
            format!("--tag={tag}"),
        ];
        if let Some(target) = &params.target_name {
            args.push(format!("--target={target}"));
        }
        for (name, value) in &self.build_args {
            if self.arg_by_env(name) {
                args.push(format!("--build-arg={name}"));
            } else {
                args.push(format!("--build-arg={name}={value}"));
            }
        }
        for (name, value) in &self.labels {
            args.push(format!("--label={name}={value}"));
        }
        for image in cache_from {
            args.push(format!("--cache-from={image}"));
        }
        for (id, source) in &self.secrets {
            let from = match source {
                SecretSource::Env(var) => csv_field(format!("env={var}")),
                SecretSource::File(path) => csv_field(format!("src={}", path.display())),
            };
            args.push(format!("--secret=id={id},{from}"));
        }
        args.push(self.context.display().to_string());
        args
    }

    /// Whether a build arg's value can travel in the CLI's environment: not when the name is
    /// one the CLI reads itself, or a variable a secret is read from.
    fn arg_by_env(&self, name: &str) -> bool {
        let cli_reads = matches!(name, "PATH" | "HOME" | "TMPDIR") || name.starts_with("DOCKER_");
        let secret_reads = self
            .secrets
            .iter()
            .any(|(_, s)| matches!(s, SecretSource::Env(v) if v == name));
        !cli_reads && !secret_reads
    }
}

/// Copies a child's output to stderr line by line and returns its last lines. Reads to the
/// end whatever the bytes are (a build step may print anything): a reader that stopped early
/// would leave the child blocked on a full pipe.
async fn copy_lines(stream: impl tokio::io::AsyncRead + Unpin) -> Vec<String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut last = std::collections::VecDeque::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        eprintln!("{line}");
        if last.len() == 20 {
            last.pop_front();
        }
        last.push_back(line);
    }
    last.into()
}

/// One field of a CSV-parsed flag value (`--secret`): quoted when it holds a comma or quote.
fn csv_field(field: String) -> String {
    if field.contains([',', '"', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

/// A private `DOCKER_CONFIG` holding exactly the credentials the classic builder would get,
/// readable only by this user; it goes with the staging directory.
fn docker_config(
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
            reason: e.to_string(),
        })?;
    Ok(dir)
}

/// `params.secrets`: `{"<id>": {"env": "VAR"}}` or `{"<id>": {"source": "path"}}`, as
/// docker-image-resource takes them; each is checked here so a missing one fails the put
/// before the build starts.
fn secrets(
    value: Option<&serde_json::Value>,
    src: &Path,
) -> Result<Vec<(String, SecretSource)>, Error> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let map = value.as_object().ok_or_else(|| {
        Error::field(
            "params.secrets",
            "must be an object of secret ids to {\"env\": \"VAR\"} or {\"source\": \"path\"}",
        )
    })?;
    let mut out = Vec::new();
    for (id, spec) in map {
        let field = format!("params.secrets.{id}");
        if id.is_empty() || id.contains([',', '=']) {
            return Err(Error::field(
                field,
                "a secret id cannot be empty or hold ',' or '='",
            ));
        }
        let spec = spec.as_object().ok_or_else(|| {
            Error::field(
                &field,
                "must be {\"env\": \"VAR\"} or {\"source\": \"path\"}",
            )
        })?;
        let text = |key: &str| match spec.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(Error::field(
                format!("{field}.{key}"),
                "must be a non-empty string",
            )),
        };
        if let Some(unknown) = spec
            .keys()
            .find(|k| !matches!(k.as_str(), "env" | "source" | "src"))
        {
            return Err(Error::field(
                &field,
                format!("unknown key {unknown:?}: use \"env\" or \"source\""),
            ));
        }
        let source = match (text("env")?, text("source")?.or(text("src")?)) {
            (Some(var), None) => {
                if std::env::var_os(&var).is_none() {
                    return Err(Error::field(
                        format!("{field}.env"),
                        format!("environment variable {var} is not set"),
                    ));
                }
                SecretSource::Env(var)
            }
            (None, Some(path)) => {
                let path = src.join(path);
                if !path.is_file() {
                    return Err(input(&path, format!("{field}.source: no such file")));
                }
                SecretSource::File(path)
            }
            _ => {
                return Err(Error::field(
                    &field,
                    "needs exactly one of \"env\" or \"source\"",
                ))
            }
        };
        out.push((id.clone(), source));
    }
    Ok(out)
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

/// The context's files under `rel`, less what `.dockerignore` leaves out (the Dockerfile and
/// `.dockerignore` always travel: the daemon needs them).
fn append_context<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    context: &Path,
    rel: &str,
    ignore: &dockerignore::Ignore,
    dockerfile: &str,
) -> std::io::Result<()> {
    let dir = if rel.is_empty() {
        context.to_path_buf()
    } else {
        context.join(rel)
    };
    let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        let always = path == dockerfile || path == ".dockerignore";
        let ignored = !always && ignore.is_ignored(&path);
        if kind.is_dir() {
            if !ignored {
                tar.append_dir(&path, entry.path())?;
            }
            if !ignored || ignore.has_exceptions() {
                append_context(tar, context, &path, ignore, dockerfile)?;
            }
        } else if !ignored {
            tar.append_path_with_name(entry.path(), &path)?;
        }
    }
    Ok(())
}

/// Reads a stream of build or pull messages to its end: output lines go to stderr, and an
/// error anywhere in it (a 200 can carry one mid-stream) fails the whole.
async fn drain<S, M>(mut stream: S) -> Result<(), String>
where
    S: futures_util::Stream<Item = Result<M, bollard::errors::Error>> + Unpin,
    M: Message,
{
    while let Some(item) = stream.next().await {
        let message = item.map_err(|e| match e {
            bollard::errors::Error::DockerStreamError { error } => error,
            other => other.to_string(),
        })?;
        if let Some(error) = message.error() {
            return Err(error);
        }
        message.show();
    }
    Ok(())
}

/// What the daemon's JSON message streams have in common.
trait Message {
    fn error(&self) -> Option<String>;
    fn show(&self);
}

impl Message for bollard::models::BuildInfo {
    fn error(&self) -> Option<String> {
        self.error_detail.as_ref().and_then(|d| d.message.clone())
    }
    fn show(&self) {
        if let Some(text) = &self.stream {
            eprint!("{text}");
        } else if let Some(status) = &self.status {
            tracing::debug!("{status}");
        }
    }
}

impl Message for bollard::models::CreateImageInfo {
    fn error(&self) -> Option<String> {
        self.error_detail.as_ref().and_then(|d| d.message.clone())
    }
    fn show(&self) {
        if let Some(status) = &self.status {
            tracing::debug!("{status}");
        }
    }
}

/// A file as a stream of byte chunks for a request body.
async fn file_stream(
    path: PathBuf,
) -> std::io::Result<impl futures_util::Stream<Item = bytes::Bytes> + Send + 'static> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(&path).await?;
    Ok(futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 << 10];
        match f.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((bytes::Bytes::from(buf), f))
            }
        }
    }))
}

/// A directory written by `in` with `save: true` (`load_base`, `load_bases`, `cache_from`):
/// its `image` archive and the name docker-image-resource tags it with, read from the files
/// beside it.
struct Saved {
    image: PathBuf,
    id: String,
    repository: String,
    tag: String,
}

impl Saved {
    fn read(dir: &Path, field: &str) -> Result<Saved, Error> {
        let image = dir.join("image");
        if !image.is_file() {
            return Err(input(
                &image,
                format!("{field}: no image file here (get it with params.save: true)"),
            ));
        }
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map(|s| s.trim().to_string())
                .map_err(|e| input(&dir.join(name), format!("{field}: {e}")))
        };
        Ok(Saved {
            id: read("image-id")?,
            repository: read("repository")?,
            tag: read("tag")?,
            image,
        })
    }

    fn name(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// Loads the archive into the daemon and tags it with its name.
    async fn load(&self, docker: &bollard::Docker) -> Result<(), Error> {
        let body = file_stream(self.image.clone())
            .await
            .map_err(|e| input(&self.image, e))?;
        let load = docker.import_image(
            ImportImageOptions::default(),
            bollard::body_stream(body),
            None,
        );
        drain(load).await.map_err(|reason| Error::Daemon {
            reason: format!("cannot load {}: {reason}", self.image.display()),
        })?;
        docker
            .tag_image(
                &self.id,
                Some(TagImageOptions {
                    repo: Some(self.repository.clone()),
                    tag: Some(self.tag.clone()),
                }),
            )
            .await
            .map_err(daemon_error)?;
        tracing::info!("loaded {} as {}", self.image.display(), self.name());
        Ok(())
    }
}

/// Proxy variables first, then build_args_file, then build_args (which win), with the six
/// Concourse variables expanded. Sorted by name (a BTreeMap), as docker-image-resource does.
fn build_args(params: &BuildParams, src: &Path) -> Result<BTreeMap<String, String>, Error> {
    let mut args = BTreeMap::new();
    for var in PROXY_VARS {
        if let Ok(v) = std::env::var(var) {
            args.insert(var.to_string(), v);
        }
    }
    if let Some(file) = &params.build_args_file {
        let path = src.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| input(&path, format!("params.build_args_file: {e}")))?;
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| input(&path, format!("Failed to parse build_args_file: {e}")))?;
        for (k, v) in map {
            args.insert(k, json_text(&v));
        }
    }
    if let Some(value) = &params.build_args {
        let map = value.as_object().ok_or_else(|| {
            Error::field("params.build_args", "must be an object of names to values")
        })?;
        for (k, v) in map {
            args.insert(k.clone(), expand(&json_text(v)));
        }
    }
    Ok(args)
}

fn labels(params: &BuildParams, src: &Path) -> Result<BTreeMap<String, String>, Error> {
    let mut labels = BTreeMap::new();
    if let Some(file) = &params.labels_file {
        let path = src.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| input(&path, format!("params.labels_file: {e}")))?;
        let map: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| {
                input(
                    &path,
                    format!("params.labels_file is not a JSON object: {e}"),
                )
            })?;
        for (k, v) in map {
            labels.insert(k, json_text(&v));
        }
    }
    if let Some(value) = &params.labels {
        let map = value
            .as_object()
            .ok_or_else(|| Error::field("params.labels", "must be an object of names to values"))?;
        for (k, v) in map {
            labels.insert(k.clone(), json_text(v));
        }
    }
    Ok(labels)
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `$BUILD_ID` and `${BUILD_ID}` (and the other five), from the environment.
fn expand(text: &str) -> String {
    let mut out = text.to_string();
    for var in EXPANDED {
        let value = std::env::var(var).unwrap_or_default();
        out = out.replace(&format!("${{{var}}}"), &value);
        // `$BUILD_ID` but not `$BUILD_IDX`.
        let needle = format!("${var}");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            result.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                result.push_str(&needle);
            } else {
                result.push_str(&value);
            }
            rest = after;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// Registry credentials for the daemon's pulls during the build (X-Registry-Config).
/// ECR tokens for the repository's registry and for every ECR registry a `FROM` line names
/// (after `ARG` defaults and build args are substituted), so the daemon can pull base images
/// and the cache image from ECR.
async fn add_ecr_credentials(
    auth: &mut HashMap<String, DockerCredentials>,
    dockerfile: &Path,
    build_args: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<(), Error> {
    let text = std::fs::read_to_string(dockerfile).map_err(|e| input(dockerfile, e))?;
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
        if let Some((username, password)) =
            crate::registry::ecr_credentials(&host, &settings.registries).await?
        {
            tracing::info!("using an ECR token for {host} in the build");
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

/// The images `FROM` lines name, without tag or digest, `$ARG`s substituted; stage names
/// and `scratch` are left out.
fn from_images(dockerfile: &str, build_args: &BTreeMap<String, String>) -> Vec<String> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        match instruction.to_ascii_uppercase().as_str() {
            "ARG" => {
                for word in words {
                    let (name, default) = word.split_once('=').unwrap_or((word, ""));
                    let value = build_args
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| default.trim_matches('"').to_string());
                    args.insert(name.to_string(), value);
                }
            }
            "FROM" => {
                let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
                let Some(image) = rest.first() else { continue };
                let image = substitute(image, &args);
                let earlier_stage = stages.contains(&image.to_ascii_lowercase());
                if let [_, as_, name] = rest.as_slice() {
                    if as_.eq_ignore_ascii_case("as") {
                        stages.push(name.to_ascii_lowercase());
                    }
                }
                if image == "scratch" || earlier_stage {
                    continue;
                }
                let name = image.split('@').next().unwrap_or_default();
                let name = match name.rsplit_once(':') {
                    Some((n, tag)) if !tag.contains('/') => n,
                    _ => name,
                };
                images.push(name.to_string());
            }
            _ => {}
        }
    }
    images
}

/// `$NAME` and `${NAME}` from `args`.
fn substitute(text: &str, args: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, next) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], &inner[end + 1..]),
                None => (inner, ""),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let name = name.split(':').next().unwrap_or_default();
        out.push_str(args.get(name).map(String::as_str).unwrap_or_default());
        rest = next;
    }
    out.push_str(rest);
    out
}

/// How the daemon and the CLI name a registry in credentials: Docker Hub by its index URL.
fn auth_key(host: &crate::reference::Host) -> String {
    if host.is_docker_hub() {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    }
}

fn credentials(settings: &Settings) -> HashMap<String, DockerCredentials> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines_with_args_and_stages() {
        let dockerfile = "\
ARG BASE=123456789012.dkr.ecr.eu-west-1.amazonaws.com/base
ARG TAG=1.0
ARG OTHER
FROM ${BASE}:${TAG} AS builder
FROM --platform=linux/amd64 $OTHER/tools@sha256:abc
FROM builder
FROM scratch
from localhost:5000/x:2 as final
";
        let mut build_args = BTreeMap::new();
        build_args.insert("OTHER".to_string(), "reg.example.com".to_string());
        assert_eq!(
            from_images(dockerfile, &build_args),
            [
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/base",
                "reg.example.com/tools",
                "localhost:5000/x"
            ]
        );
    }

    #[test]
    fn secret_flags_quote_what_csv_would_split() {
        assert_eq!(csv_field("src=/a/b".into()), "src=/a/b");
        assert_eq!(csv_field("src=/a,b".into()), "\"src=/a,b\"");
        assert_eq!(csv_field("src=/a\"b".into()), "\"src=/a\"\"b\"");
    }

    #[test]
    fn expansion_is_limited_to_the_concourse_variables() {
        std::env::set_var("BUILD_ID", "42");
        std::env::set_var("ATC_EXTERNAL_URL", "https://ci.example.com");
        assert_eq!(expand("id=$BUILD_ID"), "id=42");
        assert_eq!(expand("id=${BUILD_ID}!"), "id=42!");
        assert_eq!(
            expand("$BUILD_IDX $HOME ${ATC_EXTERNAL_URL}"),
            "$BUILD_IDX $HOME https://ci.example.com"
        );
    }
}
