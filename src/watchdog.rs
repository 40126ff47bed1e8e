//! Critical threads (the journal writer, the delivery dispatcher) and what happens when
//! one ends while the gateway serves: `app::run` turns `/readyz` red, drains, and the
//! process exits 70 so a supervisor restarts it. Nothing answered 200 is lost: the
//! journal holds it, and the restarted process delivers it.

use std::fmt;

use tokio::sync::mpsc;

/// Hands out guards; cheap to clone.
#[derive(Clone)]
pub struct Watchdog {
    tx: mpsc::UnboundedSender<Death>,
}

/// Where deaths are reported; `app::run` waits on it beside the shutdown signal.
pub struct Deaths(mpsc::UnboundedReceiver<Death>);

/// A critical thread that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub thread: &'static str,
    /// It panicked (else it returned).
    pub panicked: bool,
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.panicked { "panicked" } else { "exited" };
        write!(f, "the {} thread {how}", self.thread)
    }
}

impl Watchdog {
    pub fn new() -> (Watchdog, Deaths) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Watchdog { tx }, Deaths(rx))
    }

    /// A watchdog nobody listens to, for engines opened outside `app::run`.
    pub fn unwatched() -> Watchdog {
        Watchdog::new().0
    }

    /// The guard a critical thread named `thread` holds for its whole life. Its drop
    /// reports a death; the deaths of a shutdown, which ends these threads on
    /// purpose, come after `app::run` stopped listening.
    pub fn guard(&self, thread: &'static str) -> Guard {
        Guard {
            thread,
            tx: self.tx.clone(),
        }
    }
}

impl Deaths {
    /// The next death; pending forever if none can come.
    pub async fn next(&mut self) -> Death {
        match self.0.recv().await {
            Some(death) => death,
            None => std::future::pending().await,
        }
    }
}

/// Held by a critical thread; dropped when it returns or unwinds.
pub struct Guard {
    thread: &'static str,
    tx: mpsc::UnboundedSender<Death>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.tx.send(Death {
            thread: self.thread,
            panicked: std::thread::panicking(),
        });
    }
}

/// A test hook, compiled into debug builds only (a release build, the one deployed,
/// has none and reads no variable): `CBGATE_TEST_PANIC_THREAD=NAME:N` makes the
/// critical thread NAME panic at its unit of work N+1 (`journal-writer`: a callback
/// to append; `delivery-dispatch`: an event to hand out). The only way to kill one
/// of these threads from outside without killing the process.
pub struct Tripwire {
    #[cfg(debug_assertions)]
    thread: &'static str,
    #[cfg(debug_assertions)]
    left: Option<u64>,
}

impl Tripwire {
    pub fn new(thread: &'static str) -> Tripwire {
        #[cfg(debug_assertions)]
        {
            let left = std::env::var("CBGATE_TEST_PANIC_THREAD")
                .ok()
                .and_then(|v| match v.split_once(':') {
                    Some((name, n)) if name == thread => n.parse().ok(),
                    _ => None,
                });
            Tripwire { thread, left }
        }
        #[cfg(not(debug_assertions))]
        {
            let _ = thread;
            Tripwire {}
        }
    }

    /// One unit of work done; panics when the hook says so.
    pub fn step(&mut self) {
        #[cfg(debug_assertions)]
        if let Some(left) = self.left.as_mut() {
            if *left == 0 {
                panic!(
                    "CBGATE_TEST_PANIC_THREAD: {} panics as the test asked",
                    self.thread
                );
            }
            *left -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guard_reports_a_panic_and_a_return() {
        let (watchdog, mut deaths) = Watchdog::new();
        let guard = watchdog.guard("unwinds");
        let joined = std::thread::spawn(move || {
            let _guard = guard;
            panic!("on purpose");
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(
            deaths.next().await,
            Death {
                thread: "unwinds",
                panicked: true
            }
        );
        let guard = watchdog.guard("returns");
        std::thread::spawn(move || drop(guard)).join().unwrap();
        let death = deaths.next().await;
        assert!(!death.panicked);
        assert_eq!(death.to_string(), "the returns thread exited");
    }
}
