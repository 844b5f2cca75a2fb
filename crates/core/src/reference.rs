//! Image names the way Docker reads them.
//!
//! A repository is `[registry/]path`: the first `/`-separated segment is the registry when it
//! holds a `.` or a `:` or is `localhost`, otherwise the repository lives on Docker Hub, where a
//! single segment gets the `library/` prefix. Grammar from the distribution reference spec
//! (<https://github.com/distribution/reference/blob/main/reference.go>).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Where Docker Hub's registry API really lives.
pub(crate) const DOCKER_HUB: &str = "registry-1.docker.io";
const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Why a name was refused; the caller adds which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must not contain a tag or digest ({found:?}); put the tag in source.tag")]
    HasTag { found: String },
    #[error("has an invalid registry host {host:?}")]
    Host { host: String },
    #[error(
        "has an invalid path component {component:?} (lowercase letters, digits and . _ - only)"
    )]
    Component { component: String },
    #[error("is longer than 255 characters")]
    TooLong,
    #[error("{tag:?} is not a valid tag (letters, digits, _ . - only, at most 128, not starting with . or -)")]
    Tag { tag: String },
    #[error("{digest:?} is not a valid digest (expected sha256:<64 hex digits>)")]
    Digest { digest: String },
}

/// A registry host, with its port when one was given (`registry.example.com:5000`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Host(String);

impl Host {
    pub(crate) fn parse(s: &str) -> Result<Host, NameError> {
        let bad = || NameError::Host {
            host: s.to_string(),
        };
        if s.is_empty() || s.len() > 255 {
            return Err(bad());
        }
        let (name, port) = split_host_port(s);
        if let Some(port) = port {
            if port.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
        }
        if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            inner.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        } else {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if !name.split('.').all(label_ok) {
                return Err(bad());
            }
        }
        let lowered = s.to_ascii_lowercase();
        if DOCKER_HUB_ALIASES.contains(&lowered.as_str()) {
            return Ok(Host(DOCKER_HUB.to_string()));
        }
        Ok(Host(lowered))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The host name without the port (brackets of an IPv6 literal kept).
    pub(crate) fn hostname(&self) -> &str {
        split_host_port(&self.0).0
    }

    pub(crate) fn is_docker_hub(&self) -> bool {
        self.0 == DOCKER_HUB
    }

    /// The IP address when the host is a literal one.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        let name = self.hostname();
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        name.parse().ok()
    }

    /// Loopback registries speak plain HTTP without configuration, as with the Docker daemon.
    pub(crate) fn is_loopback(&self) -> bool {
        self.hostname() == "localhost" || self.ip().is_some_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => match s[end + 1..].strip_prefix(':') {
                Some(port) => (&s[..=end], Some(port)),
                None => (s, None),
            },
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (s, None),
    }
}

/// A repository on a registry: `registry-1.docker.io` + `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Repository {
    host: Host,
    path: String,
}

impl Repository {
    pub(crate) fn host(&self) -> &Host {
        &self.host
    }

    /// The path inside the registry (`library/alpine`), as used in `/v2/<path>/...`.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// The same path on another registry (a mirror).
    pub(crate) fn on_host(&self, host: Host) -> Repository {
        Repository {
            host,
            path: self.path.clone(),
        }
    }
}

impl FromStr for Repository {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > 255 {
            return Err(NameError::TooLong);
        }
        if let Some(at) = s.find('@') {
            return Err(NameError::HasTag {
                found: s[at..].to_string(),
            });
        }
        let (first, rest) = match s.split_once('/') {
            Some((first, rest)) => (first, Some(rest)),
            None => (s, None),
        };
        let first_is_host =
            rest.is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
        let (host, path) = if first_is_host {
            (Host::parse(first)?, rest.unwrap_or_default().to_string())
        } else {
            (Host(DOCKER_HUB.to_string()), s.to_string())
        };
        // A `:` left in the path can only be a tag.
        if let Some(colon) = path.rfind(':') {
            return Err(NameError::HasTag {
                found: path[colon..].to_string(),
            });
        }
        for component in path.split('/') {
            if !valid_component(component) {
                return Err(NameError::Component {
                    component: component.to_string(),
                });
            }
        }
        let path = if host.is_docker_hub() && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Ok(Repository { host, path })
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return false;
        }
        // A separator: `.`, `_`, `__` or a run of `-`.
        let start = i;
        match b {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > start);
        expect_alnum = true;
    }
    !expect_alnum
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tag(String);

impl Tag {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NameError::Tag { tag: s.to_string() };
        let bytes = s.as_bytes();
        let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
        match bytes.first() {
            Some(first) if word(first) => {}
            _ => return Err(bad()),
        }
        if bytes.len() > 128 || !bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-') {
            return Err(bad());
        }
        Ok(Tag(s.to_string()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A content digest, `sha256:<64 lowercase hex>` (other algorithms are not used by registries
/// in practice and are refused rather than trusted unverified).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex digits, as `docker images` shows an image ID.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(bytes))
        ))
    }

    pub fn from_sha256(hash: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }
}

impl FromStr for Digest {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(hex)
                if hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Digest(s.to_string()))
            }
            _ => Err(NameError::Digest {
                digest: s.to_string(),
            }),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_normalisation() {
        let cases = [
            ("alpine", "registry-1.docker.io", "library/alpine"),
            (
                "concourse/git-resource",
                "registry-1.docker.io",
                "concourse/git-resource",
            ),
            ("docker.io/alpine", "registry-1.docker.io", "library/alpine"),
            ("index.docker.io/a/b", "registry-1.docker.io", "a/b"),
            ("localhost/foo", "localhost", "foo"),
            ("localhost:5000/foo/bar", "localhost:5000", "foo/bar"),
            ("127.0.0.1:5000/x", "127.0.0.1:5000", "x"),
            ("Quay.IO/org/img", "quay.io", "org/img"),
            ("[::1]:5000/x", "[::1]:5000", "x"),
            ("ghcr.io/a/b-c__d.e/f", "ghcr.io", "a/b-c__d.e/f"),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "app",
            ),
        ];
        for (input, host, path) in cases {
            let r: Repository = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((r.host().as_str(), r.path()), (host, path), "{input}");
        }
    }

    #[test]
    fn repository_rejects() {
        let cases = [
            "",
            "Alpine",
            "alpine:3.7",
            "alpine@sha256:abc",
            "registry.io:5000/foo:bar",
            "a//b",
            "a/-b",
            "a_/b",
            "a___b",
            "bad host!/x",
            "host:99999/x",
            "a/b/",
        ];
        for input in cases {
            assert!(input.parse::<Repository>().is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn loopback_hosts() {
        for (h, lo) in [
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("127.3.4.5", true),
            ("[::1]:5000", true),
            ("10.0.0.1:5000", false),
            ("registry.local", false),
        ] {
            assert_eq!(Host::parse(h).unwrap().is_loopback(), lo, "{h}");
        }
    }

    #[test]
    fn tags() {
        for ok in [
            "latest",
            "3.7",
            "v1.2.3-rc.1",
            "_x",
            "A".repeat(128).as_str(),
        ] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".x",
            "-x",
            "a b",
            "a/b",
            "a:b",
            "A".repeat(129).as_str(),
        ] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert!("sha256:E3B0".parse::<Digest>().is_err());
        assert!("md5:abc".parse::<Digest>().is_err());
    }
}
