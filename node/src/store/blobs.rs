//! Blobs on disk (ADR 0008): one file per blob under `DATA_DIR/blobs/`, never held whole in
//! memory to store, serve or fetch, with a quota.
//!
//! - `own/<id>`: blobs this node made or was given (uploads, its jobs' artifacts). Never evicted.
//! - `cache/<id>`: blobs fetched from peers. Evicted, least recently used first, when room is
//!   needed, unless pinned (a followed campaign still needs it: the daemon says which).
//! - `<id>.obao` beside a blob of more than one part: its outboard ([`crate::blobtree`]).
//! - `partial/<id>` and `partial/<id>.obao`: a fetch under way. The outboard is written once it
//!   verified against the id; each part is written at its place once it verified against the
//!   outboard. A restarted fetch re-checks the parts on disk and asks only for the rest, so a
//!   `kill -9` loses at most the parts in flight.
//! - `partial/upload-*`: an upload being streamed in (removed at start).
//!
//! Every file is written to a temporary name, synced and renamed, so a crash leaves either the
//! whole blob or none. The quota counts every file above, partial ones at their full size;
//! room is reserved before anything is written.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hivemesh_protocol::id::BlobId;

use super::StoreFaults;
use crate::blobtree::{self, Cv, PART};

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file could not be created, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not hash to the id they were given under.
    #[error("blob {0}: the bytes do not hash to the id")]
    Mismatch(BlobId),
    /// Storing it would pass the quota, even after evicting every unpinned fetched blob.
    #[error(
        "the blob store is full: {need} more bytes do not fit in the quota of {quota} bytes \
         ({used} used by blobs this node made, was given or still needs); raise blob_quota_mb \
         or remove campaigns"
    )]
    Full {
        /// Bytes wanted.
        need: u64,
        /// The quota.
        quota: u64,
        /// Bytes held that cannot be evicted.
        used: u64,
    },
    /// An upload past the most bytes allowed.
    #[error("the upload passed {max} bytes, the most this node takes in one blob")]
    OverLimit {
        /// The limit.
        max: u64,
    },
    /// A blob too large to read whole into memory (it is served and fetched in parts).
    #[error("blob {id} has {len} bytes, over the {max} read whole")]
    TooLarge {
        /// The blob.
        id: BlobId,
        /// Its size.
        len: u64,
        /// The most read whole.
        max: u64,
    },
}

/// A blob held: its size, whether it is own, when it was last used.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Bytes of the blob and its outboard.
    bytes: u64,
    /// The blob's own size.
    len: u64,
    /// Made or given here (never evicted).
    own: bool,
    /// A use counter value (larger: more recent).
    used: u64,
}

/// What the store holds, in memory.
#[derive(Debug, Default)]
struct Index {
    /// Complete blobs.
    held: HashMap<BlobId, Held>,
    /// Bytes reserved by fetches under way.
    partial: HashMap<BlobId, u64>,
    /// Blobs the daemon says followed campaigns need.
    pins: HashSet<BlobId>,
    /// Total bytes counted against the quota.
    used: u64,
    /// The use counter.
    clock: u64,
    /// Parts of held blobs this process has hashed and found right (a bit per part): written
    /// by it (uploaded, put or fetched, every part hashed on the way in) or served once. They
    /// are served without hashing again; a blob found on disk at start is checked part by part
    /// as it is first served (ADR 0008).
    verified: HashMap<BlobId, Vec<u64>>,
}

