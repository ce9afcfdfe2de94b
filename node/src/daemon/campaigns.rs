//! Following campaigns: restoring them from the store, adding them (submitted here or learned
//! from peers), and driving each campaign's protocol [`Peer`] — feeding it inputs and carrying
//! out its outputs (publish, execute, report).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hivemesh_protocol::envelope::{AnySigned, Context, Signed};
use hivemesh_protocol::error::{DecodeError, PeerAction};
use hivemesh_protocol::id::{CampaignId, MessageId};
use hivemesh_protocol::identity::{Keypair, PeerKey};
use hivemesh_protocol::message::Kind;
use hivemesh_protocol::peer::{Peer, PeerConfig, PeerError, PeerInput, PeerOutput};
use hivemesh_protocol::spec::{CampaignSpec, Features, Search};
use libp2p::PeerId;
use libp2p::gossipsub::{IdentTopic, TopicHash};

use super::{Event, EventLoop, status};
use crate::admission::NotAccepted;
use crate::metrics::Metrics;
use crate::net::{CAMPAIGNS_TOPIC, MAX_SYNC_BYTES, campaign_topic, topic_score_params};
use crate::store::StoreError;
use crate::{hex, unix_now};

/// Most live (unfinished) campaigns a node follows (announcements past it are ignored).
/// Finished campaigns do not count: they stay readable, and leave room for new ones.
pub const MAX_CAMPAIGNS: usize = 64;
/// Most campaigns, finished ones included, a node holds.
pub const MAX_HELD_CAMPAIGNS: usize = 1024;

