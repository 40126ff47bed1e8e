//! The journal file as redb's storage backend, watched: redb reports a failed commit the
//! same way whether a write or an fsync failed, but the two call for different cures.
//! A failed write left nothing claimed on disk (reopen when space returns); a failed
//! fsync may have lost pages the kernel had already taken (only a restart is safe).

use std::fs::File;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Which kind of I/O failed since the file was opened.
#[derive(Debug, Default)]
pub struct Faults {
    /// A write, resize or read failed: redb refuses every later commit until reopened.
    io: AtomicBool,
    /// An fdatasync failed: what the kernel held for the file may be gone (fsyncgate).
    sync: AtomicBool,
}

impl Faults {
    pub fn io_failed(&self) -> bool {
        self.io.load(Ordering::Acquire)
    }

    pub fn sync_failed(&self) -> bool {
        self.sync.load(Ordering::Acquire)
    }

    /// Forgets earlier failures: the file was reopened.
    pub fn reset(&self) {
        self.io.store(false, Ordering::Release);
        self.sync.store(false, Ordering::Release);
    }
}

/// redb's own file backend, noting in `Faults` which operation failed.
#[derive(Debug)]
pub struct Watched {
    inner: FileBackend,
    faults: Arc<Faults>,
}

impl Watched {
    pub fn new(file: File, faults: Arc<Faults>) -> Result<Watched, redb::DatabaseError> {
        Ok(Watched {
            inner: FileBackend::new(file)?,
            faults,
        })
    }

    fn note<T>(&self, result: std::io::Result<T>, sync: bool) -> std::io::Result<T> {
        if result.is_err() {
            self.faults.io.store(true, Ordering::Release);
            if sync {
                self.faults.sync.store(true, Ordering::Release);
            }
        }
        result
    }
}

impl StorageBackend for Watched {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.note(self.inner.read(offset, out), false)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.note(self.inner.set_len(len), false)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.note(self.inner.sync_data(), true)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.note(self.inner.write(offset, data), false)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    // Locks keep other processes off the file: passed through unchanged.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// Drops the file's clean pages from the kernel's cache, so what is read next comes from
/// the disk. After a failed fsync Linux marks the pages it could not write clean and
/// keeps them: a restart would otherwise read back data that never reached the disk.
/// Dirty pages are left alone (they are still written back). Best effort.
pub fn drop_cached_pages(file: &File) {
    if let Err(e) = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed) {
        tracing::warn!(error = %e, "could not drop the journal's cached pages");
    }
}

/// Whether `dir` takes writes again: a small file written, synced and removed.
pub fn space_returned(dir: &std::path::Path) -> bool {
    use std::io::Write as _;
    let path = dir.join(".space-probe");
    let result = File::create(&path)
        .and_then(|mut f| f.write_all(&[0u8; 64 * 1024]).and_then(|()| f.sync_data()));
    let _ = std::fs::remove_file(&path);
    result.is_ok()
}
