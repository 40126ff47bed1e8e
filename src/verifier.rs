//! Where signature checks run: inline on the calling thread, or on a pool of
//! dedicated threads fed by a crossbeam channel so reactor threads stay free. Each
//! thread keeps one reusable `Canonicalizer`.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::callback::{self, Callback, Rejection};
use crate::metrics as m;
use crate::projects::Projects;
use crate::signature::Canonicalizer;

thread_local! {
    static CANON: RefCell<Option<Canonicalizer>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's canonicaliser (created on first use, kept after).
pub fn with_canonicalizer<R>(max_depth: usize, f: impl FnOnce(&mut Canonicalizer) -> R) -> R {
    CANON.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|c| c.max_depth() != max_depth) {
            *slot = Some(Canonicalizer::new(max_depth));
        }
        f(slot.as_mut().expect("just set"))
    })
}

struct Job {
    body: Bytes,
    projects: Arc<Projects>,
    queued: Instant,
    reply: oneshot::Sender<Result<Callback, Rejection>>,
}

/// The signature checker ingress calls; clones share the pool.
#[derive(Clone)]
pub struct Verifier {
    pool: Option<crossbeam_channel::Sender<Job>>,
    max_depth: usize,
    fallback: bool,
}

/// The pool's queue is full: answer 503, the platform retries.
#[derive(Debug, thiserror::Error)]
#[error("signature verifier queue is full")]
pub struct Busy;

impl Verifier {
    /// `threads == 0` checks inline.
    pub fn new(threads: usize, max_depth: usize, fallback: bool) -> Self {
        let pool = (threads > 0).then(|| {
            let (tx, rx) = crossbeam_channel::bounded::<Job>(threads * 1024);
            for i in 0..threads {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("verifier-{i}"))
                    .spawn(move || {
                        let mut canon = Canonicalizer::new(max_depth);
                        for job in rx {
                            metrics::histogram!(m::VERIFIER_QUEUE_SECONDS)
                                .record(job.queued.elapsed().as_secs_f64());
                            let result =
                                callback::verify(&mut canon, job.body, &job.projects, fallback);
                            let _ = job.reply.send(result);
                        }
                    })
                    .expect("spawn verifier thread");
            }
            tx
        });
        Self {
            pool,
            max_depth,
            fallback,
        }
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    pub async fn verify(
        &self,
        body: Bytes,
        projects: Arc<Projects>,
    ) -> Result<Result<Callback, Rejection>, Busy> {
        match &self.pool {
            None => Ok(with_canonicalizer(self.max_depth, |c| {
                callback::verify(c, body, &projects, self.fallback)
            })),
            Some(pool) => {
                let (reply, rx) = oneshot::channel();
                let job = Job {
                    body,
                    projects,
                    queued: Instant::now(),
                    reply,
                };
                pool.try_send(job).map_err(|_| Busy)?;
                rx.await.map_err(|_| Busy)
            }
        }
    }
}