impl Index {
    /// Whether part `index` of `id` was hashed by this process already.
    fn is_verified(&self, id: &BlobId, index: u64) -> bool {
        self.verified
            .get(id)
            .and_then(|bits| bits.get((index / 64) as usize))
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Records part `index` of `id`, of `parts`, as hashed (`None`: every part).
    fn set_verified(&mut self, id: BlobId, parts: u64, index: Option<u64>) {
        let words = parts.div_ceil(64) as usize;
        let bits = self.verified.entry(id).or_insert_with(|| vec![0; words]);
        match index {
            Some(i) if (i / 64) < bits.len() as u64 => bits[(i / 64) as usize] |= 1 << (i % 64),
            Some(_) => {}
            None => bits.fill(u64::MAX),
        }
    }

    /// Records a held blob, used now.
    fn hold(&mut self, id: BlobId, bytes: u64, len: u64, own: bool) {
        self.clock += 1;
        let used = self.clock;
        self.held.insert(
            id,
            Held {
                bytes,
                len,
                own,
                used,
            },
        );
    }
}

/// The blob files of a data directory.
#[derive(Debug)]
pub struct BlobStore {
    /// `DATA_DIR/blobs`.
    dir: PathBuf,
    /// Most bytes held.
    quota: u64,
    /// What is held.
    index: Mutex<Index>,
    /// Disk faults to inject (tests).
    faults: StoreFaults,
}

/// The largest blob [`BlobStore::get`] reads whole into memory.
pub const MAX_READ_WHOLE: u64 = 1 << 30;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex(id: &BlobId) -> String {
    id.to_string()
}

impl BlobStore {
    /// Opens (creating) `dir`, indexes what it holds, removes unfinished uploads and stray
    /// temporary files, and counts fetches under way against the quota.
    pub fn open(dir: &Path, quota: u64, faults: StoreFaults) -> Result<BlobStore, BlobError> {
        for sub in ["own", "cache", "partial"] {
            fs::create_dir_all(dir.join(sub)).map_err(io(&dir.join(sub)))?;
        }
        let mut index = Index::default();
        for (sub, own) in [("own", true), ("cache", false)] {
            for (id, bytes, len) in scan(&dir.join(sub))? {
                index.used += bytes;
                index.hold(id, bytes, len, own);
            }
        }
        let partial = dir.join("partial");
        for entry in fs::read_dir(&partial).map_err(io(&partial))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("upload-") || name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Ok(id) = name.parse::<BlobId>() {
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                index.used += bytes;
                *index.partial.entry(id).or_default() += bytes;
            }
        }
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            quota,
            index: Mutex::new(index),
            faults,
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &BlobId, own: bool) -> PathBuf {
        self.dir
            .join(if own { "own" } else { "cache" })
            .join(hex(id))
    }

    /// Where a held blob's bytes are (for streaming it out).
    pub fn file(&self, id: &BlobId) -> Option<(PathBuf, u64)> {
        let held = *self.index().held.get(id)?;
        Some((self.path(id, held.own), held.len))
    }

    /// The size of a held blob.
    pub fn len(&self, id: &BlobId) -> Option<u64> {
        self.touch(id).map(|h| h.len)
    }

    fn touch(&self, id: &BlobId) -> Option<Held> {
        let mut ix = self.index();
        ix.clock += 1;
        let clock = ix.clock;
        let h = ix.held.get_mut(id)?;
        h.used = clock;
        Some(*h)
    }

    /// Up to `limit` held blob ids, own ones first.
    pub fn ids(&self, limit: usize) -> Vec<BlobId> {
        let ix = self.index();
        let mut ids: Vec<(bool, BlobId)> = ix.held.iter().map(|(id, h)| (!h.own, *id)).collect();
        ids.sort_unstable();
        ids.into_iter().take(limit).map(|(_, id)| id).collect()
    }

    /// Bytes held and the quota.
    pub fn usage(&self) -> (u64, u64) {
        (self.index().used, self.quota)
    }

    /// The blobs followed campaigns need (they are not evicted).
    pub fn set_pins(&self, pins: HashSet<BlobId>) {
        self.index().pins = pins;
    }

    /// Makes room for `need` more bytes, evicting unpinned fetched blobs (least recently
    /// used first), and counts them as used; or says the store is full.
    fn reserve(&self, need: u64) -> Result<(), BlobError> {
        let mut ix = self.index();
        if ix.used.saturating_add(need) > self.quota {
            let mut victims: Vec<(u64, BlobId, u64)> = ix
                .held
                .iter()
                .filter(|(id, h)| !h.own && !ix.pins.contains(id))
                .map(|(id, h)| (h.used, *id, h.bytes))
                .collect();
            victims.sort_unstable();
            let mut freed = 0;
            let over = ix.used.saturating_add(need) - self.quota;
            let chosen: Vec<BlobId> = victims
                .into_iter()
                .take_while(|(_, _, b)| {
                    let more = freed < over;
                    freed += b;
                    more
                })
                .map(|(_, id, _)| id)
                .collect();
            if freed < over {
                return Err(BlobError::Full {
                    need,
                    quota: self.quota,
                    used: ix.used - freed,
                });
            }
            for id in chosen {
                if let Some(h) = ix.held.remove(&id) {
                    ix.used -= h.bytes;
                    let path = self.path(&id, false);
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(path.with_extension("obao"));
                    tracing::info!(blob = %id, bytes = h.len, "evicted from the blob store");
                }
            }
        }
        ix.used += need;
        Ok(())
    }

