//! The integration-test harness: real `docker-registry` processes in every flavour dockhand
//! supports, a token server, test images made in-process and pushed with `skopeo`, a
//! fault-injecting proxy, and a runner for the real binaries.
//!
//! Everything is started once per test process (on first use of [`registries`]) and lives
//! until it exits: registries are spawned from one long-lived thread with `PR_SET_PDEATHSIG`,
//! so they die with the tests; in-process servers run on the harness's tokio runtime.
//!
//! - [`registries`]: the five registries, the test CA, client certificate, token server.
//! - [`Registry`]: `push`, `push_v2s2`, `skopeo_digest`, `delete`, `source`, `client`, ...
//! - [`ImageBuilder`] / [`IndexBuilder`] ([`image`]): OCI layouts with known digests.
//! - [`FaultProxy`] ([`proxy`]): 5xx/429, resets, truncation, tag paging, request log.
//! - [`Hostile`] ([`hostile`]): a registry that misbehaves on purpose (echoes, floods, stalls).
//! - [`run`] / [`Run`] / [`Outcome`]: the binaries, with `success()` / `failure()` checks;
//!   [`Run::run_measured`] for time and peak RSS.
#![allow(dead_code)]

pub mod cloud;
pub mod cosign;
pub mod hostile;
pub mod http;
pub mod image;
pub mod pki;
pub mod proxy;
pub mod token;

use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use http::block_on;
// Re-exports for the test modules; not every module uses every one.
#[allow(unused_imports)]
pub use image::{
    Built, Compression, Entry, Image, ImageBuilder, IndexBuilder, Layout, Platform, AMD64, ARM64,
    ARM_V7,
};
#[allow(unused_imports)]
pub use proxy::{Fault, FaultProxy, Seen};
#[allow(unused_imports)]
pub use token::TokenServer;

/// The user of the `basic` and `token` registries.
pub const USER: &str = "dockhand";
/// Their password: special characters on purpose (URL, JSON, shell and base64 edge cases).
pub const PASSWORD: &str = "s3cr3t-P@ss_w0rd";

/// Longest any one command (binary under test, skopeo) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Plain HTTP, no auth.
    Plain,
    /// HTTPS, server certificate signed by the test CA.
    Tls,
    /// HTTPS requiring a client certificate signed by the test CA.
    Mtls,
    /// htpasswd basic auth over plain HTTP (distribution 2.8 accepts that; no TLS needed).
    Basic,
    /// Token auth against the in-process [`TokenServer`], over plain HTTP.
    Token,
}

impl Flavour {
    pub const ALL: [Flavour; 5] = [
        Flavour::Plain,
        Flavour::Tls,
        Flavour::Mtls,
        Flavour::Basic,
        Flavour::Token,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Plain => "plain",
            Flavour::Tls => "tls",
            Flavour::Mtls => "mtls",
            Flavour::Basic => "basic",
            Flavour::Token => "token",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Flavour::Tls | Flavour::Mtls)
    }
}

/// One running `docker-registry serve`.
pub struct Registry {
    /// Killed by PR_SET_PDEATHSIG when the tests end.
    child: Mutex<Child>,
    pub flavour: Flavour,
    pub port: u16,
    /// `127.0.0.1:PORT`
    pub host: String,
    /// Its config.yml, log and storage live here.
    pub dir: PathBuf,
    /// Credentials it requires (basic, token).
    pub username: Option<&'static str>,
    pub password: Option<&'static str>,
    /// The CA that signed its server certificate (tls, mtls).
    pub ca_cert_path: Option<PathBuf>,
    pub ca_pem: Option<String>,
    /// The client certificate and key it accepts (mtls).
    pub client_cert_path: Option<PathBuf>,
    pub client_key_path: Option<PathBuf>,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
    /// skopeo's `--cert-dir` layout: ca.crt (+ client.cert, client.key).
    skopeo_cert_dir: Option<PathBuf>,
}

