//! The integration-test harness: real `docker-registry` processes in every flavour dockhand
//! supports, a token server, test images pushed with `skopeo`, a fault-injecting proxy, and
//! a runner for the real binaries.
//!
//! Everything is started once per test process and lives until it exits: registries are
//! spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so they die with the tests.
#![allow(dead_code)]

pub mod http;
pub mod image;
pub mod pki;
pub mod proxy;
pub mod token;

use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use image::{Entry, Image};
pub use proxy::{Fault, FaultProxy};

pub const USER: &str = "dockhand";
pub const PASSWORD: &str = "s3cr3t-P@ss_w0rd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Plain,
    Tls,
    Mtls,
    Basic,
    Token,
}

pub struct Registry {
    /// Killed by PR_SET_PDEATHSIG when the tests end.
    child: Mutex<Child>,
    pub flavour: Flavour,
    pub port: u16,
    pub host: String,
    dir: PathBuf,
}

pub struct Env {
    pub dir: PathBuf,
    pub ca_pem: String,
    /// A CA that signed nothing here.
    pub other_ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// The system bundle plus the test CA: as if the CA were in the system roots.
    pub bundle_with_ca: PathBuf,
    pub plain: Registry,
    pub tls: Registry,
    pub mtls: Registry,
    pub basic: Registry,
    pub token: Registry,
    pub token_server: token::TokenServer,
    cert_dir_tls: PathBuf,
    cert_dir_mtls: PathBuf,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The shared environment, started on first use.
pub fn env() -> &'static Env {
    ENV.get_or_init(start)
}

/// Spawns processes from a thread that never exits, so `PR_SET_PDEATHSIG` (which fires when
/// the spawning *thread* ends) only fires when the test process ends.
fn spawn(command: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut command, reply) in rx {
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    sender.lock().unwrap().send((command, tx)).unwrap();
    rx.recv().unwrap().expect("spawn a test process")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run ci/test.sh, which installs the test dependencies"
    );
}

fn start() -> Env {
    for tool in ["docker-registry", "skopeo", "htpasswd"] {
        require(tool);
    }
    let dir = scratch_dir("env");
    let ca = pki::Ca::new("dockhand test ca");
    let other = pki::Ca::new("dockhand unrelated ca");
    let server = ca.server();
    let client = ca.client();
    let signer = pki::Ca::self_signed_signer("dockhand token signer");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_path = write("ca.crt", &ca.pem);
    let server_cert = write("server.crt", &server.cert_pem);
    let server_key = write("server.key", &server.key_pem);
    let signer_cert = write("token-signer.crt", &signer.cert_pem);
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    let bundle_with_ca = write("bundle-with-ca.pem", &format!("{system}\n{}", ca.pem));

    // skopeo's --cert-dir layouts: ca.crt, and client.cert/client.key for mTLS.
    let cert_dir_tls = dir.join("certs-tls");
    let cert_dir_mtls = dir.join("certs-mtls");
    for d in [&cert_dir_tls, &cert_dir_mtls] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("ca.crt"), &ca.pem).unwrap();
    }
    std::fs::write(cert_dir_mtls.join("client.cert"), &client.cert_pem).unwrap();
    std::fs::write(cert_dir_mtls.join("client.key"), &client.key_pem).unwrap();

    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", USER, PASSWORD])
        .output()
        .unwrap();
    assert!(htpasswd.status.success());
    let htpasswd_path = dir.join("htpasswd");
    std::fs::write(&htpasswd_path, htpasswd.stdout).unwrap();

    let token_server = token::TokenServer::start(&signer, USER, PASSWORD);

    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        server_cert.display(),
        server_key.display()
    );
    let mtls = format!("{tls}    clientcas:\n      - {}\n", ca_path.display());
    let basic = format!(
        "auth:\n  htpasswd:\n    realm: dockhand-test\n    path: {}\n",
        htpasswd_path.display()
    );
    let token_auth = format!(
        "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
        token_server.realm(),
        token::SERVICE,
        token::ISSUER,
        signer_cert.display()
    );
    let launch = |flavour: Flavour, http_extra: &str, extra: &str| {
        launch_registry(&dir, flavour, http_extra, extra)
    };
    let plain = launch(Flavour::Plain, "", "");
    let tls_reg = launch(Flavour::Tls, &tls, "");
    let mtls_reg = launch(Flavour::Mtls, &mtls, "");
    let basic_reg = launch(Flavour::Basic, "", &basic);
    let token_reg = launch(Flavour::Token, "", &token_auth);
    for r in [&plain, &tls_reg, &mtls_reg, &basic_reg, &token_reg] {
        r.wait_ready();
    }
    Env {
        ca_pem: ca.pem.clone(),
        other_ca_pem: other.pem.clone(),
        client_cert_pem: client.cert_pem.clone(),
        client_key_pem: client.key_pem.clone(),
        bundle_with_ca,
        plain,
        tls: tls_reg,
        mtls: mtls_reg,
        basic: basic_reg,
        token: token_reg,
        token_server,
        cert_dir_tls,
        cert_dir_mtls,
        dir,
    }
}