/// Why a campaign is not followed.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The node follows [`MAX_CAMPAIGNS`] live campaigns already.
    #[error(
        "this node already follows {MAX_CAMPAIGNS} unfinished campaigns: submit again when one \
         has finished"
    )]
    TooMany,
    /// The node holds [`MAX_HELD_CAMPAIGNS`] campaigns, finished ones included.
    #[error("this node holds {MAX_HELD_CAMPAIGNS} campaigns already (finished ones included)")]
    TooManyHeld,
    /// The submitter has as many live campaigns here as the policy allows.
    #[error(
        "submitter {submitter} already has {max} unfinished campaigns on this node: submit again \
         when one has finished"
    )]
    SubmitterQuota {
        /// The submitter's key (short form).
        submitter: String,
        /// The quota (`[accept] campaigns_per_submitter`).
        max: usize,
    },
    /// The operator's policy does not follow it.
    #[error(transparent)]
    NotAccepted(#[from] NotAccepted),
    /// The protocol refused the spec.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The stored spec does not verify.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Gossipsub refused the campaign's topic.
    #[error(transparent)]
    Subscribe(#[from] libp2p::gossipsub::SubscriptionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A campaign this node follows.
pub(super) struct Campaign {
    /// Its spec.
    pub(super) spec: Arc<CampaignSpec>,
    /// Who signed (submitted) it.
    pub(super) submitter: PeerKey,
    /// The protocol participant.
    pub(super) peer: Peer,
    /// Its gossip topic.
    pub(super) topic: IdentTopic,
}

/// The campaigns this node follows and what it needs to follow more.
pub(super) struct Campaigns {
    /// The node's signing key (each campaign's peer signs with it).
    pub(super) key: Keypair,
    /// The campaigns, by id.
    pub(super) map: BTreeMap<CampaignId, Campaign>,
    /// Campaign gossip topics, to their campaign.
    pub(super) topics: HashMap<TopicHash, CampaignId>,
    /// The topic campaigns are announced on.
    pub(super) announce_topic: IdentTopic,
}

impl Campaigns {
    /// No campaigns yet.
    pub(super) fn new(key: Keypair) -> Campaigns {
        Campaigns {
            key,
            map: BTreeMap::new(),
            topics: HashMap::new(),
            announce_topic: IdentTopic::new(CAMPAIGNS_TOPIC),
        }
    }

    /// When the earliest unfinished campaign wants a tick, and at the latest a second after
    /// `last_tick`. The second counts from the last tick, not from now: the loop wakes for
    /// other reasons (the status snapshot every 250 ms), and a second from each wake-up would
    /// never come, leaving peers that no message drives (a node alone in its campaign) to wait
    /// for their next deadline before taking a new generation's jobs.
    pub(super) fn next_wakeup(&self, last_tick: tokio::time::Instant) -> tokio::time::Instant {
        let now = unix_now();
        let soonest = self
            .map
            .values()
            .filter(|c| !c.peer.finished())
            .filter_map(|c| c.peer.next_wakeup())
            .min();
        let fallback = last_tick + Duration::from_secs(1);
        let at = match soonest {
            Some(t) => {
                let wait = Duration::from_millis(t.as_millis().saturating_sub(now.as_millis()));
                (tokio::time::Instant::now() + wait).min(fallback)
            }
            None => fallback,
        };
        at.max(tokio::time::Instant::now() + Duration::from_millis(1))
    }

    /// Whether `id` is followed and not finished.
    pub(super) fn running(&self, id: &CampaignId) -> bool {
        self.map.get(id).is_some_and(|c| !c.peer.finished())
    }

    /// Whether one more campaign of `submitter` fits: under [`MAX_HELD_CAMPAIGNS`] in all,
    /// [`MAX_CAMPAIGNS`] live, and `per_submitter` live of this submitter's.
    fn room_for(&self, submitter: &PeerKey, per_submitter: usize) -> Result<(), CampaignError> {
        if self.map.len() >= MAX_HELD_CAMPAIGNS {
            return Err(CampaignError::TooManyHeld);
        }
        let live = self.map.values().filter(|c| !c.peer.finished());
        let (mut all, mut theirs) = (0, 0);
        for c in live {
            all += 1;
            theirs += usize::from(c.submitter == *submitter);
        }
        if all >= MAX_CAMPAIGNS {
            return Err(CampaignError::TooMany);
        }
        if theirs >= per_submitter {
            return Err(CampaignError::SubmitterQuota {
                submitter: submitter.short(),
                max: per_submitter,
            });
        }
        Ok(())
    }
}

/// A signed campaign spec, or why the bytes are not one.
pub(super) fn decode_campaign(
    bytes: &[u8],
    ctx: &Context,
) -> Result<Signed<CampaignSpec>, DecodeError> {
    match AnySigned::verify_and_decode(bytes, ctx)? {
        AnySigned::Campaign(s) => Ok(s),
        other => Err(DecodeError::KindMismatch {
            expected: Kind::Campaign,
            found: other.kind(),
        }),
    }
}

impl EventLoop {
    /// Restores every stored campaign (replaying its messages).
    pub(super) fn restore_campaigns(&mut self) {
        match self.store.campaigns() {
            Ok(stored) => {
                for (id, signed) in stored {
                    if let Err(e) = self.restore_campaign(id, &signed) {
                        tracing::error!(campaign = %id, "cannot restore campaign: {e}");
                    }
                }
            }
            Err(e) => tracing::error!("cannot list the stored campaigns: {e}"),
        }
    }

    /// Ticks every unfinished campaign.
    pub(super) fn tick_all(&mut self) {
        let ids: Vec<CampaignId> = self.campaigns.map.keys().copied().collect();
        for id in ids {
            if self.campaigns.running(&id) {
                self.drive(id, PeerInput::Tick);
            }
        }
    }

    /// Starts following a campaign whose signed spec is stored, replaying its messages.
    fn restore_campaign(&mut self, id: CampaignId, signed: &[u8]) -> Result<(), CampaignError> {
        let signed = decode_campaign(signed, &Context::sync(id))?;
        let submitter = signed.signer();
        // The operator may have narrowed the policy since: it applies to stored campaigns too.
        self.config.admission.check(signed.message(), &submitter)?;
        self.follow(signed.message().clone(), submitter)?;
        let mut from = 0;
        let mut replayed = 0u64;
        loop {
            let (msgs, next) = self.store.messages(&id, from, MAX_SYNC_BYTES)?;
            if msgs.is_empty() {
                break;
            }
            for bytes in msgs {
                match AnySigned::verify_and_decode(&bytes, &Context::sync(id)) {
                    Ok(msg) => {
                        for (_, reason, _) in self.drive(id, PeerInput::Replay(msg)) {
                            // Stored before it was known to add nothing (a late vote, a copy):
                            // harmless.
                            if !matches!(reason, DecodeError::Unwanted { .. }) {
                                tracing::warn!(campaign = %id, "replay: stored message refused: {reason}");
                            }
                        }
                        replayed += 1;
                    }
                    Err(e) => tracing::warn!(campaign = %id, "skipping a stored message: {e}"),
                }
            }
            from = next;
        }
        tracing::info!(campaign = %id, replayed, "campaign restored from the store");
        self.drive(id, PeerInput::Tick);
        Ok(())
    }

    /// Creates the campaign's peer and subscribes to its topic.
    fn follow(&mut self, spec: CampaignSpec, submitter: PeerKey) -> Result<(), CampaignError> {
        let id = spec.id();
        if self.campaigns.map.contains_key(&id) {
            return Ok(());
        }
        if self.campaigns.map.len() >= MAX_HELD_CAMPAIGNS {
            return Err(CampaignError::TooManyHeld);
        }
        // A federated campaign's members are the nodes that offer its private data: others
        // follow it (relay, vote when asked, evaluate nothing) with no slots.
        let offers = match &spec.search {
            Search::Federated(p) if self.jobs.executor.offers().any(|n| n == p.private_data) => {
                let exec = &self.jobs.executor;
                let refusal = super::private_data_refusal(p, self.config.private_max_epsilon)
                    .map(|why| format!("{why} (see --private-max-epsilon)"))
                    .or_else(|| {
                        exec.private_features_refusal(&p.private_data, &p.features)
                            .map(|why| format!("its features do not fit the data here: {why}"))
                    });
                match refusal {
                    Some(why) => {
                        tracing::warn!(
                            campaign = %id,
                            "not giving private data {:?} to this campaign: {why}",
                            p.private_data
                        );
                        false
                    }
                    None => true,
                }
            }
            Search::Federated(_) => false,
            _ => true,
        };
        if let (true, Search::Federated(p)) = (offers, &spec.search)
            && p.features != Features::Values
        {
            // The features of this node's private data, before the first round needs them.
            let exec = Arc::clone(&self.jobs.executor);
            let (name, features) = (p.private_data.clone(), p.features);
            tokio::task::spawn_blocking(move || exec.warm_private_features(&name, &features));
        }
        let capacity = if offers {
            self.config.slots_for(spec.backend)
        } else {
            0
        };
        let peer = Peer::new(
            spec.clone(),
            self.campaigns.key.clone(),
            PeerConfig {
                capacity,
                audit: self.config.audit,
                ..PeerConfig::default()
            },
            unix_now(),
        )?
        // The announcement's signer: its regenesis ends a stalled closure vote (ADR 0006).
        .with_creator(submitter);
        let topic = campaign_topic(&id);
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        gs.subscribe(&topic)?;
        if let Err(e) = gs.set_topic_params(topic.clone(), topic_score_params()) {
            tracing::warn!("topic score params: {e}");
        }
        self.campaigns.topics.insert(topic.hash(), id);
        let already: Vec<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&topic.hash()))
            .map(|(p, _)| *p)
            .collect();
        self.campaigns.map.insert(
            id,
            Campaign {
                spec: Arc::new(spec),
                submitter,
                peer,
                topic,
            },
        );
        self.metrics.campaigns.set(self.campaigns.map.len() as i64);
        self.emit(Event::CampaignAdded(id));
        for peer in already {
            self.emit(Event::Subscribed { peer, campaign: id });
        }
        Ok(())
    }

    /// A signed campaign spec from the network or a client (`announce`: publish it on the
    /// announcement topic): store it and follow.
    pub(super) fn add_campaign(
        &mut self,
        signed: &Signed<CampaignSpec>,
        announce: bool,
    ) -> Result<(), CampaignError> {
        let id = signed.message().id();
        if self.campaigns.map.contains_key(&id) {
            return Ok(());
        }
        let submitter = signed.signer();
        let admission = &self.config.admission;
        admission.check(signed.message(), &submitter)?;
        self.campaigns
            .room_for(&submitter, admission.campaigns_per_submitter)?;
        self.store.put_campaign(&id, signed.bytes())?;
        self.follow(signed.message().clone(), submitter)?;
        tracing::info!(campaign = %id, name = %signed.message().name, "following campaign");
        if announce {
            self.publish(
                self.campaigns.announce_topic.clone(),
                signed.bytes().to_vec(),
            );
        }
        self.drive(id, PeerInput::Tick);
        Ok(())
    }

    /// Feeds one input to a campaign's peer and carries out everything that follows; returns
    /// the peer's verdicts on messages (rejections).
    pub(super) fn drive(
        &mut self,
        id: CampaignId,
        input: PeerInput,
    ) -> Vec<(MessageId, DecodeError, PeerAction)> {
        let mut verdicts = Vec::new();
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let Some(c) = self.campaigns.map.get_mut(&id) else {
                return verdicts;
            };
            let outputs = c.peer.handle(input, unix_now());
            let topic = c.topic.clone();
            for out in outputs {
                match out {
                    PeerOutput::Broadcast(msg) => {
                        if msg.kind() == Kind::AuditReport {
                            Metrics::count(&self.metrics.audits, "outcome", "reported");
                        }
                        self.store_message(id, msg.id(), msg.bytes(), true);
                        self.publish(topic.clone(), msg.bytes().to_vec());
                    }
                    PeerOutput::Execute(job) => {
                        queue.extend(self.on_execute(id, job));
                    }
                    PeerOutput::Rejected {
                        id: mid,
                        error,
                        action,
                    } => verdicts.push((mid, error, action)),
                    PeerOutput::Closed {
                        generation,
                        root,
                        jobs,
                    } => {
                        self.on_closed(id, generation, root);
                        self.prefetch_closed_step_blobs(id, generation, &jobs);
                    }
                    PeerOutput::Finished => {
                        tracing::info!(campaign = %id, "campaign finished");
                        self.emit(Event::Finished(id));
                    }
                }
            }
        }
        verdicts
    }

    /// A generation closed: count it and tell subscribers.
    fn on_closed(&mut self, id: CampaignId, generation: u32, root: [u8; 32]) {
        tracing::info!(campaign = %id, generation, root = %hex(&root), "generation closed");
        if let Some(c) = self.campaigns.map.get(&id) {
            status::count_closure(c, generation, &self.metrics);
        }
        self.emit(Event::Closed {
            campaign: id,
            generation,
            root,
        });
    }
}
