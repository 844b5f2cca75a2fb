//! ECR: moto's server plays the ECR and STS APIs and issues the token (`AWS` /
//! `<account>-auth-token`); a real `docker-registry` with htpasswd for exactly that user then
//! accepts it. `check` and `in` must get there with nothing but `aws_*` fields.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, FaultProxy, Image, Run};

const ACCOUNT: &str = "123456789012";
const ROLE_ACCOUNT: &str = "210987654321";

struct Ecr {
    moto_port: u16,
    /// `host:port` of the htpasswd registry that accepts both accounts' tokens.
    registry: String,
    _children: Mutex<Vec<Child>>,
    _dir: PathBuf,
}

fn wait_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status})");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn moto_available() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `None` (with a loud note) only outside CI when moto is not installed.
fn ecr() -> Option<&'static Ecr> {
    static ECR: OnceLock<Option<Ecr>> = OnceLock::new();
    ECR.get_or_init(|| {
        if !moto_available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto is not installed: ci/test.sh installs it (pip install 'moto[server]')"
            );
            eprintln!("SKIPPING ECR tests: moto is not installed (ci/test.sh installs it)");
            return None;
        }
        let dir = common::scratch_dir("ecr");
        let moto_port = common::free_port();
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &moto_port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut moto = common::spawn(command);
        wait_port(moto_port, "moto_server", &mut moto);

        let registry_port = common::free_port();
        let registry = start_registry(&dir, "default", registry_port, ACCOUNT);
        wait_port(
            registry_port,
            "docker-registry",
            &mut registry.lock().unwrap(),
        );
        let child = registry.into_inner().unwrap();
        Some(Ecr {
            moto_port,
            registry: format!("127.0.0.1:{registry_port}"),
            _children: Mutex::new(vec![moto, child]),
            _dir: dir,
        })
    })
    .as_ref()
}

fn start_registry(dir: &std::path::Path, name: &str, port: u16, account: &str) -> Mutex<Child> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", "AWS", &format!("{account}-auth-token")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let htpasswd = dir.join(format!("htpasswd-{name}"));
    std::fs::write(&htpasswd, out.stdout).unwrap();
    let config = dir.join(format!("registry-{name}.yml"));
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: ecr-test\nauth:\n  htpasswd:\n    realm: ecr-test\n    path: {}\n",
            dir.join(format!("data-{name}")).display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("registry-{name}.log"))).unwrap();
    let mut command = Command::new("docker-registry");
    command
        .arg("serve")
        .arg(&config)
        .env_remove("REGISTRY_HTTP_ADDR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    Mutex::new(common::spawn(command))
}

/// Pushes a fresh image as `repo:tag` with the token's credentials; returns its digest.
fn push(registry: &str, account: &str, repo: &str, tag: &str) -> String {
    push_image(Image::marked(repo), registry, account, repo, tag)
}

fn push_image(image: Image, registry: &str, account: &str, repo: &str, tag: &str) -> String {
    let layout = image.layout();
    let digest_file = tempfile::NamedTempFile::new().unwrap();
    common::skopeo(&[
        "copy".into(),
        "--quiet".into(),
        "--dest-tls-verify=false".into(),
        format!("--dest-creds=AWS:{account}-auth-token"),
        format!("--digestfile={}", digest_file.path().display()),
        format!("oci:{}", layout.path().display()),
        format!("docker://{registry}/{repo}:{tag}"),
    ]);
    std::fs::read_to_string(digest_file.path())
        .unwrap()
        .trim()
        .to_string()
}

fn run(bin: &'static str, ecr: &Ecr, request: &Value) -> common::Outcome {
    let mut run = Run::new(bin)
        .stdin_json(request)
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", ecr.moto_port),
        )
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    if bin == "in" {
        run = run.arg(
            common::scratch_dir(&common::unique("ecr-in"))
                .join("dest")
                .display()
                .to_string(),
        );
    }
    run.run()
}

