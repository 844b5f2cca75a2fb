//! The Docker daemon, for `docker build` only: the one at DOCKER_HOST (or the local socket)
//! when it answers, else a `dockerd` started here, as docker-image-resource does inside its
//! privileged container, and stopped again when `out` is done.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bollard::Docker;

use crate::error::Error;
use crate::source::Settings;

pub(crate) struct Daemon {
    pub docker: Docker,
    /// Where it listens, as DOCKER_HOST spells it (for the docker CLI's BuildKit builds).
    pub host: String,
    started: Option<Started>,
}

struct Started {
    child: tokio::process::Child,
    dir: PathBuf,
}

fn daemon_error(reason: impl Into<crate::error::Cause>) -> Error {
    Error::Daemon {
        source: reason.into(),
    }
}

impl Daemon {
    /// Connects to a daemon that answers, or starts one and waits up to `startup_timeout`.
    pub(crate) async fn connect_or_start(settings: &Settings) -> Result<Daemon, Error> {
        if let Ok(docker) = Docker::connect_with_local_defaults() {
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
                let docker = docker.negotiate_version().await.map_err(daemon_error)?;
                tracing::info!(
                    "using the Docker daemon at {}",
                    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "the local socket".into())
                );
                return Ok(Daemon {
                    docker,
                    host: std::env::var("DOCKER_HOST")
                        .unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
                    started: None,
                });
            }
        }
        Self::start(settings).await
    }

    async fn start(settings: &Settings) -> Result<Daemon, Error> {
        let dir = std::env::temp_dir().join(format!("dockhand-dockerd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(daemon_error)?;
        let socket = dir.join("docker.sock");
        let data_root = if Path::new("/scratch").is_dir() {
            PathBuf::from("/scratch/docker")
        } else {
            dir.join("data")
        };
        let mut args: Vec<String> = vec![
            format!("--data-root={}", data_root.display()),
            format!("--exec-root={}", dir.join("exec").display()),
            format!("--pidfile={}", dir.join("dockerd.pid").display()),
            format!("--host=unix://{}", socket.display()),
            format!(
                "--max-concurrent-downloads={}",
                settings.max_concurrent_downloads
            ),
            format!(
                "--max-concurrent-uploads={}",
                settings.max_concurrent_uploads
            ),
        ];
        for entry in &settings.registries.insecure {
            match entry {
                crate::registry::config::Insecure::Host(h) => {
                    args.push(format!("--insecure-registry={h}"))
                }
                crate::registry::config::Insecure::Net(n) => {
                    args.push(format!("--insecure-registry={n}"))
                }
            }
        }
        if let Some(mirror) = &settings.mirror {
            args.push(format!("--registry-mirror={}", mirror.url));
        }
        write_certs_d(settings);
        let timeout = settings.startup_timeout;
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(Instant::now);
        let mut restarted = false;
        let log_path = dir.join("dockerd.log");
        loop {
            tracing::info!(
                "starting dockerd (no daemon answered at DOCKER_HOST or the local socket)"
            );
            let log = std::fs::File::create(&log_path).map_err(daemon_error)?;
            let mut child = tokio::process::Command::new("dockerd")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(daemon_error)?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| daemon_error(format!("cannot run dockerd: {e}")))?;
            loop {
                // The socket appears only once dockerd is listening.
                if let Ok(docker) = Docker::connect_with_unix(
                    &socket.display().to_string(),
                    120,
                    bollard::API_DEFAULT_VERSION,
                ) {
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(Duration::from_secs(2), docker.ping()).await
                    {
                        let docker = docker.negotiate_version().await.map_err(daemon_error)?;
                        return Ok(Daemon {
                            docker,
                            host: format!("unix://{}", socket.display()),
                            started: Some(Started { child, dir }),
                        });
                    }
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let tail = log_tail(&log_path);
                    if restarted || Instant::now() >= deadline {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(daemon_error(format!(
                            "dockerd exited ({status}) during start-up: {tail}"
                        )));
                    }
                    tracing::warn!(
                        "dockerd exited ({status}) during start-up; starting it once more: {tail}"
                    );
                    restarted = true;
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill().await;
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(Error::DaemonTimeout {
                        seconds: timeout.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// Stops a daemon started here (and waits for it); a borrowed one is left running.
    pub(crate) async fn stop(mut self) {
        if let Some(mut started) = self.started.take() {
            if let Some(pid) = started.child.id() {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive"),
                    rustix::process::Signal::TERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(20), started.child.wait())
                .await
                .is_err()
            {
                let _ = started.child.kill().await;
            }
            let _ = std::fs::remove_dir_all(&started.dir);
        }
    }
}

/// `ca_certs`/`client_certs` where dockerd looks for them (`/etc/docker/certs.d/<domain>/`),
/// only inside a container this process owns: docker-image-resource does the same.
fn write_certs_d(settings: &Settings) {
    let base = Path::new("/etc/docker/certs.d");
    for ca in &settings.registries.ca_certs {
        if let Some(domain) = &ca.domain {
            let dir = base.join(domain);
            if std::fs::create_dir_all(&dir).is_ok() {
                let _ = std::fs::write(dir.join("ca.crt"), ca.pem.expose());
            }
        }
    }
    for c in &settings.registries.client_certs {
        if let Some(domain) = &c.domain {
            let dir = base.join(domain);
            if std::fs::create_dir_all(&dir).is_ok() {
                // The cert and key are one PEM; Go's loader picks the right blocks of each.
                let _ = std::fs::write(dir.join("client.cert"), c.pem.expose());
                let _ = std::fs::write(dir.join("client.key"), c.pem.expose());
            }
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
