//! The node's durable state: one redb database, `DATA_DIR/store.redb`.
//!
//! What is kept, and why it is enough to restart after `kill -9`:
//! - **campaigns**: each campaign's signed spec (the creator's `Campaign` message), by id;
//! - **messages**: every verified protocol message of a campaign (received and own), in arrival
//!   order, plus an index by message id so a message is stored once. A restarted node builds a
//!   fresh `Peer` and replays them in order (the protocol's state is a function of its inputs);
//! - **results**: the result of every job this node executed, and the blobs it produced
//!   (weights, shards), written in *one* transaction before the result is fed to the protocol or
//!   published. When the replayed protocol asks for the job again, the stored result is fed
//!   back at once: finished training is never lost and never redone. A job that was running
//!   when the node died has no result and is run again (training is reproducible);
//! - **blobs**: content-addressed bytes (id = blake3 of the bytes) are files beside the database
//!   ([`blobs`]: streamed in and out in verified parts, with a quota; ADR 0008). A store of an
//!   older version kept them in the database: they move to files when it is opened.
//!
//! Every commit of the node's own work (campaigns, own messages, results, blobs) is durable
//! (`fsync`) before it returns; messages received from peers are committed without waiting for
//! the disk and made durable by the next durable commit or the periodic flush (a crash can lose
//! only messages that sync fetches again). Values are stored as they travel (signed
//! envelopes) or as postcard.
//!
//! **Checksums.** Every record but a blob is stored behind an 8-byte checksum (blake3 of its key
//! and value; blobs are checked against their id, which is their blake3). A record that fails
//! its check when read is logged once and *dropped*, and with a message its entry in the
//! dedupe index, so that the good copy a peer sends (sync or gossip) is stored again instead of
//! being skipped as already held. The dedupe index vouches for a message only while the record
//! it points to reads back whole.
//!
//! **I/O errors.** redb latches an I/O error (a full disk): every later operation on that
//! database fails with `PreviousIo`. The store then closes the database and opens it again at
//! the next use (redb repairs it from its last commit), so writes succeed again once space
//! returns, without a restart. Failed writes are counted ([`StoreOptions::write_failures`]) and
//! the last one is reported by [`Store::last_error`] until a write succeeds.
//!
//! **Ownership.** The store records the public key of the node that first opened it
//! ([`Store::claim_owner`]); a node with another key is refused unless it asks to take the store
//! over, so a lost or replaced `identity.key` never silently yields a new identity beside the old
//! history. The data directory is locked ([`DataDirLock`], `node.lock`) before the key is read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hivemesh_protocol::id::{BlobId, CampaignId, JobId, MessageId};
use hivemesh_protocol::identity::PeerKey;
use hivemesh_protocol::message::JobResult;
use prometheus_client::metrics::counter::Counter;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

mod backend;
pub mod blobs;
mod lock;

pub use self::backend::StoreFaults;
pub use self::blobs::{BlobError, BlobStore, Partial};
pub use self::lock::{DataDirLock, LOCK_FILE};

/// The store's file name inside the data directory.
pub const STORE_FILE: &str = "store.redb";

/// One table: byte keys to byte values.
type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Campaign id → the signed `Campaign` envelope.
const CAMPAIGNS: Def = TableDefinition::new("campaigns");
/// campaign id ‖ sequence number (big-endian) → a signed message envelope.
const MESSAGES: Def = TableDefinition::new("messages");
/// Message id → campaign id ‖ sequence number (the dedupe index).
const MESSAGE_IDS: Def = TableDefinition::new("message_ids");
/// campaign id ‖ job id → postcard [`JobResult`].
const RESULTS: Def = TableDefinition::new("results");
/// Blob id → bytes (not framed: the id is the bytes' blake3). Only in stores of older
/// versions: its blobs move to [`BlobStore`] files when the store is opened.
const BLOBS: Def = TableDefinition::new("blobs");

/// The blob folder inside the data directory.
pub const BLOBS_DIR: &str = "blobs";
/// The blob store's quota when the operator sets none (32 GiB).
pub const DEFAULT_BLOB_QUOTA: u64 = 32 << 30;
/// The store's own facts: [`FORMAT_KEY`], [`OWNER_KEY`].
const META: Def = TableDefinition::new("meta");
/// The tables whose values carry a checksum.
const FRAMED: [Def; 5] = [CAMPAIGNS, MESSAGES, MESSAGE_IDS, RESULTS, META];

