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
//! - **blobs**: content-addressed bytes (id = blake3 of the bytes), checked on the way in and on
//!   the way out.
//!
//! Every commit of the node's own work (campaigns, own messages, results, blobs) is durable
//! (`fsync`) before it returns; messages received from peers are committed without waiting for
//! the disk and made durable by the next durable commit or the periodic flush (a crash can lose
//! only messages that sync fetches again). Values are stored as they travel (signed
//! envelopes) or as postcard; every read is checked, so a corrupt record is reported as
//! [`StoreError::Corrupt`] and never panics the node.

use std::path::{Path, PathBuf};

use hivemesh_protocol::id::{BlobId, CampaignId, JobId, MessageId};
use hivemesh_protocol::message::JobResult;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The store's file name inside the data directory.
pub const STORE_FILE: &str = "store.redb";

/// Campaign id → the signed `Campaign` envelope.
const CAMPAIGNS: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("campaigns");
/// campaign id ‖ sequence number (big-endian) → a signed message envelope.
const MESSAGES: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("messages");
/// Message id → campaign id ‖ sequence number (the dedupe index).
const MESSAGE_IDS: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("message_ids");
/// campaign id ‖ job id → postcard [`JobResult`].
const RESULTS: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("results");
/// Blob id → bytes.
const BLOBS: TableDefinition<'static, &'static [u8], &'static [u8]> = TableDefinition::new("blobs");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (another `hivemesh run` on the same data directory) holds the database.
    #[error("the store {path} is in use by another hivemesh process (one node per data directory)")]
    Locked {
        /// The database file.
        path: PathBuf,
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
}

