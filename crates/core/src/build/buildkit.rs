//! BuildKit through the docker CLI (`DOCKER_BUILDKIT=1 docker build`) against the same
//! daemon: its command line (build arg values and credentials kept off it), its environment,
//! and its output copied to stderr.

use std::collections::HashMap;
use std::path::Path;

use bollard::auth::DockerCredentials;

use super::credentials::docker_config;
use super::secrets::SecretSource;
use super::{Build, BuildParams};
use crate::daemon::Daemon;
use crate::error::Error;

impl Build {
    /// BuildKit through the docker CLI (`DOCKER_BUILDKIT=1 docker build`), whose output is
    /// streamed to stderr; the last error line it prints is the failure's reason.
    pub(super) async fn run_cli(
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
            source: format!("BuildKit builds run the docker CLI, which cannot be run: {e}").into(),
        })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (_, last_lines, status) =
            tokio::join!(copy_lines(stdout), copy_lines(stderr), child.wait());
        let status = status.map_err(|e| Error::Build {
            source: format!("docker CLI: {e}").into(),
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
                source: "BuildKit needs a docker CLI that can drive it (docker 20.10, or a newer one with the buildx plugin); the docker on PATH has neither".into(),
            });
        }
        Err(Error::Build {
            source: reason.into(),
        })
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
        eprintln!("{}", crate::redact::redact(&line));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_flags_quote_what_csv_would_split() {
        assert_eq!(csv_field("src=/a/b".into()), "src=/a/b");
        assert_eq!(csv_field("src=/a,b".into()), "\"src=/a,b\"");
        assert_eq!(csv_field("src=/a\"b".into()), "\"src=/a\"\"b\"");
    }
}
