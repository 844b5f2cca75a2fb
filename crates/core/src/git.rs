//! `source.git_repo`: the tag to track is the sha of the git repository's default branch
//! (`git ls-remote <repo> HEAD`), with `git_private_key` for ssh remotes.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::Stdio;
use std::time::Duration;

use crate::error::Error;
use crate::secret::Secret;

/// How long `git ls-remote` may take.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The sha the remote's `HEAD` points at.
pub(crate) async fn default_branch_sha(repo: &str, key: Option<&Secret>) -> Result<String, Error> {
    let field = |reason: String| Error::field("source.git_repo", reason);
    if repo.trim().is_empty() || repo.starts_with('-') {
        return Err(field(format!("{repo:?} is not a git repository url")));
    }
    let mut command = tokio::process::Command::new("git");
    command
        .args(["ls-remote", "--", repo, "HEAD"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The key lives in a private temp dir for the duration of the command.
    let _key_dir = match key.filter(|k| !k.is_empty()) {
        None => None,
        Some(key) => {
            let dir =
                tempfile::tempdir().map_err(|e| field(format!("cannot write the key: {e}")))?;
            let path = dir.path().join("id");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| field(format!("cannot write the key: {e}")))?;
            let mut text = key.expose().trim_end().to_string();
            text.push('\n');
            file.write_all(text.as_bytes())
                .map_err(|e| field(format!("cannot write the key: {e}")))?;
            command.env(
                "GIT_SSH_COMMAND",
                format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes",
                    path.display()
                ),
            );
            Some(dir)
        }
    };
    let child = command.spawn().map_err(|e| {
        field(format!(
            "cannot run git ({e}); git must be installed to use git_repo"
        ))
    })?;
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| field(format!("git ls-remote {repo} took longer than {TIMEOUT:?}")))?
        .map_err(|e| field(format!("git ls-remote {repo} failed: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no output");
        return Err(field(format!("git ls-remote {repo} failed: {last}")));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, name)| *name == "HEAD")
        .map(|(sha, _)| sha.trim().to_string())
        .filter(|sha| sha.len() >= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| field(format!("{repo} has no default branch (HEAD)")))
}
