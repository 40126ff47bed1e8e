//! The `cbgate` command line: `serve`, `check-config`, `sign`, `verify`, `simulate`.
//! Exit codes: 0 success, 1 a signature that does not match (or `serve` failed),
//! 2 malformed input or usage, 64 a configuration that does not validate, 70 a
//! critical thread of `serve` died (restart it: nothing acknowledged is lost).

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
        /// Overrides `server.listen`: several nodes on one machine can share a file.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `server.admin_listen`.
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
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
    /// Play the platform against a running gateway and check every answer;
    /// exit 0 if all were as expected, 1 if not.
    Simulate(Box<SimulateArgs>),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Base URL of the gateway's platform listener.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The project's secret (or env:NAME / file:PATH).
    #[arg(long)]
    secret: String,
    #[arg(long, default_value_t = 1234)]
    project: u64,
    /// Flows to play at most.
    #[arg(long, default_value_t = 1000)]
    flows: u64,
    /// Stop starting flows after this many seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Flows started per second; 0 = as fast as the gateway answers.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Concurrent flows (connections).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Share of callbacks sent twice (platform retries, answered "duplicate").
    #[arg(long, default_value_t = 0.2)]
    retry_share: f64,
    /// Share of OTP flows whose clarification request comes again (wrong OTP).
    #[arg(long, default_value_t = 0.3)]
    resend_share: f64,
    /// Share of requests also sent with a wrong signature (answered 400).
    #[arg(long, default_value_t = 0.01)]
    bad_signature_share: f64,
    /// Share of requests also sent cut in half (answered 400 / code 500).
    #[arg(long, default_value_t = 0.01)]
    malformed_share: f64,
    /// Also play the kiosk's verify and check_deposit (the project needs a terminal_url
    /// whose merchant answers code 0).
    #[arg(long)]
    terminal: bool,
    /// Seed for the flow mix (the ids differ per run either way).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
    /// The gateway's merchant listener, e.g. http://127.0.0.1:8081: play the flows
    /// that start at the merchant instead (Mobile Commerce through Gate API with the
    /// OTP, Kassa24 through Payment Page); the simulator is also the platform's Gate
    /// API and Payment Page (--platform-listen) and the merchant backend
    /// (--backend-listen). --resend-share is then the share of wrong OTPs.
    #[arg(long)]
    merchant: Option<String>,
    /// The project's merchant_token (or env:NAME / file:PATH).
    #[arg(long, requires = "merchant")]
    merchant_token: Option<String>,
    /// The simulated Gate API and Payment Page: the gateway's gate_url is http://ADDR
    /// and its payment_page_url http://ADDR/payment.
    #[arg(long, default_value = "127.0.0.1:18500")]
    platform_listen: std::net::SocketAddr,
    /// The simulated merchant backend: the project's endpoint is http://ADDR/hooks and
    /// its terminal_url http://ADDR/terminal.
    #[arg(long, default_value = "127.0.0.1:18501")]
    backend_listen: std::net::SocketAddr,
    /// The endpoint's whsec_ secret: deliveries' Standard Webhooks signatures are checked.
    #[arg(long)]
    endpoint_secret: Option<String>,
    /// Share of wrong-OTP flows whose backend asks for a new OTP first.
    #[arg(long, default_value_t = 0.5)]
    new_otp_share: f64,
    /// Share of successful Mobile Commerce purchases refunded through cbgate.
    #[arg(long, default_value_t = 0.2)]
    refund_share: f64,
    /// Share of merchant-side flows with a test amount that declines (40000, 40400).
    #[arg(long, default_value_t = 0.2)]
    decline_share: f64,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            admin_listen,
        } => serve(config, listen, admin_listen),
        Command::Simulate(args) => run(|| simulate(*args)),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("{}: warning: {warning}", file.display());
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

/// sysexits EX_SOFTWARE: a critical thread died; a supervisor should restart cbgate.
pub const EXIT_THREAD_DIED: u8 = 70;

/// Validates the config before binding anything, then runs until SIGTERM/SIGINT.
/// A second signal exits at once: the journal is the truth, nothing acknowledged
/// is lost by stopping mid-drain.
fn serve(
    path: PathBuf,
    listen: Option<std::net::SocketAddr>,
    admin_listen: Option<std::net::SocketAddr>,
) -> ExitCode {
    let mut config = match Config::load(&path) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    config.server.listen = listen.unwrap_or(config.server.listen);
    config.server.admin_listen = admin_listen.unwrap_or(config.server.admin_listen);
    let _log_guard = crate::telemetry::init(&config.log);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    // Admin, delivery and timers; platform requests get their own HTTP threads
    // (`server.worker_threads`, see `http::serve_per_thread`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        crate::app::run(config, Some(path), shutdown).await
    });
    // A dead thread may leave a blocking read behind: don't wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cbgate stopped");
            eprintln!("cbgate: {e}");
            match e {
                crate::app::AppError::ThreadDied(_) => ExitCode::from(EXIT_THREAD_DIED),
                _ => ExitCode::from(1),
            }
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

fn simulate(a: SimulateArgs) -> Result<ExitCode, String> {
    let shares = [
        a.retry_share,
        a.resend_share,
        a.bad_signature_share,
        a.malformed_share,
        a.new_otp_share,
        a.refund_share,
        a.decline_share,
    ];
    if shares.iter().any(|s| !(0.0..=1.0).contains(s)) {
        return Err("shares must be between 0 and 1".into());
    }
    if let Some(merchant) = &a.merchant {
        return simulate_merchant_side(&a, merchant);
    }
    let plan = crate::simulate::Plan {
        target: a.target.trim_end_matches('/').to_string(),
        secret: resolve_secret(&a.secret)?,
        project: a.project,
        flows: a.flows,
        seconds: a.seconds,
        rate: a.rate,
        connections: a.connections,
        retry_share: a.retry_share,
        resend_share: a.resend_share,
        bad_signature_share: a.bad_signature_share,
        malformed_share: a.malformed_share,
        terminal: a.terminal,
        seed: a.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let summary = runtime.block_on(crate::simulate::run(plan));
    if a.json {
        println!("{}", serde_json::to_string(&summary).expect("plain data"));
    } else {
        print!("{summary}");
    }
    Ok(if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `cbgate simulate --merchant`: the flows that start at the merchant.
fn simulate_merchant_side(a: &SimulateArgs, merchant: &str) -> Result<ExitCode, String> {
    let token = a
        .merchant_token
        .as_deref()
        .ok_or("--merchant needs --merchant-token")?;
    let plan = crate::simulate::merchant_side::MerchantPlan {
        target: a.target.trim_end_matches('/').to_string(),
        merchant: merchant.trim_end_matches('/').to_string(),
        token: resolve_secret(token)?,
        secret: resolve_secret(&a.secret)?,
        project: a.project,
        platform_listen: a.platform_listen,
        backend_listen: a.backend_listen,
        endpoint_secret: a
            .endpoint_secret
            .as_deref()
            .map(resolve_secret)
            .transpose()?,
        flows: a.flows,
        seconds: a.seconds,
        connections: a.connections,
        wrong_otp_share: a.resend_share,
        new_otp_share: a.new_otp_share,
        refund_share: a.refund_share,
        decline_share: a.decline_share,
        seed: a.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let summary = runtime.block_on(crate::simulate::merchant_side::run(plan))?;
    if a.json {
        println!("{}", serde_json::to_string(&summary).expect("plain data"));
    } else {
        print!("{summary}");
    }
    Ok(if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