/// Everything started once per test process.
pub struct Registries {
    pub dir: PathBuf,
    /// The test CA (signs the tls/mtls server certificates and the client certificate).
    pub ca_pem: String,
    pub ca_path: PathBuf,
    /// The test CA's key, for certificates the tests make with the openssl CLI.
    pub ca_key_path: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca_pem: String,
    pub other_ca_path: PathBuf,
    /// A client certificate and key signed by the test CA (what `mtls` accepts).
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub client_cert_path: PathBuf,
    pub client_key_path: PathBuf,
    /// /etc/ssl/certs/ca-certificates.crt plus the test CA: point SSL_CERT_FILE at it to
    /// simulate "the CA is in the system roots".
    pub bundle_with_ca: PathBuf,
    pub plain: Registry,
    pub tls: Registry,
    pub mtls: Registry,
    pub basic: Registry,
    pub token: Registry,
    pub token_server: TokenServer,
    /// How long start-up took.
    pub startup: Duration,
}

/// The older name of [`Registries`].
pub type Env = Registries;

static REGISTRIES: OnceLock<Registries> = OnceLock::new();

/// The shared registries, started on first use.
pub fn registries() -> &'static Registries {
    REGISTRIES.get_or_init(start)
}

/// The older name of [`registries`].
pub fn env() -> &'static Registries {
    registries()
}

impl Registries {
    pub fn all(&self) -> [&Registry; 5] {
        [&self.plain, &self.tls, &self.mtls, &self.basic, &self.token]
    }

    pub fn get(&self, flavour: Flavour) -> &Registry {
        match flavour {
            Flavour::Plain => &self.plain,
            Flavour::Tls => &self.tls,
            Flavour::Mtls => &self.mtls,
            Flavour::Basic => &self.basic,
            Flavour::Token => &self.token,
        }
    }

    /// PEM of a new CA unrelated to anything here (each call makes another one).
    pub fn unrelated_ca_pem(&self) -> String {
        pki::Ca::new("dockhand another unrelated ca").pem
    }
}

