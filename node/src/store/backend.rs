//! The file backend under redb, with a switch that makes the disk look full (tests).
//!
//! redb latches an I/O error: once a write fails, every later operation on that `Database`
//! returns `PreviousIo` until it is dropped and opened again. The store does exactly that
//! (see [`super::Store`]); [`StoreFaults`] lets tests show it, since a real full disk cannot be
//! arranged in a test.

use std::io::ErrorKind;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Disk faults to inject into a store (tests; nothing sets them in a real node). Cheap to clone:
/// clones share the switches.
#[derive(Debug, Clone, Default)]
pub struct StoreFaults {
    /// While set, every write, resize and sync fails with "no space left on device".
    disk_full: Arc<AtomicBool>,
}

impl StoreFaults {
    /// Makes the disk look full (every write fails) or gives the space back.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    /// Fails as a full disk would, while the disk is made to look full.
    pub(super) fn check(&self) -> std::io::Result<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(
                ErrorKind::StorageFull,
                "No space left on device (injected by StoreFaults)",
            ));
        }
        Ok(())
    }
}

/// redb's file backend, failing writes while [`StoreFaults`] says the disk is full.
#[derive(Debug)]
pub(super) struct Backend {
    /// The real file.
    file: FileBackend,
    /// The switches.
    faults: StoreFaults,
}

impl Backend {
    pub(super) fn new(file: FileBackend, faults: StoreFaults) -> Backend {
        Backend { file, faults }
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.faults.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.faults.check()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.faults.check()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