/// The node's database. Cheap to share behind an `Arc`; redb serialises writers.
pub struct Store {
    db: Database,
    path: PathBuf,
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

impl Store {
    /// Opens (creating if needed) `DATA_DIR/store.redb`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(STORE_FILE);
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db {
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path });
            }
            Err(e) => {
                return Err(StoreError::Db {
                    path,
                    source: Box::new(e.into()),
                });
            }
        };
        let store = Store { db, path };
        // Create every table once, so readers never meet a missing table.
        store.write(|txn| {
            for def in [CAMPAIGNS, MESSAGES, MESSAGE_IDS, RESULTS, BLOBS] {
                txn.open_table(def)?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// Runs `f` in one write transaction committed with `durability`.
    fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        txn.set_durability(durability).map_err(|e| self.db_err(e))?;
        let out = f(&txn).map_err(|e| self.db_err(e))?;
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(out)
    }

    fn read_table(
        &self,
        def: TableDefinition<'static, &'static [u8], &'static [u8]>,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        txn.open_table(def).map_err(|e| self.db_err(e))
    }

    /// Stores a campaign's signed spec; `false` if it was already there.
    pub fn put_campaign(&self, id: &CampaignId, signed: &[u8]) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(CAMPAIGNS)?;
            if t.get(id.as_bytes().as_slice())?.is_some() {
                return Ok(false);
            }
            t.insert(id.as_bytes().as_slice(), signed)?;
            Ok(true)
        })
    }

    /// Every stored campaign: id and signed spec, in id order.
    pub fn campaigns(&self) -> Result<Vec<(CampaignId, Vec<u8>)>, StoreError> {
        let t = self.read_table(CAMPAIGNS)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let id: [u8; 32] = k
                .value()
                .try_into()
                .map_err(|_| self.corrupt("campaign key"))?;
            out.push((CampaignId(id), v.value().to_vec()));
        }
        Ok(out)
    }

    /// One campaign's signed spec.
    pub fn campaign(&self, id: &CampaignId) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.read_table(CAMPAIGNS)?;
        let v = t
            .get(id.as_bytes().as_slice())
            .map_err(|e| self.db_err(e))?;
        Ok(v.map(|v| v.value().to_vec()))
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
        self.write_with(durability, |txn| {
            let mut msgs = txn.open_table(MESSAGES)?;
            let mut ids = txn.open_table(MESSAGE_IDS)?;
            let lo = seq_key(campaign, 0);
            let hi = seq_key(campaign, u64::MAX);
            let mut next = match msgs.range(lo.as_slice()..=hi.as_slice())?.next_back() {
                Some(row) => {
                    let (k, _) = row?;
                    let seq = seq_of(k.value())
                        .ok_or_else(|| redb::Error::Corrupted("message key".into()))?;
                    seq + 1
                }
                None => 0,
            };
            let mut added = 0;
            for (id, bytes) in messages {
                if ids.get(id.as_bytes().as_slice())?.is_some() {
                    continue;
                }
                let key = seq_key(campaign, next);
                msgs.insert(key.as_slice(), bytes)?;
                ids.insert(id.as_bytes().as_slice(), key.as_slice())?;
                next += 1;
                added += 1;
            }
            Ok(added)
        })
    }

    /// Whether a message is stored.
    pub fn has_message(&self, id: &MessageId) -> Result<bool, StoreError> {
        let t = self.read_table(MESSAGE_IDS)?;
        Ok(t.get(id.as_bytes().as_slice())
            .map_err(|e| self.db_err(e))?
            .is_some())
    }

    /// Stored messages of one campaign from sequence number `from`, in order, up to about
    /// `max_bytes` (at least one message if any). Returns them and the next sequence number.
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
        let mut size = 0;
        let mut next = from;
        for row in t
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(|e| self.db_err(e))?
        {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let v = v.value();
            if !out.is_empty() && size + v.len() > max_bytes {
                break;
            }
            size += v.len();
            let seq = seq_of(k.value()).ok_or_else(|| self.corrupt("message key"))?;
            next = seq + 1;
            out.push(v.to_vec());
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

    /// Stores a job's result and the blobs it produced, in one durable commit. Blob ids are
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
        self.write(|txn| {
            let mut blob_t = txn.open_table(BLOBS)?;
            for (id, bytes) in blobs {
                blob_t.insert(id.as_bytes().as_slice(), bytes.as_slice())?;
            }
            let mut t = txn.open_table(RESULTS)?;
            let key = pair_key(campaign.as_bytes(), job.as_bytes());
            t.insert(key.as_slice(), encoded.as_slice())?;
            Ok(())
        })
    }

    /// The stored result of a job this node executed.
    pub fn result(
        &self,
        campaign: &CampaignId,
        job: &JobId,
    ) -> Result<Option<JobResult>, StoreError> {
        let t = self.read_table(RESULTS)?;
        let key = pair_key(campaign.as_bytes(), job.as_bytes());
        match t.get(key.as_slice()).map_err(|e| self.db_err(e))? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|_| self.corrupt(format!("result of job {job}"))),
        }
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

    /// Stores a blob after checking that its bytes hash to `id`; `false` if already there.
    pub fn put_blob(&self, id: &BlobId, bytes: &[u8]) -> Result<bool, StoreError> {
        if BlobId::of_bytes(bytes) != *id {
            return Err(self.corrupt(format!("blob {id}: bytes do not hash to the id")));
        }
        self.write(|txn| {
            let mut t = txn.open_table(BLOBS)?;
            if t.get(id.as_bytes().as_slice())?.is_some() {
                return Ok(false);
            }
            t.insert(id.as_bytes().as_slice(), bytes)?;
            Ok(true)
        })
    }

    /// A blob, checked against its id (a mismatch is [`StoreError::Corrupt`]).
    pub fn blob(&self, id: &BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.read_table(BLOBS)?;
        match t
            .get(id.as_bytes().as_slice())
            .map_err(|e| self.db_err(e))?
        {
            None => Ok(None),
            Some(v) => {
                let bytes = v.value().to_vec();
                if BlobId::of_bytes(&bytes) != *id {
                    return Err(self.corrupt(format!("blob {id}")));
                }
                Ok(Some(bytes))
            }
        }
    }

    /// Up to `len` bytes of a blob from `offset` (clamped to its end), and its total size:
    /// what a peer asking for one chunk gets, without copying the rest. (The blob was checked
    /// against its id when stored; the fetching peer checks the whole again.)
    pub fn blob_chunk(
        &self,
        id: &BlobId,
        offset: u64,
        len: usize,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let t = self.read_table(BLOBS)?;
        let v = t
            .get(id.as_bytes().as_slice())
            .map_err(|e| self.db_err(e))?;
        Ok(v.map(|v| {
            let bytes = v.value();
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = start.saturating_add(len).min(bytes.len());
            (bytes.len() as u64, bytes[start..end].to_vec())
        }))
    }

    /// The ids of up to `limit` blobs held (in id order).
    pub fn blob_ids(&self, limit: usize) -> Result<Vec<BlobId>, StoreError> {
        let t = self.read_table(BLOBS)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.db_err(e))?.take(limit) {
            let (k, _) = row.map_err(|e| self.db_err(e))?;
            let id: [u8; 32] = k.value().try_into().map_err(|_| self.corrupt("blob key"))?;
            out.push(BlobId(id));
        }
        Ok(out)
    }

    /// The size of a blob, without reading it whole into the caller.
    pub fn blob_len(&self, id: &BlobId) -> Result<Option<u64>, StoreError> {
        let t = self.read_table(BLOBS)?;
        let v = t
            .get(id.as_bytes().as_slice())
            .map_err(|e| self.db_err(e))?;
        Ok(v.map(|v| v.value().len() as u64))
    }
}