/// Spawns processes from a thread that never exits, so `PR_SET_PDEATHSIG` (which fires when
/// the spawning *thread* ends) only fires when the test process ends.
pub fn spawn(command: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                let parent = std::process::id() as libc::pid_t;
                for (mut command, reply) in rx {
                    unsafe {
                        command.pre_exec(move || {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            // The test process died before prctl took effect.
                            if libc::getppid() != parent {
                                libc::_exit(1);
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
            })
            .unwrap();
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    sender.lock().unwrap().send((command, tx)).unwrap();
    rx.recv().unwrap().expect("spawn a test process")
}

pub fn free_port() -> u16 {
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

/// The registry-specific parts of a config.yml.
struct Spec {
    flavour: Flavour,
    http_extra: String,
    extra: String,
}

fn start() -> Registries {
    let started = Instant::now();
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
    let ca_key_path = write("ca.key", &ca.key.serialize_pem());
    let other_ca_path = write("other-ca.crt", &other.pem);
    let server_cert = write("server.crt", &server.cert_pem);
    let server_key = write("server.key", &server.key_pem);
    let client_cert_path = write("client.crt", &client.cert_pem);
    let client_key_path = write("client.key", &client.key_pem);
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
    assert!(htpasswd.status.success(), "htpasswd failed: {htpasswd:?}");
    let htpasswd_path = write(
        "htpasswd",
        String::from_utf8(htpasswd.stdout).unwrap().trim(),
    );

    let token_server = TokenServer::start(&signer, USER, PASSWORD);

    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        server_cert.display(),
        server_key.display()
    );
    let mtls = format!("{tls}    clientcas:\n      - {}\n", ca_path.display());
    // distribution 2.8 serves htpasswd over plain HTTP without complaint (its docs ask for
    // TLS, the code does not), so `basic` stays plain like a typical loopback registry.
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
    let specs = [
        (Flavour::Plain, String::new(), String::new()),
        (Flavour::Tls, tls, String::new()),
        (Flavour::Mtls, mtls, String::new()),
        (Flavour::Basic, String::new(), basic),
        (Flavour::Token, String::new(), token_auth),
    ]
    .map(|(flavour, http_extra, extra)| Spec {
        flavour,
        http_extra,
        extra,
    });

    // Start all, then wait for all: they come up in parallel. A registry that lost its port
    // to another process between free_port() and its bind is started again on another.
    let mut pending: Vec<(Spec, Registry)> = specs
        .into_iter()
        .map(|spec| {
            let r = launch_registry(&dir, &spec);
            (spec, r)
        })
        .collect();
    let mut ready: Vec<Registry> = Vec::new();
    let mut attempts = 0;
    while !pending.is_empty() {
        attempts += 1;
        let mut retry = Vec::new();
        for (spec, mut registry) in pending {
            registry.fill_tls(&ca, &client, &cert_dir_tls, &cert_dir_mtls, &ca_path);
            registry.fill_tls_paths(&client_cert_path, &client_key_path);
            match registry.wait_ready() {
                Ok(()) => ready.push(registry),
                Err(e) if attempts < 3 && e.contains("address already in use") => {
                    let again = launch_registry(&dir, &spec);
                    retry.push((spec, again));
                }
                Err(e) => panic!("{e}"),
            }
        }
        pending = retry;
    }
    let mut take = |f: Flavour| {
        let i = ready.iter().position(|r| r.flavour == f).unwrap();
        ready.remove(i)
    };
    let registries = Registries {
        ca_pem: ca.pem.clone(),
        ca_path,
        ca_key_path,
        other_ca_pem: other.pem.clone(),
        other_ca_path,
        client_cert_pem: client.cert_pem.clone(),
        client_key_pem: client.key_pem.clone(),
        client_cert_path,
        client_key_path,
        bundle_with_ca,
        plain: take(Flavour::Plain),
        tls: take(Flavour::Tls),
        mtls: take(Flavour::Mtls),
        basic: take(Flavour::Basic),
        token: take(Flavour::Token),
        token_server,
        startup: started.elapsed(),
        dir,
    };
    eprintln!(
        "harness: 5 registries and a token server ready in {} ms ({})",
        registries.startup.as_millis(),
        registries.dir.display()
    );
    registries
}

fn launch_registry(root: &Path, spec: &Spec) -> Registry {
    let flavour = spec.flavour;
    let port = free_port();
    let dir = root.join(format!("registry-{}", flavour.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: dockhand-test-{}\n{}{}",
        dir.join("data").display(),
        flavour.name(),
        spec.http_extra,
        spec.extra
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut command = Command::new("docker-registry");
    command
        .arg("serve")
        .arg(dir.join("config.yml"))
        .env_remove("REGISTRY_HTTP_ADDR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = spawn(command);
    let (username, password) = match flavour {
        Flavour::Basic | Flavour::Token => (Some(USER), Some(PASSWORD)),
        _ => (None, None),
    };
    Registry {
        child: Mutex::new(child),
        flavour,
        port,
        host: format!("127.0.0.1:{port}"),
        dir,
        username,
        password,
        ca_cert_path: None,
        ca_pem: None,
        client_cert_path: None,
        client_key_path: None,
        client_cert_pem: None,
        client_key_pem: None,
        skopeo_cert_dir: None,
    }
}

impl Registry {
    fn fill_tls(
        &mut self,
        ca: &pki::Ca,
        client: &pki::Pair,
        cert_dir_tls: &Path,
        cert_dir_mtls: &Path,
        ca_path: &Path,
    ) {
        if self.flavour.is_tls() {
            self.ca_pem = Some(ca.pem.clone());
            self.ca_cert_path = Some(ca_path.to_path_buf());
        }
        match self.flavour {
            Flavour::Tls => self.skopeo_cert_dir = Some(cert_dir_tls.to_path_buf()),
            Flavour::Mtls => {
                self.skopeo_cert_dir = Some(cert_dir_mtls.to_path_buf());
                self.client_cert_pem = Some(client.cert_pem.clone());
                self.client_key_pem = Some(client.key_pem.clone());
            }
            _ => {}
        }
    }

    fn fill_tls_paths(&mut self, cert: &Path, key: &Path) {
        if self.flavour == Flavour::Mtls {
            self.client_cert_path = Some(cert.to_path_buf());
            self.client_key_path = Some(key.to_path_buf());
        }
    }

    /// Polls `GET /v2/` until the registry answers as a registry (any status, with its
    /// `Docker-Distribution-Api-Version` header), or fails with the log's tail.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = self.client();
        let url = self.url("/v2/");
        loop {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                return Err(format!(
                    "registry {} exited ({status}) on {}; log:\n{}",
                    self.flavour.name(),
                    self.host,
                    self.log_tail()
                ));
            }
            let probe = block_on(async {
                let r = client
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.headers().contains_key("docker-distribution-api-version") => Ok(()),
                    Ok(r) => Err(format!(
                        "answered {} without the registry header",
                        r.status()
                    )),
                    Err(e) => Err(format!("{e:?}")),
                }
            });
            let Err(last) = probe else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "registry {} did not become ready on {} ({last}); log:\n{}",
                    self.flavour.name(),
                    self.host,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The last 20 lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.flavour.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// `scheme://host` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.host)
    }

    /// `127.0.0.1:PORT/<name>`
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// `Some((user, password))` for basic and token.
    pub fn credentials(&self) -> Option<(&'static str, &'static str)> {
        self.username.zip(self.password)
    }

    /// `source.ca_certs` for this registry (`[]` when it is not TLS).
    pub fn ca_certs_json(&self) -> serde_json::Value {
        match &self.ca_pem {
            Some(pem) => serde_json::json!([{"domain": self.host, "cert": pem}]),
            None => serde_json::json!([]),
        }
    }

    /// `source.client_certs` for this registry (`[]` unless mtls).
    pub fn client_certs_json(&self) -> serde_json::Value {
        match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => {
                serde_json::json!([{"domain": self.host, "cert": cert, "key": key}])
            }
            _ => serde_json::json!([]),
        }
    }

    /// A `source` that reaches `repo:tag` here with everything it needs (CA, client
    /// certificate, credentials).
    pub fn source(&self, repo: &str, tag: &str) -> serde_json::Value {
        let mut source = serde_json::json!({"repository": self.repo(repo), "tag": tag});
        if self.ca_pem.is_some() {
            source["ca_certs"] = self.ca_certs_json();
        }
        if self.client_cert_pem.is_some() {
            source["client_certs"] = self.client_certs_json();
        }
        if let Some((u, p)) = self.credentials() {
            source["username"] = u.into();
            source["password"] = p.into();
        }
        source
    }

    /// An async reqwest client that trusts the test CA and, for mtls, presents the client
    /// certificate; no credentials, no proxies. Drive it with [`block_on`].
    pub fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .timeout(Duration::from_secs(60));
        if let Some(pem) = &self.ca_pem {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert_pem, &self.client_key_pem) {
            builder = builder.identity(
                reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap(),
            );
        }
        builder.build().unwrap()
    }

    /// skopeo's flags for this registry, as source/destination (`prefix` "src-"/"dest-") or
    /// for inspect/delete (`prefix` ""): TLS verification or cert dir, and credentials.
    pub fn skopeo_flags(&self, prefix: &str) -> Vec<String> {
        let mut flags = Vec::new();
        match &self.skopeo_cert_dir {
            Some(dir) => flags.push(format!("--{prefix}cert-dir={}", dir.display())),
            None => flags.push(format!("--{prefix}tls-verify=false")),
        }
        if let Some((u, p)) = self.credentials() {
            flags.push(format!("--{prefix}creds={u}:{p}"));
        }
        flags
    }

    /// Pushes an image, index, or OCI layout (directory holding exactly one manifest) as
    /// `repo:tag` with `skopeo copy --all --preserve-digests`; returns the digest the
    /// registry now has (from `--digestfile`), after checking it is the layout's own.
    pub fn push<P: Pushable + ?Sized>(&self, source: &P, repo_tag: &str) -> String {
        let src = source.push_source();
        let digest = self.copy(&src, repo_tag, &["--all", "--preserve-digests"]);
        if let Some(expected) = &src.expected {
            assert_eq!(
                &digest,
                expected,
                "skopeo changed the digest pushing {} to {repo_tag}",
                src.dir.display()
            );
        }
        digest
    }

    /// Pushes the layout's `layout_tag` (a layout may hold several) as `repo:tag`.
    pub fn push_layout(&self, layout: &Path, layout_tag: &str, repo_tag: &str) -> String {
        let src = PushSource {
            dir: layout.to_path_buf(),
            reference: Some(layout_tag.into()),
            expected: None,
            is_index: false,
            _keep: None,
        };
        self.copy(&src, repo_tag, &["--all", "--preserve-digests"])
    }

    /// Pushes converted by skopeo to Docker schema 2 (`--format v2s2`): a new manifest, so
    /// a new digest, returned as the registry has it.
    pub fn push_v2s2<P: Pushable + ?Sized>(&self, source: &P, repo_tag: &str) -> String {
        let src = source.push_source();
        let all: &[&str] = if src.is_index {
            &["--all", "--format=v2s2"]
        } else {
            &["--format=v2s2"]
        };
        self.copy(&src, repo_tag, all)
    }

    /// The older name of [`Registry::push_v2s2`].
    pub fn push_docker_v2(&self, image: &ImageBuilder, repo_tag: &str) -> String {
        self.push_v2s2(image, repo_tag)
    }

    /// Pushes a multi-platform index over `images`; returns the index digest.
    pub fn push_index(&self, images: &[ImageBuilder], repo_tag: &str) -> String {
        let index = images
            .iter()
            .fold(IndexBuilder::new(), |i, image| i.image(image.clone()));
        self.push(&index, repo_tag)
    }

    fn copy(&self, src: &PushSource, repo_tag: &str, extra: &[&str]) -> String {
        let digest_file = tempfile::NamedTempFile::new().unwrap();
        let mut args = vec!["copy".to_string(), "--quiet".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("--digestfile={}", digest_file.path().display()));
        args.extend(self.skopeo_flags("dest-"));
        args.push(match &src.reference {
            Some(r) => format!("oci:{}:{r}", src.dir.display()),
            None => format!("oci:{}", src.dir.display()),
        });
        args.push(format!("docker://{}/{repo_tag}", self.host));
        skopeo(&args);
        let digest = std::fs::read_to_string(digest_file.path()).unwrap();
        let digest = digest.trim().to_string();
        assert!(
            digest.starts_with("sha256:"),
            "skopeo wrote no digest: {digest:?}"
        );
        digest
    }

    /// `skopeo inspect --raw` of `repo:tag` or `repo@digest`: the manifest or index bytes.
    pub fn skopeo_raw(&self, reference: &str) -> Vec<u8> {
        let mut args = vec!["inspect".to_string(), "--raw".into()];
        args.extend(self.skopeo_flags(""));
        args.push(format!("docker://{}/{reference}", self.host));
        skopeo(&args)
    }

    /// The digest of `repo:tag` as skopeo sees it: sha256 of the raw manifest (for an
    /// index, of the index itself).
    pub fn skopeo_digest(&self, reference: &str) -> String {
        image::sha256(&self.skopeo_raw(reference))
    }

    /// Whether `repo:tag` / `repo@digest` resolves (skopeo inspect --raw succeeds).
    pub fn exists(&self, reference: &str) -> bool {
        let mut args = vec!["inspect".to_string(), "--raw".into()];
        args.extend(self.skopeo_flags(""));
        args.push(format!("docker://{}/{reference}", self.host));
        skopeo_output(&args).status.success()
    }

    /// Deletes a manifest by digest (every tag pointing at it goes too), so a cursor can
    /// disappear.
    pub fn delete(&self, repo: &str, digest: &str) {
        let mut args = vec!["delete".to_string()];
        args.extend(self.skopeo_flags(""));
        args.push(format!("docker://{}/{repo}@{digest}", self.host));
        skopeo(&args);
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
}

/// An OCI layout ready for `skopeo copy`.
pub struct PushSource {
    pub dir: PathBuf,
    /// The layout's ref name, or `None` when it holds exactly one manifest.
    pub reference: Option<String>,
    /// The digest the push must keep.
    pub expected: Option<String>,
    pub is_index: bool,
    /// A temporary layout kept alive for the push.
    _keep: Option<Layout>,
}

/// What [`Registry::push`] accepts: builders, layouts, and layout directories.
pub trait Pushable {
    fn push_source(&self) -> PushSource;
}

fn from_layout(layout: Layout) -> PushSource {
    PushSource {
        dir: layout.path().to_path_buf(),
        reference: Some(layout.tag.clone()),
        expected: Some(layout.built.digest.clone()),
        is_index: layout.built.media_type == image::OCI_INDEX,
        _keep: Some(layout),
    }
}

impl Pushable for ImageBuilder {
    fn push_source(&self) -> PushSource {
        from_layout(self.layout())
    }
}

impl Pushable for IndexBuilder {
    fn push_source(&self) -> PushSource {
        from_layout(self.layout())
    }
}

impl Pushable for Layout {
    fn push_source(&self) -> PushSource {
        PushSource {
            dir: self.path().to_path_buf(),
            reference: Some(self.tag.clone()),
            expected: Some(self.built.digest.clone()),
            is_index: self.built.media_type == image::OCI_INDEX,
            _keep: None,
        }
    }
}

impl Pushable for Path {
    fn push_source(&self) -> PushSource {
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.join("index.json"))
                .unwrap_or_else(|e| panic!("{}: not an OCI layout: {e}", self.display())),
        )
        .unwrap();
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            manifests.len(),
            1,
            "{} holds {} manifests: use push_layout with a tag",
            self.display(),
            manifests.len()
        );
        PushSource {
            dir: self.to_path_buf(),
            reference: None,
            expected: manifests[0]["digest"].as_str().map(str::to_string),
            is_index: manifests[0]["mediaType"] == image::OCI_INDEX,
            _keep: None,
        }
    }
}