fn launch_registry(root: &Path, flavour: Flavour, http_extra: &str, extra: &str) -> Registry {
    let port = free_port();
    let dir = root.join(format!("registry-{flavour:?}").to_lowercase());
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{http_extra}{extra}",
        dir.join("data").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut command = Command::new("docker-registry");
    command
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = spawn(command);
    Registry {
        child: Mutex::new(child),
        flavour,
        port,
        host: format!("127.0.0.1:{port}"),
        dir,
    }
}

impl Registry {
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.host).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "registry {:?} did not start on {}: {}",
            self.flavour,
            self.host,
            self.log_tail()
        );
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `127.0.0.1:PORT/<name>`
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// skopeo's flags for this registry, as source (`prefix` "src-"/"") or destination.
    fn skopeo_flags(&self, prefix: &str) -> Vec<String> {
        let env = env();
        let mut flags = Vec::new();
        match self.flavour {
            Flavour::Tls => {
                flags.push(format!("--{prefix}cert-dir={}", env.cert_dir_tls.display()))
            }
            Flavour::Mtls => flags.push(format!(
                "--{prefix}cert-dir={}",
                env.cert_dir_mtls.display()
            )),
            _ => flags.push(format!("--{prefix}tls-verify=false")),
        }
        if matches!(self.flavour, Flavour::Basic | Flavour::Token) {
            flags.push(format!("--{prefix}creds={USER}:{PASSWORD}"));
        }
        flags
    }

    /// Pushes the layout's `layout_tag` to `repo:tag` with skopeo, digests preserved.
    pub fn push_layout(&self, layout: &Path, layout_tag: &str, repo_tag: &str) {
        self.copy_layout(layout, layout_tag, repo_tag, &["--preserve-digests"]);
    }

    /// Pushes `image` converted by skopeo to a Docker schema 2 manifest; the digest is what
    /// the registry then holds (read back with skopeo).
    pub fn push_docker_v2(&self, image: &Image, repo_tag: &str) -> String {
        let layout = tempfile::tempdir().unwrap();
        image.write_layout(layout.path(), "t");
        self.copy_layout(layout.path(), "t", repo_tag, &["--format=v2s2"]);
        self.skopeo_digest(repo_tag)
    }

    fn copy_layout(&self, layout: &Path, layout_tag: &str, repo_tag: &str, extra: &[&str]) {
        let mut args = vec!["copy".to_string(), "--quiet".into(), "--all".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(self.skopeo_flags("dest-"));
        args.push(format!("oci:{}:{layout_tag}", layout.display()));
        args.push(format!("docker://{}/{repo_tag}", self.host));
        skopeo(&args);
    }

    /// Builds `image` into a fresh layout and pushes it as `repo:tag`; returns its digest.
    pub fn push(&self, image: &Image, repo_tag: &str) -> String {
        let layout = tempfile::tempdir().unwrap();
        let built = image.write_layout(layout.path(), "t");
        self.push_layout(layout.path(), "t", repo_tag);
        built.digest
    }

    /// Pushes a multi-platform index; returns the index digest.
    pub fn push_index(&self, images: &[Image], repo_tag: &str) -> String {
        let layout = tempfile::tempdir().unwrap();
        let built = image::write_index_layout(layout.path(), images, "t");
        self.push_layout(layout.path(), "t", repo_tag);
        built.digest
    }

    /// The digest of `repo:tag` as skopeo sees it: sha256 of the raw manifest.
    pub fn skopeo_digest(&self, repo_tag: &str) -> String {
        let mut args = vec!["inspect".to_string(), "--raw".into()];
        args.extend(self.skopeo_flags(""));
        args.push(format!("docker://{}/{repo_tag}", self.host));
        image::sha256(&skopeo(&args))
    }

    /// Where the registry keeps a blob on disk (to corrupt it in a test).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Deletes a manifest by digest, so a cursor can disappear.
    pub fn delete(&self, repo: &str, digest: &str) {
        let mut args = vec!["delete".to_string()];
        args.extend(self.skopeo_flags(""));
        args.push(format!("docker://{}/{repo}@{digest}", self.host));
        skopeo(&args);
    }
}