/// The record format in [`META`]: 1 is checksummed records (stores without it hold bare values
/// and are converted at open).
const FORMAT_KEY: &[u8] = b"format";
/// The record format this build writes.
const FORMAT: u8 = 1;
/// The owner's public key in [`META`].
const OWNER_KEY: &[u8] = b"owner";
/// Bytes of checksum in front of every framed value.
const TAG_LEN: usize = 8;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another node (another `hivemesh run`, or another store in this process) holds the data
    /// directory.
    #[error(
        "the data directory {data_dir} is in use by another hivemesh node{held_by}: stop that node first, or pass another --data-dir"
    )]
    Locked {
        /// The data directory.
        data_dir: PathBuf,
        /// " (process N)" when the holder's process id is known, else empty.
        held_by: String,
    },
    /// A file of the data directory could not be created, opened or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened, read or written.
    #[error("store {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: Box<redb::Error>,
    },
    /// A record does not decode or does not match its key.
    #[error("store {path}: corrupt {what}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which record.
        what: String,
    },
    /// The store was written by a newer hivemesh.
    #[error(
        "store {path} has record format {found}, newer than this hivemesh ({FORMAT}): run a newer hivemesh"
    )]
    Format {
        /// The database file.
        path: PathBuf,
        /// The format recorded.
        found: u8,
    },
    /// A blob file could not be stored or read, or the blob quota is full.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The store belongs to another key than the node's.
    #[error(
        "the store in {data_dir} belongs to node key {owner}, but the identity key is {key}: restore the original identity.key, or pass --new-identity to keep this store under the new key (peers then see a new node)"
    )]
    OwnerChanged {
        /// The data directory.
        data_dir: PathBuf,
        /// The key recorded in the store.
        owner: PeerKey,
        /// The key the node was started with.
        key: PeerKey,
    },
}

/// How to open a store beyond its directory.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Counts failed writes (the node registers it as `hivemesh_store_write_failures_total`).
    pub write_failures: Counter,
    /// Disk faults to inject (tests).
    pub faults: StoreFaults,
    /// Most bytes of blobs kept (`None`: [`DEFAULT_BLOB_QUOTA`]).
    pub blob_quota: Option<u64>,
}

/// The node's database. Cheap to share behind an `Arc`; redb serialises writers.
pub struct Store {
    /// The open database; `None` after an I/O error until it is opened again (at the next use).
    db: RwLock<Option<Arc<Database>>>,
    /// The database file.
    path: PathBuf,
    /// Failure counter and injected faults.
    options: StoreOptions,
    /// The last write error, until a write succeeds.
    last_error: Mutex<Option<String>>,
    /// The data-directory lock, held as long as the store is open.
    lock: DataDirLock,
    /// The blob files.
    blobs: BlobStore,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn seq_key(campaign: &CampaignId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(campaign.as_bytes());
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number in a message key.
fn seq_of(key: &[u8]) -> Option<u64> {
    key.get(32..40)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
}

fn pair_key(a: &[u8; 32], b: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(a);
    k[32..].copy_from_slice(b);
    k
}

/// The checksum of a record: blake3 of its key and value, truncated.
fn tag(key: &[u8], value: &[u8]) -> [u8; TAG_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(value);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
    t
}

/// A value as stored: its checksum, then the value.
fn frame(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG_LEN + value.len());
    out.extend_from_slice(&tag(key, value));
    out.extend_from_slice(value);
    out
}

/// The value of a stored record, or `None` when it fails its checksum.
fn unframe<'a>(key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    let (t, value) = stored.split_at_checked(TAG_LEN)?;
    (t == tag(key, value)).then_some(value)
}

/// What the dedupe index says about a message.
enum Indexed {
    /// Not stored.
    No,
    /// Stored, and its record reads back whole.
    Yes,
    /// The index entry or the record it points to is corrupt: drop both and store it again.
    Corrupt(Option<[u8; 40]>),
}

