//! Writes that failed (a full disk, an I/O error), kept in memory and retried.
//!
//! A job's result is *acknowledged* — fed to the protocol, published, its blobs announced —
//! only after it is stored. When the store refuses it, the result waits here (at most
//! [`PENDING_RESULTS`]; beyond that the job is abandoned, so the protocol hands it to others)
//! and is stored and acknowledged at a later sync tick, once the disk takes it. Messages that
//! could not be stored (own and received ones; they were already handled) wait here too, in
//! arrival order, at most [`PENDING_MESSAGES`]: a message dropped beyond that is fetched again by
//! sync, and an own one is re-derived at the next start. Nothing here needs a restart.

use std::collections::VecDeque;

use hivemesh_protocol::id::{BlobId, CampaignId, JobId, MessageId};
use hivemesh_protocol::message::JobResult;

use super::{Event, EventLoop};

/// Job results, with their blobs, waiting for the store.
pub const PENDING_RESULTS: usize = 16;
/// Messages waiting for the store.
pub const PENDING_MESSAGES: usize = 4096;

/// A job's result that is not stored yet.
#[derive(Debug)]
pub(super) struct PendingResult {
    /// Its campaign.
    pub(super) campaign: CampaignId,
    /// The job.
    pub(super) job: JobId,
    /// The result.
    pub(super) result: JobResult,
    /// The blobs it produced.
    pub(super) blobs: Vec<(BlobId, Vec<u8>)>,
}

/// A message that is not stored yet.
#[derive(Debug)]
struct PendingMessage {
    /// Its campaign.
    campaign: CampaignId,
    /// Its id.
    id: MessageId,
    /// The signed envelope.
    bytes: Vec<u8>,
}

/// What waits for the store, oldest first.
#[derive(Debug, Default)]
pub(super) struct PendingWrites {
    /// Results not yet stored (not yet acknowledged).
    results: VecDeque<PendingResult>,
    /// Messages not yet stored.
    messages: VecDeque<PendingMessage>,
}

impl PendingWrites {
    /// How many writes wait.
    pub(super) fn len(&self) -> usize {
        self.results.len() + self.messages.len()
    }
}

impl EventLoop {
    /// Stores a message (`durable`: wait for the disk, for own messages), or keeps it for a
    /// retry when the store refuses it. While older messages wait, it waits behind them, so the
    /// store keeps the arrival order.
    pub(super) fn store_message(
        &mut self,
        campaign: CampaignId,
        id: MessageId,
        bytes: &[u8],
        durable: bool,
    ) {
        if self.pending.messages.is_empty() {
            let stored = if durable {
                self.store.append_messages(&campaign, [(id, bytes)])
            } else {
                self.store.append_messages_lazy(&campaign, [(id, bytes)])
            };
            match stored {
                Ok(_) => return,
                Err(e) => tracing::error!("cannot store message {id} (kept to retry): {e}"),
            }
        }
        if self.pending.messages.len() >= PENDING_MESSAGES {
            tracing::warn!(
                "too many messages wait for the store: message {id} dropped (sync fetches it again)"
            );
            return;
        }
        self.pending.messages.push_back(PendingMessage {
            campaign,
            id,
            bytes: bytes.to_vec(),
        });
    }

    /// Keeps a result the store refused, to store and acknowledge it later; abandons the job
    /// when too many wait already.
    pub(super) fn hold_result(&mut self, held: PendingResult) {
        if self.pending.results.len() >= PENDING_RESULTS {
            let reason = "the store refuses writes and too many results wait for it".to_string();
            self.abandon(held.campaign, held.job, reason);
            return;
        }
        self.emit(Event::ResultHeld {
            campaign: held.campaign,
            job: held.job,
        });
        self.pending.results.push_back(held);
    }

    /// Tries the waiting writes again, oldest first; stops at the first that fails. A result
    /// stored now is acknowledged now.
    pub(super) fn retry_pending_writes(&mut self) {
        while let Some(p) = self.pending.results.pop_front() {
            if let Err(e) = self
                .store
                .put_result(&p.campaign, &p.job, &p.result, &p.blobs)
            {
                tracing::warn!(
                    pending = self.pending.len() + 1,
                    "store still refuses writes: {e}"
                );
                self.pending.results.push_front(p);
                return;
            }
            tracing::info!(job = %p.job, "result stored after a failed write");
            self.acknowledge_result(p);
        }
        while let Some(m) = self.pending.messages.pop_front() {
            if let Err(e) = self
                .store
                .append_messages_lazy(&m.campaign, [(m.id, m.bytes.as_slice())])
            {
                tracing::warn!(
                    pending = self.pending.len() + 1,
                    "store still refuses writes: {e}"
                );
                self.pending.messages.push_front(m);
                return;
            }
        }
    }

    /// How many writes wait for the store (shown by `/status`).
    pub(super) fn pending_writes(&self) -> usize {
        self.pending.len()
    }
}