    fn release(&self, bytes: u64) {
        let mut ix = self.index();
        ix.used = ix.used.saturating_sub(bytes);
    }

    /// Stores `bytes` under `id` after checking the hash; `own` blobs are never evicted.
    /// `false` if it was held already (a fetched blob becomes own when given again).
    pub fn put(&self, id: &BlobId, bytes: &[u8], own: bool) -> Result<bool, BlobError> {
        self.put_within(id, bytes, own, true)
    }

    /// Keeps a blob this node already held (an older store's), as own, whatever the quota:
    /// the quota limits what comes in, never what was there.
    pub fn adopt(&self, id: &BlobId, bytes: &[u8]) -> Result<bool, BlobError> {
        self.put_within(id, bytes, true, false)
    }

    fn put_within(
        &self,
        id: &BlobId,
        bytes: &[u8],
        own: bool,
        quota: bool,
    ) -> Result<bool, BlobError> {
        let (got, len, cvs) = blobtree::outboard_of(bytes).map_err(io(&self.dir))?;
        if got != *id {
            return Err(BlobError::Mismatch(*id));
        }
        if let Some(h) = self.touch(id) {
            if own && !h.own {
                self.promote(id)?;
            }
            return Ok(false);
        }
        let need = len + 32 * cvs.len() as u64;
        if quota {
            self.reserve(need)?;
        } else {
            self.index().used += need;
        }
        let path = self.path(id, own);
        let written = self
            .faults
            .check()
            .map_err(io(&path))
            .and_then(|()| write_atomic(&path, bytes))
            .and_then(|()| write_outboard(&path, &cvs));
        if let Err(e) = written {
            self.release(need);
            return Err(e);
        }
        self.insert(*id, need, len, own);
        Ok(true)
    }

    /// Records a blob this process just wrote, every part of it hashed on the way in.
    fn insert(&self, id: BlobId, bytes: u64, len: u64, own: bool) {
        let mut ix = self.index();
        ix.hold(id, bytes, len, own);
        ix.set_verified(id, blobtree::parts(len), None);
    }

    /// Moves a fetched blob among the own ones.
    fn promote(&self, id: &BlobId) -> Result<(), BlobError> {
        let (from, to) = (self.path(id, false), self.path(id, true));
        if from.with_extension("obao").exists() {
            fs::rename(from.with_extension("obao"), to.with_extension("obao")).map_err(io(&to))?;
        }
        fs::rename(&from, &to).map_err(io(&to))?;
        if let Some(h) = self.index().held.get_mut(id) {
            h.own = true;
        }
        Ok(())
    }