impl Pushable for PathBuf {
    fn push_source(&self) -> PushSource {
        self.as_path().push_source()
    }
}

impl Pushable for tempfile::TempDir {
    fn push_source(&self) -> PushSource {
        self.path().push_source()
    }
}

/// Runs skopeo (with an empty HOME, no policy checks, no host registries.conf) and returns
/// stdout; panics with stderr when it fails.
pub fn skopeo(args: &[String]) -> Vec<u8> {
    let out = skopeo_output(args);
    assert!(
        out.status.success(),
        "skopeo {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs skopeo and returns whatever happened (for expected failures).
pub fn skopeo_output(args: &[String]) -> Output {
    let home = env_home();
    let registries_conf = home.join("registries.conf");
    if !registries_conf.exists() {
        std::fs::write(&registries_conf, "").unwrap();
    }
    let mut command = Command::new("skopeo");
    command
        .arg("--insecure-policy")
        .args(args)
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &home)
        .env("CONTAINERS_REGISTRIES_CONF", &registries_conf)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG");
    run_with_timeout(command, &[], COMMAND_TIMEOUT, "skopeo")
}

/// A directory for this test process under cargo's target/tmp; earlier runs' are removed.
pub fn scratch_dir(name: &str) -> PathBuf {
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
pub fn env_home() -> PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| scratch_dir("home")).clone()
}

