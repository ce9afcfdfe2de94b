//! The node's identity key on disk.
//!
//! File `identity.key` in the data directory, mode 0600, two lines: the header
//! `hivemesh-identity-v1` and the 32-byte ed25519 secret as 64 hex characters. Written to a
//! temporary file (created exclusively: a planted link is never followed) and renamed, so a
//! crash never leaves a half-written key. A key file that group or others may read is loaded
//! with a warning. Who may create or replace the key is decided by the data-directory lock
//! ([`crate::store::DataDirLock`]): `hivemesh run` and `hivemesh keygen` take it first.

use std::fs;
use std::path::{Path, PathBuf};

use hivemesh_protocol::Keypair;

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "identity.key";
const HEADER: &str = "hivemesh-identity-v1";

/// Why the identity could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a hivemesh key file.
    #[error(
        "{path}: not a hivemesh identity file ({reason}); restore it from a backup, or move it away and run `hivemesh keygen`"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A key exists and overwriting was not asked for.
    #[error(
        "{path} already exists; pass --force to replace it (the old identity and its reputation are lost)"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("cannot read the operating system's random source: {0}")]
    Random(String),
}

/// The key file path inside `data_dir`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// A new key from the operating system's random source.
pub fn generate() -> Result<Keypair, IdentityError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(Keypair::from_secret_bytes(secret))
}

/// Writes `key` to `data_dir/identity.key` with mode 0600, refusing to replace an existing
/// key unless `force`.
pub fn save(data_dir: &Path, key: &Keypair, force: bool) -> Result<PathBuf, IdentityError> {
    let path = key_path(data_dir);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    if path.exists() && !force {
        return Err(IdentityError::Exists { path });
    }
    fs::create_dir_all(data_dir).map_err(|source| IdentityError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let hex = crate::hex(&key.secret_bytes());
    write_private(&path, format!("{HEADER}\n{hex}\n").as_bytes()).map_err(io)?;
    Ok(path)
}

/// Writes a secret file atomically (exclusive temp file, fsync, rename), readable by its
/// owner only (mode 0600 on Unix).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::files::write_atomic(path, bytes, crate::files::Access::Private)
}

/// Warns when group or others may read the key file (Unix mode & 0o077).
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the identity key is readable by other users: run `chmod 600` on it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Reads the key in `data_dir`.
pub fn load(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = key_path(data_dir);
    let text = fs::read_to_string(&path).map_err(|source| IdentityError::Io {
        path: path.clone(),
        source,
    })?;
    warn_if_readable_by_others(&path);
    let corrupt = |reason| IdentityError::Corrupt {
        path: path.clone(),
        reason,
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(corrupt("missing header line"));
    }
    let hex = lines.next().ok_or_else(|| corrupt("missing key line"))?;
    let secret: hivemesh_protocol::BlobId = hex
        .parse()
        .map_err(|_| corrupt("key line is not 64 hex characters"))?;
    Ok(Keypair::from_secret_bytes(secret.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hivemesh-id-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn save_load_round_trip_with_private_mode() {
        let d = tmpdir("rt");
        let k = generate().unwrap();
        let p = save(&d, &k, false).unwrap();
        assert_eq!(load(&d).unwrap().public(), k.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(matches!(
            save(&d, &generate().unwrap(), false),
            Err(IdentityError::Exists { .. })
        ));
        assert_eq!(load(&d).unwrap().public(), k.public(), "not overwritten");
        let k2 = generate().unwrap();
        save(&d, &k2, true).unwrap();
        assert_eq!(load(&d).unwrap().public(), k2.public());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_files_are_named() {
        let d = tmpdir("bad");
        fs::create_dir_all(&d).unwrap();
        fs::write(key_path(&d), "hello\n").unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("identity.key") && e.contains("header"), "{e}");
        fs::write(key_path(&d), format!("{HEADER}\nzz\n")).unwrap();
        assert!(load(&d).unwrap_err().to_string().contains("64 hex"));
        fs::remove_dir_all(&d).unwrap();
        assert!(matches!(load(&d), Err(IdentityError::Io { .. })));
    }
}
