//! The one wrapper every binary goes through: logging to stderr first, stdin read and parsed
//! once, the command run, stdout written once, and any error turned into one line on stderr
//! and exit code 1.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use tracing_subscriber::{
    layer::SubscriberExt as _, reload, util::SubscriberInitExt as _, EnvFilter,
};

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Check,
    In,
    Out,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Check => "check",
            Command::In => "in",
            Command::Out => "out",
        }
    }

    /// The longest the whole command may run. Each request has its own, shorter, budgets
    /// (see the README's Security model); this bounds the sum of them.
    fn deadline(self) -> std::time::Duration {
        match self {
            Command::Check => CHECK_DEADLINE,
            Command::In | Command::Out => TRANSFER_DEADLINE,
        }
    }

    fn about(self) -> &'static str {
        match self {
            Command::Check => "Emit the versions of a container image, as JSON on stdout, for a Concourse request on stdin",
            Command::In => "Fetch the image version given on stdin into DIR",
            Command::Out => "Build or load an image from DIR and push it, per the params on stdin",
        }
    }
}

/// `check` lists tags and reads a few manifests.
pub const CHECK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// `in` and `out` move images of many gigabytes (and `out` may build one).
pub const TRANSFER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

impl Command {
    /// The command a link names: the image ships one binary linked as check, in and out.
    fn from_argv0() -> Option<Command> {
        let argv0 = std::env::args_os().next()?;
        let name = Path::new(&argv0).file_name()?.to_str()?;
        match name {
            "check" => Some(Command::Check),
            "in" => Some(Command::In),
            "out" => Some(Command::Out),
            _ => None,
        }
    }
}

/// Runs `command` (or the one the binary's name says, when it is linked under another) as a
/// binary does and returns its exit code.
pub fn main(command: Command) -> ExitCode {
    let command = Command::from_argv0().unwrap_or(command);
    let dir = match parse_args(command) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let filter = init_logging();
    match run(command, dir, &filter) {
        Ok(json) => {
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(json.as_bytes())
                .and_then(|()| stdout.flush())
            {
                eprintln!(
                    "error: cannot write the response to stdout: {}",
                    dockhand::redact::clean_line(&e.to_string())
                );
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", dockhand::redact::clean_line(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

/// `--help` and `--version` for people at a shell; `in` and `out` take the directory.
fn parse_args(command: Command) -> Result<Option<PathBuf>, ExitCode> {
    let mut cli = clap::Command::new(command.name())
        .version(env!("CARGO_PKG_VERSION"))
        .about(command.about())
        .after_help(
            "The request is a JSON object on stdin: {\"source\": {...}, \"version\": {...}, \"params\": {...}}.\n\
             The response is one JSON document on stdout; logs and errors go to stderr.",
        );
    if command != Command::Check {
        cli = cli.arg(
            clap::Arg::new("dir")
                .value_name("DIR")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help(if command == Command::In {
                    "Directory to write the image into"
                } else {
                    "Directory the params' paths are relative to"
                }),
        );
    }
    match cli.try_get_matches() {
        Ok(m) => Ok(m.try_get_one::<PathBuf>("dir").ok().flatten().cloned()),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            let message = match e.kind() {
                ErrorKind::MissingRequiredArgument => "missing the DIR argument".to_string(),
                _ => {
                    let text = e.to_string();
                    let first = text.lines().next().unwrap_or("invalid arguments");
                    first.trim_start_matches("error: ").to_string()
                }
            };
            eprintln!("error: {message} (see {} --help)", command.name());
            Err(ExitCode::from(1))
        }
    }
}

/// Logs to stderr; `RUST_LOG` wins, else info, raised to debug by `source.debug`.
fn init_logging() -> FilterHandle {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(|| CleanStderr)
                .with_target(false)
                .with_ansi(false)
                .without_time(),
        )
        .init();
    handle
}

fn run(command: Command, dir: Option<PathBuf>, filter: &FilterHandle) -> anyhow::Result<String> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("cannot read the request from stdin")?;
    let request = dockhand::protocol::parse_request(&input)?;
    if request.debug() && std::env::var_os("RUST_LOG").is_none() {
        let _ = filter
            .modify(|f| *f = EnvFilter::new("debug,hyper=info,rustls=info,reqwest=info,h2=info"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let deadline = command.deadline();
    let work = async {
        match command {
            Command::Check => {
                let versions = dockhand::commands::check(&request).await?;
                Ok::<_, anyhow::Error>(serde_json::to_string(&versions)?)
            }
            Command::In => {
                let dir = dir.expect("clap requires DIR for in");
                let response = dockhand::commands::get(&request, &dir).await?;
                Ok(serde_json::to_string(&response)?)
            }
            Command::Out => {
                let dir = dir.expect("clap requires DIR for out");
                let response = dockhand::commands::put(&request, &dir).await?;
                Ok(serde_json::to_string(&response)?)
            }
        }
    };
    let json = runtime.block_on(async {
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "{} did not finish within its deadline of {} minutes",
                    command.name(),
                    deadline.as_secs() / 60
                ))
            })
    })?;
    Ok(json + "\n")
}

/// Stderr through the redactor: every log event becomes one clean line (secrets masked,
/// control characters escaped, length capped), however the message was made.
struct CleanStderr;

impl std::io::Write for CleanStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut out = String::new();
        for line in text.split_terminator('\n') {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(line);
        }
        let mut line = dockhand::redact::clean_line(&out);
        line.push('\n');
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
