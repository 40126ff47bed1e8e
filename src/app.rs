//! Wires the parts together and owns the order of start and shutdown:
//! recover the journal → start delivery → bind → ready; on signal: not ready → stop
//! accepting and drain requests → stop delivery → last journal commit → exit, all
//! under the grace period.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::http::{self, Limits};
use crate::ingress::{Ingress, IngressHandles};
use crate::journal::{Journal, JournalError, RedbStore};
use crate::metrics as m;
use crate::projects::Projects;
use crate::terminal::Terminal;
use crate::verifier::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("{0}")]
    Config(String),
}

/// Grace period for draining connections at shutdown.
pub const GRACE: Duration = Duration::from_secs(10);

/// Runs the gateway with `config` (already validated) until `shutdown` fires.
/// `config_path` is re-read on SIGHUP.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let metrics = m::install();
    let http_threads = match config.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    metrics::gauge!(m::WORKER_THREADS).set(http_threads as f64);
    let ready = Arc::new(AtomicBool::new(false));
    let projects = Arc::new(ArcSwap::from_pointee(
        Projects::build(&config).map_err(AppError::Config)?,
    ));

    let bind = |addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| AppError::Bind {
                addr: addr.to_string(),
                error,
            })
    };
    // The admin listener comes up first, so /readyz answers 503 while the journal
    // recovers.
    let admin_listener = bind(config.server.admin_listen).await?;
    let limits = Limits::from_config(&config.server);
    let admin = Arc::new(Admin {
        token: config
            .server
            .admin_token
            .as_ref()
            .map(|t| t.resolve())
            .transpose()
            .map_err(AppError::Config)?,
        metrics,
        ready: ready.clone(),
        journal: OnceLock::new(),
        delivery: OnceLock::new(),
    });
    let admin_stop = CancellationToken::new();
    let admin_server = {
        let admin = admin.clone();
        tokio::spawn(http::serve(
            admin_listener,
            Limits {
                max_connections: 64,
                ..limits
            },
            move |req| admin.clone().handle(req),
            admin_stop.clone(),
            Duration::from_secs(1),
        ))
    };

    let storage = config.storage.clone();
    let store = tokio::task::spawn_blocking(move || {
        RedbStore::open(&storage.dir, storage.verify_on_open, storage.cache_bytes)
    })
    .await
    .expect("journal open does not panic")?;
    // Unbounded: the dispatcher moves events on at once to the endpoint workers,
    // which bound their own memory; a full channel would stall the journal writer.
    let (accepted, accepted_rx) = crossbeam_channel::unbounded();
    let (journal, pending, writer) = Journal::start(
        Arc::new(store),
        config.storage.dedup_window,
        config.storage.max_batch,
        config.storage.max_pending,
        Some(accepted),
    )?;
    let delivery = Delivery::start(
        &config.delivery,
        journal.clone(),
        projects.clone(),
        &pending,
        accepted_rx,
    )
    .map_err(AppError::Config)?;
    drop(pending);
    let _ = admin.journal.set(journal.clone());
    let _ = admin.delivery.set(delivery.clone());

    let listener = bind(config.server.listen).await?;
    tracing::info!(
        listen = %config.server.listen,
        admin = %config.server.admin_listen,
        projects = config.projects.len(),
        "cbgate serving"
    );

    let verifier = Verifier::new(
        config.server.verifier_threads,
        config.server.max_json_depth,
        config.server.signature_fallback,
    );
    // One Ingress per HTTP thread, each with its own merchant connections.
    let first = Terminal::new(&config).map_err(AppError::Config)?;
    let mut terminals: Vec<_> = (1..http_threads).map(|_| first.with_own_pool()).collect();
    terminals.push(first);
    let handlers = terminals
        .into_iter()
        .map(|terminal| {
            let ingress = Arc::new(Ingress {
                projects: projects.clone(),
                verifier: verifier.clone(),
                journal: journal.clone(),
                terminal,
                limits,
                access_log: config.log.access,
                handles: IngressHandles::registered(),
            });
            move |req| ingress.clone().handle(req)
        })
        .collect();

    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key).map_err(AppError::Config)?),
        _ => None,
    };
    let stop_accepting = CancellationToken::new();
    let platform = tokio::spawn(
        http::serve_per_thread(
            listener,
            handlers,
            tls,
            limits,
            stop_accepting.clone(),
            GRACE,
        )
        .map_err(|error| AppError::Bind {
            addr: config.server.listen.to_string(),
            error,
        })?,
    );
    let sweeper = {
        let journal = journal.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    // A pass over every key (46 ms at 10 M): off the runtime's workers,
                    // which run delivery.
                    _ = tick.tick() => {
                        let journal = journal.clone();
                        let _ = tokio::task::spawn_blocking(move || journal.sweep()).await;
                    }
                    () = stop.cancelled() => break,
                }
            }
        })
    };
    let reloader = tokio::spawn(reload_on_sighup(
        config_path,
        projects.clone(),
        shutdown.clone(),
    ));
    ready.store(true, Ordering::Release);

    shutdown.cancelled().await;
    let stopping = std::time::Instant::now();
    tracing::info!("shutting down: draining requests");
    ready.store(false, Ordering::Release);
    stop_accepting.cancel();
    let _ = platform.await;
    sweeper.abort();
    reloader.abort();
    // Delivery outcomes are journal updates: stop delivery before the last commit.
    let left = GRACE.saturating_sub(stopping.elapsed());
    delivery
        .shutdown(left.max(Duration::from_millis(500)))
        .await;
    journal.close();
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    admin_stop.cancel();
    let _ = admin_server.await;
    tracing::info!("stopped");
    Ok(())
}

/// On SIGHUP, re-reads and re-validates the config; a bad one is refused and the
/// running one kept.
async fn reload_on_sighup(
    path: Option<PathBuf>,
    projects: Arc<ArcSwap<Projects>>,
    shutdown: CancellationToken,
) {
    let Some(path) = path else { return };
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            () = shutdown.cancelled() => return,
        }
        let result = Config::load(&path)
            .map_err(|p| p.to_string())
            .and_then(|c| Projects::build(&c));
        match result {
            Ok(new) => {
                projects.store(Arc::new(new));
                metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
                tracing::info!(path = %path.display(), "config reloaded");
            }
            Err(problems) => {
                metrics::counter!(m::CONFIG_RELOADS_TOTAL, "result" => "refused").increment(1);
                tracing::error!(path = %path.display(), %problems, "config reload refused; keeping the running config");
            }
        }
    }
}