/// Looks a message up in the dedupe index and checks the record it points to.
fn lookup(
    ids: &impl ReadableTable<&'static [u8], &'static [u8]>,
    msgs: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: &MessageId,
) -> Result<Indexed, redb::Error> {
    let Some(entry) = ids.get(id.as_bytes().as_slice())? else {
        return Ok(Indexed::No);
    };
    let Some(key) =
        unframe(id.as_bytes(), entry.value()).and_then(|k| <[u8; 40]>::try_from(k).ok())
    else {
        return Ok(Indexed::Corrupt(None));
    };
    let whole = msgs
        .get(key.as_slice())?
        .is_some_and(|v| unframe(&key, v.value()).is_some());
    Ok(if whole {
        Indexed::Yes
    } else {
        Indexed::Corrupt(Some(key))
    })
}

/// Removes a corrupt message record and every index entry pointing at it.
fn drop_message(txn: &redb::WriteTransaction, key: &[u8; 40]) -> Result<(), redb::Error> {
    txn.open_table(MESSAGES)?.remove(key.as_slice())?;
    txn.open_table(MESSAGE_IDS)?
        .retain(|id, v| unframe(id, v).is_none_or(|k| k != key.as_slice()))?;
    Ok(())
}

/// Opens (creating if needed) the database file over the fault-injecting backend.
fn open_db(path: &Path, faults: &StoreFaults) -> Result<Database, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let db_err = |e: redb::DatabaseError| StoreError::Db {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    };
    let file = redb::backends::FileBackend::new(file).map_err(db_err)?;
    match Database::builder().create_with_backend(backend::Backend::new(file, faults.clone())) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Locked {
            data_dir: path.parent().unwrap_or(path).to_path_buf(),
            held_by: String::new(),
        }),
        Err(e) => Err(db_err(e)),
    }
}

