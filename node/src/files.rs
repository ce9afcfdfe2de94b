//! Writing files for the user (exports, downloaded blobs) and for the node (its key, its API
//! token) without following a link someone planted.
//!
//! [`write_atomic`] writes to a fresh temporary file in the target's directory, created
//! exclusively (`O_CREAT | O_EXCL`: an existing file or symlink at that name is an error, never
//! followed) under a random name, syncs it and renames it over the target. A rename replaces a
//! symlink at the target instead of writing through it, and an interrupted write leaves no torn
//! file.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// Random temporary names tried before giving up (each collision means a file already sits
/// at a name nobody could guess: something is wrong with the directory).
const TEMP_ATTEMPTS: usize = 8;

/// Who may read a file [`write_atomic`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The usual permissions (0666 less the umask on Unix).
    Public,
    /// The owner only (0600 on Unix): keys and tokens.
    Private,
}

/// Writes `bytes` to `path` atomically (see the module doc); `path`'s directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], access: Access) -> std::io::Result<()> {
    let (mut file, tmp) = create_temp(path, access)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // Make the rename durable too (best effort: not every platform opens directories).
    if let Some(dir) = path
        .parent()
        .and_then(|d| std::fs::File::open(dir_or_dot(d)).ok())
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A new temporary file beside `path`, created exclusively under a random name (a file or
/// link already at that name is an error, never followed): write it, then rename it over
/// `path`, as [`write_atomic`] does.
pub fn create_temp(path: &Path, access: Access) -> std::io::Result<(std::fs::File, PathBuf)> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = dir_or_dot(path.parent().unwrap_or(Path::new("")));
    for _ in 0..TEMP_ATTEMPTS {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            crate::hex(&nonce)
        ));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        if access == Access::Private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = access;
        match opts.open(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        ErrorKind::AlreadyExists,
        format!(
            "cannot create a temporary file in {}: every random name is taken",
            dir.display()
        ),
    ))
}

/// `.` for an empty parent (a bare file name).
fn dir_or_dot(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_target_and_leave_no_temporary() {
        let d = std::env::temp_dir().join(format!("hivemesh-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        let p = d.join("out.json");
        write_atomic(&p, b"one", Access::Public).expect("write");
        write_atomic(&p, b"two", Access::Private).expect("again");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(&d)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.json")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&d).expect("clean");
    }
}
