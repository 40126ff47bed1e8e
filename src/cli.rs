//! The `cbgate` command line: `serve`, `check-config`, `sign`, `verify`.
//! Exit codes: 0 success, 1 a signature that does not match, 2 malformed input
//! or usage, 64 a configuration that does not validate.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::signature::{self, Canonicalizer, Secrets, VerifyError};

#[derive(Parser)]
#[command(
    name = "cbgate",
    version,
    about = "Callback gateway for ECOMMPAY-family payment platforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: print every problem, exit 64 if there is one.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Print the base64 signature of a JSON payload (any `signature` in it is ignored).
    Sign {
        /// The project secret (or env:NAME / file:PATH).
        #[arg(long)]
        secret: String,
        /// Print the canonical string instead of the signature.
        #[arg(long, conflicts_with = "attach")]
        canonical: bool,
        /// Print the payload with its `signature` attached (ready to POST).
        #[arg(long)]
        attach: bool,
        /// The payload file, or - for standard input.
        #[arg(default_value = "-")]
        file: String,
    },
    /// Exit 0 if the payload's own signature is valid, 1 if not, 2 if malformed.
    Verify {
        /// The project secret (or env:NAME / file:PATH); repeat for rotation.
        #[arg(long, required = true)]
        secret: Vec<String>,
        /// Also accept the other SDKs' canonical orders (spec §10.5).
        #[arg(long)]
        fallback: bool,
        /// The payload file, or - for standard input.
        #[arg(default_value = "-")]
        file: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                for key in config.literal_secrets() {
                    eprintln!(
                        "{}: warning: {key} is a literal secret; use env: or file: in production",
                        file.display()
                    );
                }
                println!(
                    "{}: ok ({} projects)",
                    file.display(),
                    config.projects.len()
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprintln!("{problems}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Sign {
            secret,
            canonical,
            attach,
            file,
        } => run(|| {
            let secret = resolve_secret(&secret)?;
            let body = read_input(&file)?;
            if attach {
                let signed = signature::attach(&body, &secret).map_err(|e| e.to_string())?;
                println!("{}", String::from_utf8_lossy(&signed));
                return Ok(ExitCode::SUCCESS);
            }
            let mut canon = Canonicalizer::default();
            canon.load(&body).map_err(|e| e.to_string())?;
            let text = canon.canonical(signature::Order::Signer);
            if canonical {
                println!("{}", String::from_utf8_lossy(text));
            } else {
                println!("{}", signature::sign_canonical(&secret, text));
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Verify {
            secret,
            fallback,
            file,
        } => run(|| {
            let secrets = secret
                .iter()
                .map(|s| resolve_secret(s))
                .collect::<Result<Vec<_>, _>>()?;
            let body = read_input(&file)?;
            let mut canon = Canonicalizer::default();
            match signature::verify(&mut canon, &body, &Secrets::new(&secrets), fallback) {
                Ok(m) => {
                    println!(
                        "valid (order {}, secret #{})",
                        m.order.as_str(),
                        m.key_index + 1
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(VerifyError::Mismatch) => {
                    println!("invalid signature");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.to_string()),
            }
        }),
    }
}

/// sysexits EX_USAGE-style code for a config that does not validate.
const EXIT_CONFIG: u8 = 64;

/// Validates the config before binding anything, then runs until SIGTERM/SIGINT.
/// A second signal exits at once: the journal is the truth, nothing acknowledged
/// is lost by stopping mid-drain.
fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log_guard = crate::telemetry::init(&config.log);
    for key in config.literal_secrets() {
        tracing::warn!(
            key,
            "literal secret in the config file; use env: or file: in production"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        crate::app::run(config, Some(path), shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cbgate stopped");
            eprintln!("cbgate: {e}");
            ExitCode::from(1)
        }
    }
}

async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received; draining (send it again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// Runs a subcommand; an `Err` is malformed input: one line on stderr, exit 2.
fn run(f: impl FnOnce() -> Result<ExitCode, String>) -> ExitCode {
    match f() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("cbgate: {message}");
            ExitCode::from(2)
        }
    }
}

fn read_input(file: &str) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        body =
            std::fs::read(PathBuf::from(file)).map_err(|e| format!("cannot read {file}: {e}"))?;
    }
    Ok(body)
}

/// `env:NAME`, `file:PATH` or a literal, as in the config file.
fn resolve_secret(spec: &str) -> Result<String, String> {
    crate::config::SecretRef::parse(spec)
        .resolve()
        .map_err(|e| e.to_string())
}