impl Store {
    /// Locks `data_dir` and opens (creating if needed) `DATA_DIR/store.redb`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(DataDirLock::acquire(data_dir)?, StoreOptions::default())
    }

    /// Opens the store of a data directory already locked.
    pub fn open_with(lock: DataDirLock, options: StoreOptions) -> Result<Store, StoreError> {
        let path = lock.data_dir().join(STORE_FILE);
        let db = open_db(&path, &options.faults)?;
        let quota = options.blob_quota.unwrap_or(DEFAULT_BLOB_QUOTA);
        let blobs = BlobStore::open(
            &lock.data_dir().join(BLOBS_DIR),
            quota,
            options.faults.clone(),
        )?;
        let store = Store {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            options,
            last_error: Mutex::new(None),
            lock,
            blobs,
        };
        store.init()?;
        store.move_blobs_to_files()?;
        Ok(store)
    }

    /// Creates every table (so readers never meet a missing one) and checks the record format,
    /// converting a store of bare values.
    fn init(&self) -> Result<(), StoreError> {
        self.write(|txn| {
            for def in FRAMED.into_iter().chain([BLOBS]) {
                txn.open_table(def)?;
            }
            Ok(())
        })?;
        let meta = self.read_table(META)?;
        let found = match meta.get(FORMAT_KEY).map_err(|e| self.db_err(e))? {
            Some(v) => unframe(FORMAT_KEY, v.value()).and_then(|f| f.first().copied()),
            None => None,
        };
        let bare = found.is_none() && meta.len().map_err(|e| self.db_err(e))? == 0;
        drop(meta);
        match found {
            Some(FORMAT) => Ok(()),
            Some(found) => Err(StoreError::Format {
                path: self.path.clone(),
                found,
            }),
            None => self.write(|txn| {
                if bare {
                    // Written before records carried checksums: frame every value once.
                    for def in FRAMED {
                        let mut t = txn.open_table(def)?;
                        let rows: Vec<(Vec<u8>, Vec<u8>)> = t
                            .iter()?
                            .map(|r| r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
                            .collect::<Result<_, _>>()?;
                        for (k, v) in rows {
                            t.insert(k.as_slice(), frame(&k, &v).as_slice())?;
                        }
                    }
                }
                txn.open_table(META)?
                    .insert(FORMAT_KEY, frame(FORMAT_KEY, &[FORMAT]).as_slice())?;
                Ok(())
            }),
        }
    }

    /// Moves the blobs a store of an older version kept in the database into files, one
    /// commit per blob (a crash between the two leaves a copy in both: harmless).
    fn move_blobs_to_files(&self) -> Result<(), StoreError> {
        loop {
            let row = {
                let t = self.read_table(BLOBS)?;
                let first = t.first().map_err(|e| self.db_err(e))?;
                first.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
            };
            let Some((key, bytes)) = row else {
                return Ok(());
            };
            if let Ok(id) = <[u8; 32]>::try_from(key.as_slice()).map(BlobId)
                && BlobId::of_bytes(&bytes) == id
            {
                self.blobs.adopt(&id, &bytes)?;
            }
            self.write(|txn| {
                txn.open_table(BLOBS)?.remove(key.as_slice())?;
                Ok(())
            })?;
        }
    }

    /// The blob files.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data-directory lock this store holds.
    pub fn lock(&self) -> &DataDirLock {
        &self.lock
    }

    /// The last failed write (what the disk or redb said), until a write succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The open database, opening it again after an I/O error closed it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Ok(Arc::clone(db));
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = slot.as_ref() {
            return Ok(Arc::clone(db));
        }
        let db = Arc::new(open_db(&self.path, &self.options.faults)?);
        tracing::info!(path = %self.path.display(), "store opened again after an I/O error");
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }

    /// A redb error as a [`StoreError`]. An I/O error leaves redb's database unusable (every
    /// later call fails with `PreviousIo`), so it is closed; the next use opens it again.
    fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = e.into();
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            let closed = self
                .db
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if closed.is_some() {
                tracing::warn!(path = %self.path.display(), "store I/O error ({e}): closing the database to open it again");
            }
        }
        StoreError::Db {
            path: self.path.clone(),
            source: Box::new(e),
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// Logs a corrupt record that is being dropped (once: it is gone afterwards).
    fn report_corrupt(&self, what: &str) {
        tracing::warn!(
            path = %self.path.display(),
            "corrupt {what} in the store (checksum mismatch): dropped it; a peer's copy is stored again when it arrives"
        );
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// Runs `f` in one write transaction committed with `durability`; counts and remembers a
    /// failure, forgets it on success.
    fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        // A commit that is not made durable writes nothing to the disk yet: its success says
        // nothing of the disk, so it does not clear the last failed write.
        let durable = !matches!(durability, redb::Durability::None);
        let out = self.db().and_then(|db| {
            let commit = || -> Result<T, redb::Error> {
                let mut txn = db.begin_write()?;
                txn.set_durability(durability)?;
                let out = f(&txn)?;
                txn.commit()?;
                Ok(out)
            };
            commit().map_err(|e| self.db_err(e))
        });
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &out {
            Ok(_) if durable => *last = None,
            Ok(_) => {}
            Err(e) => {
                self.options.write_failures.inc();
                *last = Some(e.to_string());
            }
        }
        out
    }

    fn read_table(
        &self,
        def: Def,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.db_err(e))?;
        txn.open_table(def).map_err(|e| self.db_err(e))
    }

    /// Removes corrupt records of a table by key (after a read found them).
    fn drop_records(&self, def: Def, keys: &[Vec<u8>]) {
        if keys.is_empty() {
            return;
        }
        let dropped = self.write(|txn| {
            let mut t = txn.open_table(def)?;
            for k in keys {
                t.remove(k.as_slice())?;
            }
            Ok(())
        });
        if let Err(e) = dropped {
            tracing::error!("cannot drop corrupt records: {e}");
        }
    }

    /// The key this store belongs to: the node key recorded when it was first opened by a node.
    pub fn owner(&self) -> Result<Option<PeerKey>, StoreError> {
        let t = self.read_table(META)?;
        let v = t.get(OWNER_KEY).map_err(|e| self.db_err(e))?;
        match v {
            None => Ok(None),
            Some(v) => unframe(OWNER_KEY, v.value())
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .map(|k| Some(PeerKey(k)))
                .ok_or_else(|| self.corrupt("owner key")),
        }
    }

    /// Records `key` as the store's owner if it has none (or `take_over`); refuses another key
    /// with [`StoreError::OwnerChanged`].
    pub fn claim_owner(&self, key: &PeerKey, take_over: bool) -> Result<(), StoreError> {
        match self.owner() {
            Ok(Some(owner)) if owner == *key => return Ok(()),
            Ok(Some(owner)) if !take_over => {
                return Err(StoreError::OwnerChanged {
                    data_dir: self.lock.data_dir().to_path_buf(),
                    owner,
                    key: *key,
                });
            }
            Ok(Some(owner)) => {
                tracing::warn!(old = %owner, new = %key, "the store changes owner (--new-identity)");
            }
            Ok(None) => {}
            Err(StoreError::Corrupt { .. }) if take_over => {}
            Err(e) => return Err(e),
        }
        self.write(|txn| {
            txn.open_table(META)?
                .insert(OWNER_KEY, frame(OWNER_KEY, &key.0).as_slice())?;
            Ok(())
        })
    }

    /// Stores a campaign's signed spec; `false` if it was already there.
    pub fn put_campaign(&self, id: &CampaignId, signed: &[u8]) -> Result<bool, StoreError> {
        let key = id.as_bytes().as_slice();
        self.write(|txn| {
            let mut t = txn.open_table(CAMPAIGNS)?;
            if t.get(key)?
                .is_some_and(|v| unframe(key, v.value()).is_some())
            {
                return Ok(false);
            }
            t.insert(key, frame(key, signed).as_slice())?;
            Ok(true)
        })
    }

    /// Every stored campaign: id and signed spec, in id order. Corrupt ones are dropped.
    pub fn campaigns(&self) -> Result<Vec<(CampaignId, Vec<u8>)>, StoreError> {
        let t = self.read_table(CAMPAIGNS)?;
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            match (
                <[u8; 32]>::try_from(k.value()),
                unframe(k.value(), v.value()),
            ) {
                (Ok(id), Some(spec)) => out.push((CampaignId(id), spec.to_vec())),
                _ => {
                    self.report_corrupt("campaign record");
                    corrupt.push(k.value().to_vec());
                }
            }
        }
        drop(t);
        self.drop_records(CAMPAIGNS, &corrupt);
        Ok(out)
    }

    /// One campaign's signed spec (`None` also when its record was corrupt, and dropped).
    pub fn campaign(&self, id: &CampaignId) -> Result<Option<Vec<u8>>, StoreError> {
        let key = id.as_bytes().as_slice();
        let t = self.read_table(CAMPAIGNS)?;
        let spec = match t.get(key).map_err(|e| self.db_err(e))? {
            None => return Ok(None),
            Some(v) => unframe(key, v.value()).map(<[u8]>::to_vec),
        };
        drop(t);
        if spec.is_some() {
            return Ok(spec);
        }
        self.report_corrupt("campaign record");
        self.drop_records(CAMPAIGNS, &[key.to_vec()]);
        Ok(None)
    }

    /// Appends verified messages of one campaign in order, skipping those already stored (by
    /// id); returns how many were new. One durable commit for the whole batch.
    pub fn append_messages<'a>(
        &self,
        campaign: &CampaignId,
        messages: impl IntoIterator<Item = (MessageId, &'a [u8])>,
    ) -> Result<usize, StoreError> {
        self.append_with(redb::Durability::Immediate, campaign, messages)
    }

    /// Like [`Store::append_messages`] but without waiting for the disk: the messages are
    /// visible at once and reach the disk with the next durable commit ([`Store::flush`] or
    /// any other write). For messages received from peers, which a crash can only make us
    /// fetch again by sync; a consistent database is guaranteed either way.
    pub fn append_messages_lazy<'a>(
        &self,
        campaign: &CampaignId,
        messages: impl IntoIterator<Item = (MessageId, &'a [u8])>,
    ) -> Result<usize, StoreError> {
        self.append_with(redb::Durability::None, campaign, messages)
    }

    /// Makes every earlier commit durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.write(|_| Ok(()))
    }

    fn append_with<'a>(
        &self,
        durability: redb::Durability,
        campaign: &CampaignId,
        messages: impl IntoIterator<Item = (MessageId, &'a [u8])>,
    ) -> Result<usize, StoreError> {
        let mut repaired = 0;
        let added = self.write_with(durability, |txn| {
            let lo = seq_key(campaign, 0);
            let hi = seq_key(campaign, u64::MAX);
            let last = txn
                .open_table(MESSAGES)?
                .range(lo.as_slice()..=hi.as_slice())?
                .next_back()
                .map(|row| row.map(|(k, _)| seq_of(k.value())))
                .transpose()?;
            let mut next = match last {
                Some(Some(seq)) => seq + 1,
                Some(None) => return Err(redb::Error::Corrupted("message key".into())),
                None => 0,
            };
            let mut added = 0;
            for (id, bytes) in messages {
                let found = lookup(
                    &txn.open_table(MESSAGE_IDS)?,
                    &txn.open_table(MESSAGES)?,
                    &id,
                )?;
                match found {
                    Indexed::Yes => continue,
                    Indexed::No => {}
                    Indexed::Corrupt(key) => {
                        if let Some(key) = key {
                            drop_message(txn, &key)?;
                        }
                        repaired += 1;
                    }
                }
                let key = seq_key(campaign, next);
                txn.open_table(MESSAGES)?
                    .insert(key.as_slice(), frame(&key, bytes).as_slice())?;
                txn.open_table(MESSAGE_IDS)?.insert(
                    id.as_bytes().as_slice(),
                    frame(id.as_bytes(), &key).as_slice(),
                )?;
                next += 1;
                added += 1;
            }
            Ok(added)
        })?;
        if repaired > 0 {
            self.report_corrupt(&format!(
                "{repaired} message record(s), stored again from a new copy,"
            ));
        }
        Ok(added)
    }

    /// Whether a message is stored (and reads back whole: a corrupt record or index entry is
    /// dropped and reported as not stored, so the message is accepted and stored again).
    pub fn has_message(&self, id: &MessageId) -> Result<bool, StoreError> {
        let found = {
            let ids = self.read_table(MESSAGE_IDS)?;
            let msgs = self.read_table(MESSAGES)?;
            lookup(&ids, &msgs, id).map_err(|e| self.db_err(e))?
        };
        match found {
            Indexed::Yes => Ok(true),
            Indexed::No => Ok(false),
            Indexed::Corrupt(key) => {
                self.report_corrupt(&format!("message {id}"));
                self.write(|txn| {
                    txn.open_table(MESSAGE_IDS)?
                        .remove(id.as_bytes().as_slice())?;
                    if let Some(key) = key {
                        drop_message(txn, &key)?;
                    }
                    Ok(())
                })?;
                Ok(false)
            }
        }
    }

    /// Stored messages of one campaign from sequence number `from`, in order, up to about
    /// `max_bytes` (at least one message if any). Returns them and the next sequence number.
    /// Corrupt records are skipped and dropped, with their index entries.
    pub fn messages(
        &self,
        campaign: &CampaignId,
        from: u64,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        let t = self.read_table(MESSAGES)?;
        let lo = seq_key(campaign, from);
        let hi = seq_key(campaign, u64::MAX);
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        let mut size = 0;
        let mut next = from;
        for row in t
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(|e| self.db_err(e))?
        {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let Some(msg) = unframe(k.value(), v.value()) else {
                corrupt.extend(<[u8; 40]>::try_from(k.value()));
                next = seq_of(k.value()).map_or(next, |s| s + 1);
                continue;
            };
            if !out.is_empty() && size + msg.len() > max_bytes {
                break;
            }
            size += msg.len();
            let seq = seq_of(k.value()).ok_or_else(|| self.corrupt("message key"))?;
            next = seq + 1;
            out.push(msg.to_vec());
        }
        drop(t);
        if !corrupt.is_empty() {
            self.report_corrupt(&format!(
                "{} message record(s) of campaign {campaign}",
                corrupt.len()
            ));
            let dropped = self.write(|txn| corrupt.iter().try_for_each(|k| drop_message(txn, k)));
            if let Err(e) = dropped {
                tracing::error!("cannot drop corrupt messages: {e}");
            }
        }
        Ok((out, next))
    }

    /// How many messages of a campaign are stored.
    pub fn message_count(&self, campaign: &CampaignId) -> Result<u64, StoreError> {
        let t = self.read_table(MESSAGES)?;
        let lo = seq_key(campaign, 0);
        let hi = seq_key(campaign, u64::MAX);
        let last = t
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(|e| self.db_err(e))?
            .next_back();
        match last {
            None => Ok(0),
            Some(row) => {
                let (k, _) = row.map_err(|e| self.db_err(e))?;
                let seq = seq_of(k.value()).ok_or_else(|| self.corrupt("message key"))?;
                Ok(seq + 1)
            }
        }
    }

    /// Stores a job's result and the blobs it produced: the blobs first (each synced), then the
    /// result in one durable commit, so a stored result always finds its blobs. Blob ids are
    /// checked against their bytes.
    pub fn put_result(
        &self,
        campaign: &CampaignId,
        job: &JobId,
        result: &JobResult,
        blobs: &[(BlobId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        if let Some((id, _)) = blobs.iter().find(|(id, b)| BlobId::of_bytes(b) != *id) {
            return Err(self.corrupt(format!("blob {id}: bytes do not hash to the id")));
        }
        let encoded = postcard::to_allocvec(result)
            .map_err(|e| self.corrupt(format!("result of job {job}: {e}")))?;
        for (id, bytes) in blobs {
            self.noted(self.blobs.put(id, bytes, true))?;
        }
        let key = pair_key(campaign.as_bytes(), job.as_bytes());
        let framed = frame(&key, &encoded);
        self.write(|txn| {
            txn.open_table(RESULTS)?
                .insert(key.as_slice(), framed.as_slice())?;
            Ok(())
        })
    }

    /// The stored result of a job this node executed (`None` also when its record was corrupt,
    /// and dropped: the job then runs again).
    pub fn result(
        &self,
        campaign: &CampaignId,
        job: &JobId,
    ) -> Result<Option<JobResult>, StoreError> {
        let key = pair_key(campaign.as_bytes(), job.as_bytes());
        let t = self.read_table(RESULTS)?;
        let decoded = match t.get(key.as_slice()).map_err(|e| self.db_err(e))? {
            None => return Ok(None),
            Some(v) => unframe(&key, v.value()).and_then(|b| postcard::from_bytes(b).ok()),
        };
        drop(t);
        if decoded.is_none() {
            self.report_corrupt(&format!("result of job {job}"));
            self.drop_records(RESULTS, &[key.to_vec()]);
        }
        Ok(decoded)
    }

    /// How many job results this node holds for a campaign.
    pub fn result_count(&self, campaign: &CampaignId) -> Result<u64, StoreError> {
        let t = self.read_table(RESULTS)?;
        let lo = pair_key(campaign.as_bytes(), &[0; 32]);
        let hi = pair_key(campaign.as_bytes(), &[0xff; 32]);
        let n = t
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(|e| self.db_err(e))?
            .count();
        Ok(n as u64)
    }

    /// Stores a blob given here (an upload) after checking that its bytes hash to `id`;
    /// `false` if already there.
    pub fn put_blob(&self, id: &BlobId, bytes: &[u8]) -> Result<bool, StoreError> {
        self.noted(self.blobs.put(id, bytes, true))
    }

    /// A blob write's outcome, counted and remembered as a failed write when the disk failed
    /// (as every database write is); a success clears the last error.
    pub fn noted<T>(&self, r: Result<T, BlobError>) -> Result<T, StoreError> {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &r {
            Ok(_) => *last = None,
            Err(e @ BlobError::Io { .. }) => {
                self.options.write_failures.inc();
                *last = Some(e.to_string());
            }
            Err(_) => {}
        }
        Ok(r?)
    }

    /// A whole blob, checked against its id (a blob damaged on disk is dropped, and `None`
    /// returned, so that it is fetched again).
    pub fn blob(&self, id: &BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(id)?)
    }

    /// The ids of up to `limit` blobs held (own ones first).
    pub fn blob_ids(&self, limit: usize) -> Result<Vec<BlobId>, StoreError> {
        Ok(self.blobs.ids(limit))
    }

    /// The size of a blob, without reading it.
    pub fn blob_len(&self, id: &BlobId) -> Result<Option<u64>, StoreError> {
        Ok(self.blobs.len(id))
    }
}