#[test]
fn check_and_in_with_static_keys_and_a_session_token() {
    let Some(ecr) = ecr() else { return };
    let repo = common::unique("ecr-static");
    let digest = push(&ecr.registry, ACCOUNT, &repo, "1.0");
    let source = json!({
        "repository": format!("{}/{repo}", ecr.registry),
        "tag": "1.0",
        "aws_region": "us-east-1",
        "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
        "aws_secret_access_key": "very-secret-access-key",
        "aws_session_token": "very-secret-session-token",
    });
    let out = run("check", ecr, &json!({"source": source}));
    assert_eq!(out.success(), json!([{"tag": "1.0", "digest": digest}]));
    for secret in [
        "very-secret-access-key",
        "very-secret-session-token",
        "-auth-token",
    ] {
        assert!(!out.all_output().contains(secret), "{secret} leaked");
    }
    let got = run(
        "in",
        ecr,
        &json!({"source": source, "version": {"tag": "1.0", "digest": digest}}),
    )
    .success();
    assert_eq!(got["version"]["digest"], digest.as_str());
}

#[test]
fn the_default_credential_chain_and_an_account_id() {
    let Some(ecr) = ecr() else { return };
    let repo = common::unique("ecr-chain");
    let digest = push(&ecr.registry, ACCOUNT, &repo, "latest");
    let source = json!({
        "repository": format!("{}/{repo}", ecr.registry),
        "aws_region": "us-east-1",
        "aws_account_id": ACCOUNT,
    });
    let out = Run::new("check")
        .stdin_json(&json!({"source": source}))
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", ecr.moto_port),
        )
        .env("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT")
        .env("AWS_SECRET_ACCESS_KEY", "from-the-environment")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .run();
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
}

/// A second registry that accepts only `account`'s token (killed when dropped).
struct AccountRegistry {
    host: String,
    child: Mutex<Child>,
}