    /// A whole blob, checked against its id (at most [`MAX_READ_WHOLE`] bytes). A blob that no
    /// longer hashes to its id is removed (and `None` returned), so it is fetched again.
    pub fn get(&self, id: &BlobId) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(h) = self.touch(id) else {
            return Ok(None);
        };
        if h.len > MAX_READ_WHOLE {
            return Err(BlobError::TooLarge {
                id: *id,
                len: h.len,
                max: MAX_READ_WHOLE,
            });
        }
        let path = self.path(id, h.own);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(id);
                return Ok(None);
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if BlobId::of_bytes(&bytes) != *id {
            tracing::error!(blob = %id, "a stored blob no longer matches its id: removed");
            self.remove(id);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    fn forget(&self, id: &BlobId) -> Option<Held> {
        let mut ix = self.index();
        let h = ix.held.remove(id)?;
        ix.verified.remove(id);
        ix.used = ix.used.saturating_sub(h.bytes);
        Some(h)
    }

    /// Removes a blob (corrupt on disk).
    pub fn remove(&self, id: &BlobId) {
        if let Some(h) = self.forget(id) {
            let path = self.path(id, h.own);
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(path.with_extension("obao"));
        }
    }

    /// The outboard of a held blob from part `from`, at most `max` values, and its size. A
    /// one-part blob has none.
    pub fn hashes(
        &self,
        id: &BlobId,
        from: u64,
        max: usize,
    ) -> Result<Option<(u64, Vec<Cv>)>, BlobError> {
        let Some(h) = self.touch(id) else {
            return Ok(None);
        };
        if blobtree::parts(h.len) == 1 {
            return Ok(Some((h.len, Vec::new())));
        }
        let path = self.path(id, h.own).with_extension("obao");
        let cvs = read_cvs(&path, from, max)?;
        Ok(Some((h.len, cvs)))
    }

    /// Part `index` of a held blob and its size, checked against the outboard the first time
    /// this process serves it (a blob damaged on disk is removed rather than served); a part
    /// this process wrote or served already is not hashed again.
    pub fn part(&self, id: &BlobId, index: u64) -> Result<Option<(u64, Vec<u8>)>, BlobError> {
        let Some(h) = self.touch(id) else {
            return Ok(None);
        };
        if index >= blobtree::parts(h.len) {
            return Ok(Some((h.len, Vec::new())));
        }
        let path = self.path(id, h.own);
        let range = blobtree::part_range(h.len, index);
        let len = range.end - range.start;
        let checked = self.index().is_verified(id, index);
        // Read into spare capacity: a part is not zeroed before it is filled.
        let mut data = Vec::with_capacity(len as usize);
        let read = File::open(&path).and_then(|mut f| {
            f.seek(SeekFrom::Start(range.start))?;
            match f.take(len).read_to_end(&mut data)? as u64 {
                n if n == len => Ok(()),
                n => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("part {index} ended after {n} of its {len} bytes"),
                )),
            }
        });
        if let Err(e) = read {
            self.remove(id);
            return Err(io(&path)(e));
        }
        if checked {
            return Ok(Some((h.len, data)));
        }
        let cvs = if blobtree::parts(h.len) == 1 {
            Vec::new()
        } else {
            read_cvs(&path.with_extension("obao"), index, 1)?
        };
        let ok = match cvs.first() {
            None => BlobId::of_bytes(&data) == *id,
            Some(cv) => *cv == blobtree::part_cv(index, &data),
        };
        if !ok {
            tracing::error!(blob = %id, part = index, "a stored part no longer matches: removed");
            self.remove(id);
            return Ok(None);
        }
        self.index()
            .set_verified(*id, blobtree::parts(h.len), Some(index));
        Ok(Some((h.len, data)))
    }
}

/// The blob files of a folder: (id, bytes with the outboard, blob size).
fn scan(dir: &Path) -> Result<Vec<(BlobId, u64, u64)>, BlobError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let Ok(id) = name.parse::<BlobId>() else {
            continue;
        };
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        let obao = fs::metadata(entry.path().with_extension("obao")).map_or(0, |m| m.len());
        out.push((id, len + obao, len));
    }
    Ok(out)
}

/// Reads up to `max` chaining values from `from` of an outboard file.
fn read_cvs(path: &Path, from: u64, max: usize) -> Result<Vec<Cv>, BlobError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let start = from.saturating_mul(32).min(len);
    let n = ((len - start) / 32).min(max as u64) as usize;
    f.seek(SeekFrom::Start(start)).map_err(io(path))?;
    let mut buf = vec![0u8; n * 32];
    f.read_exact(&mut buf).map_err(io(path))?;
    Ok(buf
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect())
}

fn write_outboard(path: &Path, cvs: &[Cv]) -> Result<(), BlobError> {
    if cvs.is_empty() {
        return Ok(());
    }
    write_atomic(&path.with_extension("obao"), cvs.as_flattened())
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path)(e)
    })
}

/// An upload being streamed to disk: hashed as it is written, named by its id at the end.
#[derive(Debug)]
pub struct Upload {
    /// The file being written.
    file: File,
    /// Its path (`partial/upload-N`).
    path: PathBuf,
    /// The id and outboard, computed on the way.
    outboard: blobtree::Outboarder,
    /// Bytes reserved against the quota so far.
    reserved: u64,
    /// The most bytes taken.
    limit: u64,
}

/// Bytes a blob of `len` bytes takes with its outboard.
fn stored_size(len: u64) -> u64 {
    let parts = blobtree::parts(len);
    len + if parts > 1 { 32 * parts } else { 0 }
}