fn skopeo(args: &[String]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .env("HOME", env_home())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A directory for this test process under cargo's target/tmp; earlier runs' are removed.
fn scratch_dir(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dockhand-it");
    let mine = root.join(std::process::id().to_string());
    static CLEAN: std::sync::Once = std::sync::Once::new();
    CLEAN.call_once(|| {
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let pid: Option<i32> = e.file_name().to_str().and_then(|s| s.parse().ok());
                let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
                if !alive {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
    let dir = mine.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An empty HOME, so no user docker config leaks into the tests.
fn env_home() -> PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| scratch_dir("home")).clone()
}

/// A unique repository name for one test.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "it/{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// One run of a binary.
pub struct Run {
    bin: &'static str,
    args: Vec<String>,
    stdin: Vec<u8>,
    env: Vec<(String, String)>,
}

pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The docker CLI against the daemon ci/test.sh started (DOCKER_HOST); panics with a hint
/// when none answers.
pub fn docker(args: &[&str]) -> Vec<u8> {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {} failed (these tests need the Docker daemon ci/test.sh starts): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn check(request: &serde_json::Value) -> Outcome {
    Run::new("check").stdin_json(request).run()
}

impl Run {
    pub fn new(bin: &'static str) -> Run {
        Run {
            bin,
            args: Vec::new(),
            stdin: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Run {
        self.args.push(arg.into());
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Run {
        self.stdin = bytes.into();
        self
    }

    pub fn stdin_json(self, value: &serde_json::Value) -> Run {
        self.stdin(serde_json::to_vec(value).unwrap())
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Run {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn run(self) -> Outcome {
        let path = match self.bin {
            "check" => env!("CARGO_BIN_EXE_check"),
            "in" => env!("CARGO_BIN_EXE_in"),
            "out" => env!("CARGO_BIN_EXE_out"),
            other => panic!("no binary {other}"),
        };
        let mut command = Command::new(path);
        command
            .args(&self.args)
            .env_remove("RUST_LOG")
            .env_remove("SSL_CERT_FILE")
            .env_remove("DOCKER_CONFIG")
            .env("HOME", env_home())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = self.stdin.clone();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(o) => o.unwrap(),
            Err(_) => {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("{} {:?} did not finish within 180 s", self.bin, self.args);
            }
        };
        let _ = writer.join();
        Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Outcome {
    /// Exit 0, and stdout is exactly one JSON document.
    pub fn success(&self) -> serde_json::Value {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        one_json_document(&self.stdout)
    }

    /// Exit 1, nothing on stdout, no panic, and the error is one `error: ` line; returns it.
    pub fn failure(&self) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit 1\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(self.stdout.is_empty(), "stdout not empty: {}", self.stdout);
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.stderr);
        let last = self.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: "),
            "last stderr line is not the error: {}",
            self.stderr
        );
        assert_eq!(
            self.stderr
                .lines()
                .filter(|l| l.starts_with("error: "))
                .count(),
            1,
            "more than one error line: {}",
            self.stderr
        );
        last.to_string()
    }

    /// Everything the run printed, for "no secret anywhere" assertions.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub fn one_json_document(stdout: &str) -> serde_json::Value {
    let mut stream = serde_json::Deserializer::from_str(stdout).into_iter::<serde_json::Value>();
    let first = stream
        .next()
        .unwrap_or_else(|| panic!("no JSON on stdout: {stdout:?}"))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"));
    let rest = &stdout[stream.byte_offset()..];
    assert!(
        rest.trim().is_empty(),
        "more than one JSON document on stdout: {stdout:?}"
    );
    first
}