/// A unique repository name for one test: `it/<name>-<pid>-<n>`.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "it/{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The docker CLI against the daemon ci/test.sh started (DOCKER_HOST); panics with a hint
/// when none answers.
pub fn docker(args: &[&str]) -> Vec<u8> {
    let mut command = Command::new("docker");
    command.args(args);
    let out = run_with_timeout(command, &[], COMMAND_TIMEOUT, "docker");
    assert!(
        out.status.success(),
        "docker {} failed (these tests need the Docker daemon ci/test.sh starts): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `command` with `stdin`, killing it and panicking after `timeout`.
fn run_with_timeout(mut command: Command, stdin: &[u8], timeout: Duration, what: &str) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(timeout) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what} did not finish within {} s", timeout.as_secs());
        }
    };
    let _ = writer.join();
    output
}

/// Runs `bin` (`check`, `in` or `out`) with `stdin` and no arguments.
pub fn run(bin: &'static str, stdin: &str) -> Outcome {
    Run::new(bin).stdin(stdin).run()
}

/// `check` with a JSON request.
pub fn check(request: &serde_json::Value) -> Outcome {
    Run::new("check").stdin_json(request).run()
}

/// One run of a binary: `Run::new("in").arg(dest).stdin_json(&req).env("K", "v").run()`.
///
/// The environment is the test process's minus RUST_LOG, SSL_CERT_FILE, SSL_CERT_DIR,
/// DOCKER_CONFIG and proxy variables, with HOME an empty directory; `env` adds to it.
pub struct Run {
    bin: &'static str,
    args: Vec<String>,
    stdin: Vec<u8>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    dir: Option<PathBuf>,
    timeout: Duration,
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn new(bin: &'static str) -> Run {
        Run {
            bin,
            args: Vec::new(),
            stdin: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            dir: None,
            timeout: COMMAND_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Run {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Run {
        self.args.extend(args.into_iter().map(Into::into));
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

    pub fn env_remove(mut self, key: &str) -> Run {
        self.env_remove.push(key.into());
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Run {
        self.dir = Some(dir.into());
        self
    }

    /// Shorter than the default 120 s; longer is capped at 120 s.
    pub fn timeout(mut self, timeout: Duration) -> Run {
        self.timeout = timeout.min(COMMAND_TIMEOUT);
        self
    }

    pub fn path(bin: &str) -> &'static str {
        match bin {
            "check" => env!("CARGO_BIN_EXE_check"),
            "in" => env!("CARGO_BIN_EXE_in"),
            "out" => env!("CARGO_BIN_EXE_out"),
            other => panic!("no binary {other}"),
        }
    }

    pub fn run(self) -> Outcome {
        let command = self.command();
        let what = format!("{} {:?}", self.bin, self.args);
        let output = run_with_timeout(command, &self.stdin, self.timeout, &what);
        Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The command [`Run::run`] starts: the binary, its arguments and environment.
    fn command(&self) -> Command {
        let mut command = Command::new(Run::path(self.bin));
        command.args(&self.args).env("HOME", env_home());
        for key in [
            "RUST_LOG",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "DOCKER_CONFIG",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ] {
            command.env_remove(key);
        }
        for key in &self.env_remove {
            command.env_remove(key);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }

    /// Runs the binary as [`Run::run`] does, but measured and fenced instead of capped at
    /// [`COMMAND_TIMEOUT`]: it is killed once it has run for `limit` (which may exceed the
    /// default) or once its resident set passes `rss_cap_kib`, so a runaway cannot take the
    /// machine. Reports how long it ran, its peak RSS (`wait4`'s `ru_maxrss`), and why it
    /// was killed, if it was.
    pub fn run_measured(self, limit: Duration, rss_cap_kib: u64) -> Measured {
        let mut command = self.command();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        let mut pipe = child.stdin.take().unwrap();
        let input = self.stdin.clone();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = r.read_to_end(&mut bytes);
                bytes
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let pid = child.id() as libc::pid_t;
        // Reaped here with wait4, never through `child`: polling with WNOHANG keeps the pid
        // ours (a zombie at worst) whenever it is killed.
        drop(child);
        let mut killed = None;
        let mut status: libc::c_int = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                break;
            }
            assert!(
                reaped == 0,
                "wait4 failed: {}",
                std::io::Error::last_os_error()
            );
            if killed.is_none() {
                let rss = current_rss_kib(pid);
                let why = if started.elapsed() >= limit {
                    Some(format!("still running after {} s", limit.as_secs()))
                } else if rss > rss_cap_kib {
                    Some(format!(
                        "resident set reached {} MiB (cap {} MiB)",
                        rss / 1024,
                        rss_cap_kib / 1024
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    killed = Some(why);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let elapsed = started.elapsed();
        let _ = writer.join();
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        Measured {
            outcome: Outcome {
                code,
                stdout: String::from_utf8_lossy(&stdout.join().unwrap()).into_owned(),
                stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
            },
            elapsed,
            peak_rss_kib: usage.ru_maxrss as u64,
            killed,
        }
    }
}

/// What [`Run::run_measured`] saw.
#[derive(Debug)]
pub struct Measured {
    pub outcome: Outcome,
    /// From start to exit (or to the kill).
    pub elapsed: Duration,
    /// The child's peak resident set, KiB.
    pub peak_rss_kib: u64,
    /// Why the harness killed it, when it did.
    pub killed: Option<String>,
}

/// VmRSS of a live process, KiB (0 when it cannot be read).
fn current_rss_kib(pid: libc::pid_t) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Outcome {
    /// Exit 0, and stdout is exactly one JSON document; returns it.
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

    /// Exit 1, nothing on stdout, no panic, and the error is one `error: ` line, the last
    /// line of stderr; returns that line.
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

/// Parses `stdout` as exactly one JSON document (whitespace around it allowed).
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