impl BlobStore {
    /// Starts an upload of at most `limit` bytes; `expected` (a Content-Length) is reserved at
    /// once, so an upload that cannot fit is refused before anything is written.
    pub fn begin_upload(&self, expected: Option<u64>, limit: u64) -> Result<Upload, BlobError> {
        if expected.is_some_and(|e| e > limit) {
            return Err(BlobError::OverLimit { max: limit });
        }
        let reserved = expected.map_or(0, stored_size);
        self.reserve(reserved)?;
        let n = {
            let mut ix = self.index();
            ix.clock += 1;
            ix.clock
        };
        let path = self
            .dir
            .join("partial")
            .join(format!("upload-{}-{n}", std::process::id()));
        let file = File::create(&path).map_err(|e| {
            self.release(reserved);
            io(&path)(e)
        })?;
        Ok(Upload {
            file,
            path,
            outboard: blobtree::Outboarder::default(),
            reserved,
            limit,
        })
    }

    /// Appends bytes to an upload (reserving more room when it outgrows what was reserved).
    pub fn upload_write(&self, u: &mut Upload, data: &[u8]) -> Result<(), BlobError> {
        let len = u.outboard.len() + data.len() as u64;
        if len > u.limit {
            return Err(BlobError::OverLimit { max: u.limit });
        }
        let need = stored_size(len);
        if need > u.reserved {
            self.reserve(need - u.reserved)?;
            u.reserved = need;
        }
        self.faults.check().map_err(io(&u.path))?;
        u.file.write_all(data).map_err(io(&u.path))?;
        u.outboard.update(data);
        Ok(())
    }

    /// Ends an upload: the blob joins the own ones under its id (or is dropped when held
    /// already). Returns its id and size.
    pub fn finish_upload(&self, u: Upload) -> Result<(BlobId, u64), BlobError> {
        let Upload {
            file,
            path,
            outboard,
            reserved,
            ..
        } = u;
        let (id, len, cvs) = outboard.finish();
        let stored = (|| {
            file.sync_all().map_err(io(&path))?;
            if let Some(h) = self.touch(&id) {
                if !h.own {
                    self.promote(&id)?;
                }
                return Ok(false);
            }
            let to = self.path(&id, true);
            write_outboard(&to, &cvs)?;
            fs::rename(&path, &to).map_err(io(&to))?;
            File::open(self.dir.join("own"))
                .and_then(|d| d.sync_all())
                .map_err(io(&to))?;
            Ok(true)
        })();
        let _ = fs::remove_file(&path);
        self.release(reserved);
        match stored {
            Ok(true) => {
                let bytes = stored_size(len);
                self.index().used += bytes;
                self.insert(id, bytes, len, true);
                Ok((id, len))
            }
            Ok(false) => Ok((id, len)),
            Err(e) => Err(e),
        }
    }

    /// Drops an upload that failed (its room is released).
    pub fn abort_upload(&self, u: Upload) {
        let _ = fs::remove_file(&u.path);
        self.release(u.reserved);
    }
}

/// A fetch under way: the outboard verified, parts written at their places as they verify.
#[derive(Debug)]
pub struct Partial {
    /// The blob.
    id: BlobId,
    /// Its size.
    total: u64,
    /// Its outboard (empty for one part).
    cvs: Vec<Cv>,
    /// The data file.
    file: File,
    /// Its path.
    path: PathBuf,
    /// Which parts are written and verified.
    done: Vec<bool>,
    /// Disk faults to inject (tests).
    faults: StoreFaults,
    /// Writes this file's pages out while the fetch goes on.
    flusher: Flusher,
    /// The file was there before (a fetch resumed after a restart): its parts must be checked
    /// ([`Partial::recheck`]) before the fetch goes on.
    resumed: bool,
}

/// Bytes a fetch writes between two background flushes of its file.
pub const FLUSH_EVERY: u64 = 32 << 20;

/// A fetch's background flushes: its file's pages go to disk while later parts arrive, so the
/// sync that ends the fetch waits for the last few only (on the benchmark's disk, syncing a
/// 256 MiB file at the end took as long as a quarter of its transfer).
#[derive(Debug, Default)]
struct Flusher {
    /// Bytes written since the last flush began.
    unflushed: u64,
    /// The flush under way (`sync_data` of a clone of the file, on a thread of its own).
    running: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The first flush that failed (the fetch cannot finish: its data may not be on disk).
    failed: Option<std::io::Error>,
    /// Flushes begun (tests).
    begun: u32,
}

