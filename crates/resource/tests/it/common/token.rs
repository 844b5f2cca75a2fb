//! A small token server for the registry's `auth.token` mode
//! (<https://distribution.github.io/distribution/spec/auth/token/>): HTTP Basic credentials in,
//! an ES256 JWT out, signed by a certificate that is the registry's `rootcertbundle` and sent
//! in the `x5c` header, which is how distribution 2.8 finds the key.

use std::io::BufReader;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::http::{read_head, respond};
use super::pki::Pair;

pub const SERVICE: &str = "dockhand-test-registry";
pub const ISSUER: &str = "dockhand-test-issuer";

pub struct TokenServer {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    scopes: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TokenServer {
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn start(signer: &Pair, username: &str, password: &str) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let scopes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen_scopes = scopes.clone();
        let rng = ring::rand::SystemRandom::new();
        let key = Arc::new(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &signer.key_pkcs8, &rng)
                .unwrap(),
        );
        let x5c = base64::engine::general_purpose::STANDARD.encode(&signer.cert_der);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        );
        let subject = username.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let key = key.clone();
                let x5c = x5c.clone();
                let expected = expected.clone();
                let subject = subject.clone();
                let seen_scopes = seen_scopes.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    let Some(head) = read_head(&mut reader) else {
                        return;
                    };
                    seen_scopes.lock().unwrap().extend(head.query("scope"));
                    let authorized = match head.header("authorization") {
                        None => false,
                        Some(a) if a == expected => true,
                        Some(_) => {
                            respond(&mut stream, 401, &[], br#"{"details":"bad credentials"}"#);
                            return;
                        }
                    };
                    let access: Vec<serde_json::Value> = if authorized {
                        head.query("scope")
                            .iter()
                            .filter_map(|scope| {
                                let (kind, rest) = scope.split_once(':')?;
                                let (name, actions) = rest.rsplit_once(':')?;
                                Some(serde_json::json!({
                                    "type": kind,
                                    "name": name,
                                    "actions": actions.split(',').collect::<Vec<_>>(),
                                }))
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
                    let claims = serde_json::json!({
                        "iss": ISSUER,
                        "sub": if authorized { subject.as_str() } else { "" },
                        "aud": SERVICE,
                        "exp": now + 300,
                        "nbf": now - 10,
                        "iat": now,
                        "jti": format!("{now}-{}", rand_suffix()),
                        "access": access,
                    });
                    let b64 = |v: &serde_json::Value| {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(serde_json::to_vec(v).unwrap())
                    };
                    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
                    let rng = ring::rand::SystemRandom::new();
                    let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
                    let jwt = format!(
                        "{signing_input}.{}",
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref())
                    );
                    let body = serde_json::json!({
                        "token": jwt,
                        "access_token": jwt,
                        "expires_in": 300,
                    });
                    respond(
                        &mut stream,
                        200,
                        &[("Content-Type", "application/json".into())],
                        &serde_json::to_vec(&body).unwrap(),
                    );
                });
            }
        });
        TokenServer {
            port,
            requests,
            scopes,
        }
    }

    /// How many token requests named a scope on `repository`.
    pub fn requests_for(&self, repository: &str) -> usize {
        let needle = format!("repository:{repository}:");
        self.scopes
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.starts_with(&needle))
            .count()
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}
