//! The data-directory lock: one node per data directory.
//!
//! `DATA_DIR/node.lock` is locked exclusively (`flock` on Unix, `LockFileEx` on Windows) before
//! the identity key is loaded or created and held for as long as the node runs, so two nodes
//! started together on one directory can neither run side by side nor race to create two keys.
//! The lock lives on its own file, not on the database: deleting or replacing `store.redb` does
//! not release it. The file holds the holder's process id, for the error the next one gets.
//! On Unix the directory itself is locked too, so deleting `node.lock` under a running node
//! does not release the data directory either (the next node would lock a new file).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "node.lock";

/// How often [`DataDirLock::acquire`] tries again when the lock file was replaced between
/// opening and locking it (another process deleted it meanwhile).
const ACQUIRE_ATTEMPTS: usize = 3;

/// An exclusive lock on a data directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    /// The locked `node.lock`: the lock is the open file's, released when it is closed.
    _file: File,
    /// (Unix) The data directory, locked as well: it outlives a deleted `node.lock`.
    _dir: Option<File>,
    /// The data directory.
    data_dir: PathBuf,
}

impl DataDirLock {
    /// Locks `data_dir` (creating it if needed); [`StoreError::Locked`] when another node
    /// (another process, or another store in this one) holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StoreError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source: std::io::Error| StoreError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        for _ in 0..ACQUIRE_ATTEMPTS {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked {
                        data_dir: data_dir.to_path_buf(),
                        held_by: holder(&mut file),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            // Deleted or replaced between our open and our lock: the lock guards nothing.
            if !is_same_file(&file, &path) {
                continue;
            }
            let dir = lock_dir(data_dir, &mut file)?;
            file.set_len(0).map_err(io)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())
                .map_err(io)?;
            return Ok(DataDirLock {
                _file: file,
                _dir: dir,
                data_dir: data_dir.to_path_buf(),
            });
        }
        Err(io(std::io::Error::other(
            "the lock file keeps being replaced while we lock it",
        )))
    }

    /// The locked data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// (Unix) Locks the directory itself; [`StoreError::Locked`] when a node holds it (its lock
/// file was deleted and `file` is a new one, so the holder is named by nothing we can read).
#[cfg(unix)]
fn lock_dir(data_dir: &Path, file: &mut File) -> Result<Option<File>, StoreError> {
    let io = |source: std::io::Error| StoreError::Io {
        path: data_dir.to_path_buf(),
        source,
    };
    let dir = File::open(data_dir).map_err(io)?;
    match dir.try_lock() {
        Ok(()) => Ok(Some(dir)),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            data_dir: data_dir.to_path_buf(),
            held_by: holder(file),
        }),
        Err(TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(not(unix))]
fn lock_dir(_data_dir: &Path, _file: &mut File) -> Result<Option<File>, StoreError> {
    Ok(None)
}

/// " (process N)" from the holder's lock file, or nothing when unreadable.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let read = file
        .rewind()
        .and_then(|()| file.take(32).read_to_string(&mut text));
    match read.ok().and_then(|_| text.trim().parse::<u32>().ok()) {
        Some(pid) => format!(" (process {pid})"),
        None => String::new(),
    }
}

#[cfg(unix)]
fn is_same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}