impl Flusher {
    /// Counts `n` bytes written to `file`; begins a flush past [`FLUSH_EVERY`] unless one is
    /// still running.
    fn wrote(&mut self, n: u64, file: &File) {
        self.unflushed += n;
        if self.unflushed < FLUSH_EVERY || self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.join();
        let Ok(clone) = file.try_clone() else {
            return; // no descriptor left: the final sync does it all
        };
        let spawned = std::thread::Builder::new()
            .name("hm-blob-flush".into())
            .spawn(move || clone.sync_data());
        if let Ok(h) = spawned {
            self.running = Some(h);
            self.unflushed = 0;
            self.begun += 1;
        }
    }

    /// Waits for the flush under way, keeping its error.
    fn join(&mut self) {
        let Some(h) = self.running.take() else {
            return;
        };
        let result = h
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the flush thread panicked")));
        if let Err(e) = result {
            self.failed.get_or_insert(e);
        }
    }
}

impl BlobStore {
    /// Starts (or resumes) fetching blob `id` of `total` bytes whose outboard `cvs` verified:
    /// reserves its room and opens its file. A file that was there already must be re-checked
    /// ([`Partial::needs_recheck`], [`Partial::recheck`]: it reads and hashes every part, so
    /// the caller runs it off its event loop).
    pub fn partial(&self, id: &BlobId, total: u64, cvs: Vec<Cv>) -> Result<Partial, BlobError> {
        let path = self.dir.join("partial").join(hex(id));
        let need = total + 32 * cvs.len() as u64;
        let had = self.index().partial.get(id).copied().unwrap_or(0);
        if had < need {
            self.reserve(need - had)?;
            self.index().partial.insert(*id, need);
        }
        // A new file holds no part yet: nothing to re-check (hashing its holes cost a whole
        // extra pass over the blob before the first part was asked for).
        let resumed = path.exists();
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        file.set_len(total).map_err(io(&path))?;
        write_outboard(&path, &cvs)?;
        let p = Partial {
            id: *id,
            total,
            cvs,
            file,
            path,
            done: vec![false; blobtree::parts(total) as usize],
            faults: self.faults.clone(),
            flusher: Flusher::default(),
            resumed,
        };
        Ok(p)
    }

    /// The size and outboard of an earlier, unfinished fetch of `id`, if they are on disk
    /// (the caller checks them against the id).
    pub fn partial_outboard(&self, id: &BlobId) -> Option<(u64, Vec<Cv>)> {
        let path = self.dir.join("partial").join(hex(id));
        let total = fs::metadata(&path).ok()?.len();
        let bytes = fs::read(path.with_extension("obao")).ok()?;
        (bytes.len() % 32 == 0).then(|| {
            let cvs = bytes
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect();
            (total, cvs)
        })
    }

    /// Moves a complete fetch among the held (fetched) blobs.
    pub fn finish(&self, mut p: Partial) -> Result<(), BlobError> {
        if p.done.iter().any(|d| !d) {
            return Err(BlobError::Mismatch(p.id));
        }
        p.flusher.join();
        if let Some(e) = p.flusher.failed.take() {
            return Err(io(&p.path)(e));
        }
        p.file.sync_all().map_err(io(&p.path))?;
        let to = self.path(&p.id, false);
        if !p.cvs.is_empty() {
            fs::rename(p.path.with_extension("obao"), to.with_extension("obao"))
                .map_err(io(&to))?;
        }
        fs::rename(&p.path, &to).map_err(io(&to))?;
        let need = self.index().partial.remove(&p.id).unwrap_or(0);
        self.insert(p.id, need, p.total, false);
        Ok(())
    }

    /// Drops a fetch that cannot finish (its room is released).
    pub fn abandon(&self, p: Partial) {
        let _ = fs::remove_file(&p.path);
        let _ = fs::remove_file(p.path.with_extension("obao"));
        let bytes = self.index().partial.remove(&p.id).unwrap_or(0);
        self.release(bytes);
    }
}

impl Partial {
    /// The parts already written and verified.
    pub fn done(&self) -> &[bool] {
        &self.done
    }

    /// Writes part `index`, checked against the outboard.
    pub fn write_part(&mut self, index: u64, data: &[u8]) -> Result<(), BlobError> {
        if !blobtree::part_matches(&self.id, self.total, &self.cvs, index, data) {
            return Err(BlobError::Mismatch(self.id));
        }
        self.write_checked_part(index, data)
    }

