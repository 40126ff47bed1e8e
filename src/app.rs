//! Wires the parts together and owns the order of start and shutdown:
//! open the store → start delivery → bind → ready; on signal: not ready → stop
//! accepting and drain requests → stop delivery → close the store (last commit) →
//! exit, all under the grace period. The death of a critical thread (`watchdog`, exit
//! 70) or a store that failed for good (`Store::failed`, exit 1) takes the same path,
//! readiness red first.

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
use crate::merchant::Merchant;
use crate::metrics as m;
use crate::projects::Projects;
use crate::store::{self, StoreError};
use crate::terminal::Terminal;
use crate::verifier::Verifier;
use crate::watchdog::{Death, Watchdog};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("{0}")]
    Config(String),
    /// A critical thread ended while serving: restart the process.
    #[error("{0}; exiting for a supervisor to restart cbgate")]
    ThreadDied(Death),
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
    // The admin listener comes up first, so /readyz answers 503 while the store
    // opens (the journal recovers, or NATS is reached).
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
        store: OnceLock::new(),
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

    let (watchdog, mut deaths) = Watchdog::new();
    let (store, feed) = store::open(&config, &watchdog).await?;
    let delivery = Delivery::start(
        &config.delivery,
        store.clone(),
        projects.clone(),
        feed,
        &watchdog,
    )
    .map_err(AppError::Config)?;
    {
        let delivery = delivery.clone();
        store.serve_status(Arc::new(move || {
            let delivery = delivery.clone();
            Box::pin(async move { delivery.local_status().await })
        }));
    }
    let _ = admin.store.set(store.clone());
    let _ = admin.delivery.set(delivery.clone());

    let listener = bind(config.server.listen).await?;
    // The merchant listener: internal, on its own address, only with `[merchant]`.
    let merchant = match &config.merchant {
        None => None,
        Some(settings) => {
            let merchant = Arc::new(
                Merchant::new(settings, &config, projects.clone(), store.clone())
                    .map_err(AppError::Config)?,
            );
            let listener = bind(settings.listen).await?;
            let stop = CancellationToken::new();
            let handler = merchant.clone();
            let server = tokio::spawn(http::serve(
                listener,
                merchant.limits(),
                move |req| handler.clone().handle(req),
                stop.clone(),
                GRACE,
            ));
            Some((merchant, server, stop))
        }
    };
    tracing::info!(
        listen = %config.server.listen,
        admin = %config.server.admin_listen,
        merchant = ?config.merchant.as_ref().map(|m| m.listen),
        projects = config.projects.len(),
        "cbgate serving"
    );

    let verifier = Verifier::new(
        config.server.verifier_threads,
        config.server.max_json_depth,
        config.server.signature_fallback,
    );
    // One Ingress per HTTP thread, each with its own merchant connections.
    let first = Terminal::new(&config, store.shared_answers()).map_err(AppError::Config)?;
    let mut terminals: Vec<_> = (1..http_threads).map(|_| first.with_own_pool()).collect();
    terminals.push(first);
    let handlers = terminals
        .into_iter()
        .map(|terminal| {
            let ingress = Arc::new(Ingress {
                projects: projects.clone(),
                verifier: verifier.clone(),
                store: store.clone(),
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
    let reloader = tokio::spawn(reload_on_sighup(
        config_path,
        projects.clone(),
        shutdown.clone(),
    ));
    ready.store(true, Ordering::Release);

    // Why serving ended, when not by a signal: the exit is then non-zero.
    let fault = tokio::select! {
        () = shutdown.cancelled() => None,
        death = deaths.next() => Some(AppError::ThreadDied(death)),
        e = store.failed() => Some(AppError::Store(e)),
    };
    let stopping = std::time::Instant::now();
    ready.store(false, Ordering::Release);
    match &fault {
        // Draining still answers what it can: a dead writer makes intake 503, a dead
        // dispatcher leaves new events in the journal for the restarted process.
        Some(AppError::ThreadDied(death)) => tracing::error!(
            thread = death.thread,
            panicked = death.panicked,
            "{death}: not ready; draining, then exiting 70 for a supervisor to restart cbgate"
        ),
        Some(other) => tracing::error!(
            "{other}: not ready; draining, then exiting 1 for a supervisor to restart cbgate"
        ),
        None => tracing::info!("shutting down: draining requests"),
    }
    stop_accepting.cancel();
    if let Some((_, _, stop)) = &merchant {
        stop.cancel();
    }
    let _ = platform.await;
    if let Some((merchant, server, _)) = merchant {
        let _ = server.await;
        // Signed requests still on their way to the timeline go in before the store closes.
        let left = GRACE.saturating_sub(stopping.elapsed());
        merchant.drain(left.max(Duration::from_millis(500))).await;
    }
    reloader.abort();
    // Delivery outcomes are settled in the store: stop delivery before closing it.
    let left = GRACE.saturating_sub(stopping.elapsed());
    delivery
        .shutdown(left.max(Duration::from_millis(500)))
        .await;
    store.close().await;
    admin_stop.cancel();
    let _ = admin_server.await;
    tracing::info!("stopped");
    match fault {
        Some(e) => Err(e),
        None => Ok(()),
    }
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