impl AccountRegistry {
    fn start(name: &str, account: &str) -> AccountRegistry {
        let dir = common::scratch_dir(&common::unique(name));
        let port = common::free_port();
        let child = start_registry(&dir, name, port, account);
        wait_port(port, "docker-registry", &mut child.lock().unwrap());
        AccountRegistry {
            host: format!("127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for AccountRegistry {
    fn drop(&mut self) {
        let _ = self.child.lock().unwrap().kill();
    }
}

#[test]
fn an_assumed_role_gets_its_accounts_token() {
    let Some(ecr) = ecr() else { return };
    // A registry that only accepts the role account's token.
    let registry = AccountRegistry::start("ecr-role", ROLE_ACCOUNT);
    let host = registry.host.clone();
    let repo = common::unique("ecr-role");
    let digest = push(&host, ROLE_ACCOUNT, &repo, "latest");
    let source = json!({
        "repository": format!("{host}/{repo}"),
        "aws_region": "eu-west-1",
        "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
        "aws_secret_access_key": "very-secret-access-key",
        "aws_role_arn": format!("arn:aws:iam::{ROLE_ACCOUNT}:role/pusher"),
    });
    let out = run("check", ecr, &json!({"source": source}));
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
}

#[test]
fn roles_are_assumed_in_order_and_the_last_ones_account_gets_the_token() {
    let Some(ecr) = ecr() else { return };
    let registry = AccountRegistry::start("ecr-chain-roles", ROLE_ACCOUNT);
    let repo = common::unique("ecr-roles");
    let digest = push(&registry.host, ROLE_ACCOUNT, &repo, "latest");
    let first = format!("arn:aws:iam::{ACCOUNT}:role/jump");
    let last = format!("arn:aws:iam::{ROLE_ACCOUNT}:role/pusher");
    let source = |role_arn: &str, role_arns: &[&str]| {
        json!({
            "repository": format!("{}/{repo}", registry.host),
            "aws_region": "eu-west-1",
            "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
            "aws_secret_access_key": "very-secret-access-key",
            "aws_role_arn": role_arn,
            "aws_role_arns": role_arns,
        })
    };
    let out = run("check", ecr, &json!({"source": source(&first, &[&last])}));
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
    // The other way round the first account's token is issued, which this registry refuses.
    let err = run("check", ecr, &json!({"source": source(&last, &[&first])})).failure();
    assert!(err.contains("unauthorized"), "{err}");
}

#[test]
fn aws_account_id_names_whose_registry_token_is_asked_for() {
    let Some(ecr) = ecr() else { return };
    let registry = AccountRegistry::start("ecr-account", ROLE_ACCOUNT);
    let repo = common::unique("ecr-account");
    let digest = push(&registry.host, ROLE_ACCOUNT, &repo, "latest");
    let source = |account: Option<&str>| {
        let mut s = json!({
            "repository": format!("{}/{repo}", registry.host),
            "aws_region": "us-east-1",
            "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
            "aws_secret_access_key": "very-secret-access-key",
        });
        if let Some(a) = account {
            s["aws_account_id"] = json!(a);
        }
        s
    };
    let out = run("check", ecr, &json!({"source": source(Some(ROLE_ACCOUNT))}));
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
    // Without it, the caller's own account's token: refused here.
    let err = run("check", ecr, &json!({"source": source(None)})).failure();
    assert!(err.contains("unauthorized"), "{err}");
}

/// registry-image-resource's `aws_ecr_registry_id` (types.go `AWSECRRegistryId`, and
/// types_test.go "should include a registry id as part of the request for an authorization
/// token when specified"): the registry whose token `GetAuthorizationToken` is asked for. It
/// wins over `aws_account_id` for the repository's registry.
#[test]
fn aws_ecr_registry_id_names_the_registry_whose_token_is_asked_for() {
    let Some(ecr) = ecr() else { return };
    let registry = AccountRegistry::start("ecr-registry-id", ROLE_ACCOUNT);
    let repo = common::unique("ecr-registry-id");
    let digest = push(&registry.host, ROLE_ACCOUNT, &repo, "latest");
    let source = |fields: Value| {
        let mut s = json!({
            "repository": format!("{}/{repo}", registry.host),
            "aws_region": "us-east-1",
            "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
            "aws_secret_access_key": "very-secret-access-key",
        });
        s.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        s
    };
    for fields in [
        json!({"aws_ecr_registry_id": ROLE_ACCOUNT}),
        json!({"aws_ecr_registry_id": ROLE_ACCOUNT, "aws_account_id": ACCOUNT}),
    ] {
        let out = run("check", ecr, &json!({"source": source(fields.clone())}));
        assert_eq!(
            out.success(),
            json!([{"tag": "latest", "digest": digest}]),
            "{fields}"
        );
        assert!(!out.all_output().contains("-auth-token"));
        assert!(!out.stderr.contains("unknown field"), "{}", out.stderr);
    }
    // Another registry id gets that account's token, which this registry refuses.
    let err = run(
        "check",
        ecr,
        &json!({"source": source(json!({"aws_ecr_registry_id": ACCOUNT}))}),
    )
    .failure();
    assert!(err.contains("unauthorized"), "{err}");
}

#[test]
fn one_token_per_process_however_many_requests_need_it() {
    let Some(ecr) = ecr() else { return };
    let repo = common::unique("ecr-cache");
    let digest = push(&ecr.registry, ACCOUNT, &repo, "latest");
    // Count the ECR API calls at a proxy in front of moto.
    let api = FaultProxy::start(&format!("127.0.0.1:{}", ecr.moto_port));
    let source = json!({
        "repository": format!("{}/{repo}", ecr.registry),
        "aws_region": "us-east-1",
        "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
        "aws_secret_access_key": "very-secret-access-key",
    });
    // `in` asks the registry many times (ping, manifest, config, layers), and the token
    // once.
    let got = Run::new("in")
        .arg(
            common::scratch_dir(&common::unique("ecr-cache"))
                .join("dest")
                .display()
                .to_string(),
        )
        .stdin_json(&json!({"source": source, "version": {"tag": "latest", "digest": digest}}))
        .env("AWS_ENDPOINT_URL", format!("http://{}", api.host()))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .run();
    got.success();
    let token_calls = api
        .seen()
        .iter()
        .filter(|s| {
            s.header("x-amz-target")
                .is_some_and(|t| t.ends_with("GetAuthorizationToken"))
        })
        .count();
    assert_eq!(token_calls, 1, "{:?}", api.seen());
}

#[test]
fn an_unreachable_token_service_is_one_line_naming_ecr() {
    let Some(ecr) = ecr() else { return };
    let source = json!({
        "repository": format!("{}/anything", ecr.registry),
        "aws_region": "us-east-1",
        "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
        "aws_secret_access_key": "very-secret-access-key",
    });
    let out = Run::new("check")
        .stdin_json(&json!({"source": source}))
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .run();
    let err = out.failure();
    assert!(
        err.contains("cannot get ECR credentials") && err.contains("us-east-1"),
        "{err}"
    );
    assert!(!out.all_output().contains("very-secret-access-key"));
}

#[test]
fn aws_field_errors_name_the_field() {
    for (source, field) in [
        (
            json!({"repository": "r", "aws_access_key_id": "AKIA"}),
            "source.aws_secret_access_key",
        ),
        (
            json!({"repository": "r", "aws_secret_access_key": "s"}),
            "source.aws_access_key_id",
        ),
        (
            json!({"repository": "r", "aws_region": "Not A Region"}),
            "source.aws_region",
        ),
        (
            json!({"repository": "r", "aws_account_id": "12"}),
            "source.aws_account_id",
        ),
        (
            json!({"repository": "r", "aws_role_arns": ["pusher"]}),
            "source.aws_role_arns[0]",
        ),
        (
            json!({"repository": "r", "aws_ecr_registry_id": "not-an-id"}),
            "source.aws_ecr_registry_id",
        ),
    ] {
        let err = common::check(&json!({"source": source})).failure();
        assert!(err.starts_with(&format!("error: {field}:")), "{err}");
    }
}

#[test]
fn out_builds_from_an_ecr_base_image_and_pushes_with_a_token() {
    let Some(ecr) = ecr() else { return };
    let base = common::unique("ecr-base");
    push_image(Image::busybox(), &ecr.registry, ACCOUNT, &base, "latest");
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("ctx")).unwrap();
    std::fs::write(
        src.path().join("ctx/Dockerfile"),
        format!(
            "ARG BASE={}/{base}\nFROM ${{BASE}}:latest\nRUN echo from-ecr > /ecr\n",
            ecr.registry
        ),
    )
    .unwrap();
    let app = common::unique("ecr-app");
    let source = json!({
        "repository": format!("{}/{app}", ecr.registry),
        "aws_region": "us-east-1",
        "aws_access_key_id": "AKIAEXAMPLEEXAMPLE",
        "aws_secret_access_key": "very-secret-access-key",
    });
    let out = Run::new("out")
        .arg(src.path().display().to_string())
        .stdin_json(&json!({"source": source, "params": {"build": "ctx", "tag_as_latest": true}}))
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", ecr.moto_port),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .run();
    assert!(out.stderr.contains("using an ECR token"), "{}", out.stderr);
    let result = out.success();
    assert!(!out.all_output().contains("-auth-token"));
    let digest = result["version"]["digest"].as_str().unwrap().to_string();
    let pushed = common::skopeo(&[
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        format!("--creds=AWS:{ACCOUNT}-auth-token"),
        format!("docker://{}/{app}:latest", ecr.registry),
    ]);
    assert_eq!(common::image::sha256(&pushed), digest);
}

#[test]
fn the_ecr_example_payload() {
    let Some(ecr) = ecr() else { return };
    let digest = push(&ecr.registry, ACCOUNT, "team/app", "latest");
    let text = crate::examples::payload("ecr/check.json", &ecr.registry, None).replace(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        &ecr.registry,
    );
    let out = Run::new("check")
        .stdin(text)
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", ecr.moto_port),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .run();
    assert_eq!(out.success(), json!([{"tag": "latest", "digest": digest}]));
}