    /// Writes part `index` that the caller checked against this fetch's outboard already
    /// ([`crate::fetch::BlobFetch::on_part`] does): one hash per part, not two.
    pub fn write_checked_part(&mut self, index: u64, data: &[u8]) -> Result<(), BlobError> {
        if index >= self.done.len() as u64 {
            return Err(BlobError::Mismatch(self.id));
        }
        let at = blobtree::part_range(self.total, index).start;
        self.faults.check().map_err(io(&self.path))?;
        self.file.write_all_at(data, at).map_err(io(&self.path))?;
        self.done[index as usize] = true;
        self.flusher.wrote(data.len() as u64, &self.file);
        Ok(())
    }

    /// Whether the file was there before and its parts are not checked yet.
    pub fn needs_recheck(&self) -> bool {
        self.resumed
    }

    /// Marks the parts on disk that verify (reads and hashes the whole file).
    pub fn recheck(&mut self) {
        self.resumed = false;
        let mut buf = vec![0u8; PART as usize];
        for i in 0..self.done.len() as u64 {
            let r = blobtree::part_range(self.total, i);
            let part = &mut buf[..(r.end - r.start) as usize];
            self.done[i as usize] = self.file.read_exact_at(part, r.start).is_ok()
                && blobtree::part_matches(&self.id, self.total, &self.cvs, i, part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hm-blobs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn bytes(n: u64, seed: u8) -> Vec<u8> {
        // Not periodic: no two parts alike.
        (0..n)
            .map(|i| ((i ^ (i >> 8) ^ (i >> 16) ^ (i >> 24)) as u8).wrapping_mul(seed))
            .collect()
    }

    #[test]
    fn blobs_are_stored_served_in_parts_and_survive_a_reopen() {
        let d = dir("parts");
        let s = BlobStore::open(&d, 1 << 30, StoreFaults::default()).expect("open");
        let data = bytes(3 * PART + 5, 7);
        let id = BlobId::of_bytes(&data);
        assert!(s.put(&id, &data, true).expect("put"));
        assert!(!s.put(&id, &data, true).expect("again"));
        assert!(matches!(
            s.put(&id, &data[1..], true),
            Err(BlobError::Mismatch(_))
        ));
        let (total, cvs) = s.hashes(&id, 0, 100).expect("read").expect("held");
        assert_eq!((total, cvs.len()), (data.len() as u64, 4));
        assert!(blobtree::outboard_matches(&id, total, &cvs));
        let (_, part3) = s.part(&id, 3).expect("read").expect("held");
        assert_eq!(part3, data[3 * PART as usize..]);
        drop(s);
        let s = BlobStore::open(&d, 1 << 30, StoreFaults::default()).expect("reopen");
        assert_eq!(s.get(&id).expect("read"), Some(data.clone()));
        assert_eq!(s.usage().0, data.len() as u64 + 4 * 32);
        // A part damaged on disk is not served; the blob is dropped to be fetched again.
        let path = d.join("own").join(id.to_string());
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.write_all_at(&[0xff; 8], PART).expect("damage");
        assert_eq!(s.part(&id, 1).expect("read"), None);
        assert_eq!(s.len(&id), None);
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn the_quota_evicts_unpinned_fetched_blobs_and_refuses_the_rest() {
        let d = dir("quota");
        let s = BlobStore::open(&d, 1000, StoreFaults::default()).expect("open");
        let (a, b, c) = (bytes(400, 3), bytes(400, 5), bytes(400, 9));
        let (ia, ib, ic) = (
            BlobId::of_bytes(&a),
            BlobId::of_bytes(&b),
            BlobId::of_bytes(&c),
        );
        s.put(&ia, &a, false).expect("a");
        s.put(&ib, &b, false).expect("b");
        s.set_pins([ia].into());
        s.put(&ic, &c, false).expect("c evicts b (a is pinned)");
        assert!(s.len(&ia).is_some() && s.len(&ib).is_none() && s.len(&ic).is_some());
        let own = bytes(900, 11);
        let e = s
            .put(&BlobId::of_bytes(&own), &own, true)
            .expect_err("full");
        assert!(e.to_string().contains("quota of 1000"), "{e}");
        assert_eq!(s.usage().0, 800, "nothing written by the refused blob");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn uploads_stream_to_disk_and_respect_the_quota_and_the_limit() {
        let d = dir("upload");
        let s = BlobStore::open(&d, 4 * PART, StoreFaults::default()).expect("open");
        let data = bytes(3 * PART + 11, 17);
        let mut u = s.begin_upload(None, 1 << 30).expect("begin");
        for piece in data.chunks(100_000) {
            s.upload_write(&mut u, piece).expect("write");
        }
        let (id, len) = s.finish_upload(u).expect("finish");
        assert_eq!((id, len), (BlobId::of_bytes(&data), data.len() as u64));
        assert_eq!(
            s.part(&id, 3).expect("read").expect("held").1,
            data[3 * PART as usize..]
        );
        assert_eq!(s.usage().0, data.len() as u64 + 4 * 32);
        // A declared size over the room left is refused before a byte is written.
        let e = s.begin_upload(Some(PART), 1 << 30).expect_err("full");
        assert!(matches!(e, BlobError::Full { .. }), "{e}");
        // An undeclared one is stopped when it outgrows the room, and leaves nothing.
        let mut u = s.begin_upload(None, 1 << 30).expect("begin");
        let e = s
            .upload_write(&mut u, &data[..PART as usize])
            .expect_err("full");
        assert!(matches!(e, BlobError::Full { .. }), "{e}");
        s.abort_upload(u);
        let mut u = s.begin_upload(None, 10).expect("begin");
        assert!(matches!(
            s.upload_write(&mut u, &[0; 11]),
            Err(BlobError::OverLimit { max: 10 })
        ));
        s.abort_upload(u);
        assert_eq!(s.usage().0, data.len() as u64 + 4 * 32, "nothing more held");
        let partial = fs::read_dir(d.join("partial")).expect("dir").count();
        assert_eq!(partial, 0, "no upload file left");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_partial_fetch_resumes_with_the_parts_already_written() {
        let d = dir("partial");
        let s = BlobStore::open(&d, 1 << 30, StoreFaults::default()).expect("open");
        let data = bytes(5 * PART + 3, 13);
        let (id, total, cvs) = blobtree::outboard_of(&data[..]).expect("outboard");
        let mut p = s.partial(&id, total, cvs.clone()).expect("start");
        assert!(!p.needs_recheck(), "a new file holds no part");
        let part = |i: u64| {
            let r = blobtree::part_range(total, i);
            data[r.start as usize..r.end as usize].to_vec()
        };
        p.write_part(0, &part(0)).expect("part 0");
        p.write_part(3, &part(3)).expect("part 3");
        assert!(
            p.write_part(1, &part(2)).is_err(),
            "a part at the wrong place"
        );
        drop(p); // kill -9
        drop(s);
        let s = BlobStore::open(&d, 1 << 30, StoreFaults::default()).expect("reopen");
        let (size, cvs) = s.partial_outboard(&id).expect("outboard kept");
        assert_eq!(size, total);
        let mut p = s.partial(&id, total, cvs).expect("resume");
        assert!(p.needs_recheck());
        assert_eq!(p.done(), &[false; 6], "nothing counts before the check");
        p.recheck();
        assert!(!p.needs_recheck());
        assert_eq!(p.done(), &[true, false, false, true, false, false]);
        for i in [1, 2, 4, 5] {
            p.write_part(i, &part(i)).expect("rest");
        }
        s.finish(p).expect("finish");
        assert_eq!(s.get(&id).expect("read"), Some(data));
        assert_eq!(s.usage().0, total + 6 * 32);
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_long_fetch_is_flushed_to_disk_as_it_goes_and_finishes_whole() {
        let d = dir("flush");
        let s = BlobStore::open(&d, 1 << 30, StoreFaults::default()).expect("open");
        let data = bytes(3 * FLUSH_EVERY + 5, 21);
        let (id, total, cvs) = blobtree::outboard_of(&data[..]).expect("outboard");
        let mut p = s.partial(&id, total, cvs).expect("start");
        for i in 0..blobtree::parts(total) {
            let r = blobtree::part_range(total, i);
            p.write_part(i, &data[r.start as usize..r.end as usize])
                .expect("part");
        }
        // A flush began at each FLUSH_EVERY bytes unless the one before was still running.
        assert!(
            (1..=3).contains(&p.flusher.begun),
            "{} flushes",
            p.flusher.begun
        );
        s.finish(p).expect("finish");
        assert_eq!(s.get(&id).expect("read"), Some(data));
        fs::remove_dir_all(&d).ok();
    }
}
