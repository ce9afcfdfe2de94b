//! The request–response wire: ledger-sync and blob-transfer messages, their size limits, and
//! the pure decoders of a frame's body that [`super::PostcardCodec`] runs on every frame read.
//!
//! Everything here is bytes from the network, so it is fuzzed (`node/fuzz`: `sync_request`,
//! `sync_response`, `blob_request`, `blob_response`). The fuzz crate compiles this file
//! directly (to fuzz without building the whole node), so it imports nothing from the node
//! crate: only std, serde, postcard and the protocol crate.

use std::io;

use hivemesh_protocol::envelope::{MAX_CAMPAIGN_ENVELOPE_LEN, MAX_ENVELOPE_LEN};
use hivemesh_protocol::id::{BlobId, CampaignId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest sync response, in bytes of messages.
pub const MAX_SYNC_BYTES: usize = 1 << 20;
/// Most campaigns listed in one sync response.
pub const MAX_SYNC_CAMPAIGNS: usize = 256;
/// Largest request frame.
pub const MAX_REQUEST_LEN: usize = 4 * 1024;
/// Largest response frame.
/// (A response holds up to `MAX_SYNC_BYTES` of messages, or one message when that one is larger,
/// and the campaigns.)
pub const MAX_RESPONSE_LEN: usize = if MAX_SYNC_BYTES > MAX_ENVELOPE_LEN {
    MAX_SYNC_BYTES
} else {
    MAX_ENVELOPE_LEN
} + MAX_SYNC_CAMPAIGNS * (MAX_CAMPAIGN_ENVELOPE_LEN + 8);

/// A ledger-sync request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Which campaigns do you have? (their signed specs)
    Campaigns,
    /// A campaign's stored messages, from your sequence number `from`.
    Messages {
        /// The campaign.
        campaign: CampaignId,
        /// The responder's sequence number to start at (0: from the beginning).
        from: u64,
    },
}

/// A ledger-sync response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// Signed campaign specs.
    Campaigns(Vec<Vec<u8>>),
    /// Stored messages (signed envelopes, each verified by the receiver) and the sequence
    /// number to ask from next.
    Messages {
        /// The campaign (every envelope must be bound to it).
        campaign: CampaignId,
        /// The envelopes.
        messages: Vec<Vec<u8>>,
        /// Where to continue.
        next: u64,
    },
    /// The responder does not know the campaign.
    Unknown,
}

/// Most chaining values in one [`BlobResponse::Hashes`] (256 KiB of them).
pub const MAX_HASHES: u32 = 8192;

/// A blob request (ADR 0008): the outboard, then parts checked against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// The blob's size and up to `max` (at most [`MAX_HASHES`]) chaining values of its
    /// outboard from part `from`; `max` 0 asks only whether the peer holds it, and its size.
    Hashes {
        /// The blob.
        id: BlobId,
        /// The first part.
        from: u64,
        /// How many values.
        max: u32,
    },
    /// Part `index` of the blob (256 KiB; the last is shorter).
    Part {
        /// The blob.
        id: BlobId,
        /// Which part.
        index: u64,
    },
}

impl BlobRequest {
    /// The blob asked for.
    pub fn id(&self) -> BlobId {
        match self {
            BlobRequest::Hashes { id, .. } | BlobRequest::Part { id, .. } => *id,
        }
    }
}

/// A blob response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    /// The blob's size and chaining values of its outboard from part `from`.
    Hashes {
        /// The blob's size.
        total: u64,
        /// The first part.
        from: u64,
        /// The values (none for a one-part blob).
        cvs: Vec<[u8; 32]>,
    },
    /// One part.
    Part {
        /// Which part.
        index: u64,
        /// Its bytes (as one byte string: postcard's encoding is the same as a sequence of
        /// `u8`, without a visit per byte).
        #[serde(with = "byte_string")]
        data: Vec<u8>,
    },
    /// The responder does not have the blob.
    NotFound,
}

/// `Vec<u8>` as a serde byte string (postcard: a varint length and the bytes, exactly as a
/// sequence of `u8`, but copied at once rather than visited byte by byte).
mod byte_string {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Refuses a frame of `len` bytes over `limit` (checked before any of it is buffered).
pub fn check_len(len: usize, limit: usize) -> io::Result<()> {
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {limit}"),
        ));
    }
    Ok(())
}

/// Decodes a frame's body (without its length prefix): at most `limit` bytes of postcard.
pub fn decode_body<M: DeserializeOwned>(body: &[u8], limit: usize) -> io::Result<M> {
    check_len(body.len(), limit)?;
    postcard::from_bytes(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a sync request frame's body, as the codec does.
pub fn decode_sync_request(body: &[u8]) -> io::Result<SyncRequest> {
    decode_body(body, MAX_REQUEST_LEN)
}

/// Decodes a sync response frame's body, as the codec does.
pub fn decode_sync_response(body: &[u8]) -> io::Result<SyncResponse> {
    decode_body(body, MAX_RESPONSE_LEN)
}

/// Decodes a blob request frame's body, as the codec does.
pub fn decode_blob_request(body: &[u8]) -> io::Result<BlobRequest> {
    decode_body(body, MAX_REQUEST_LEN)
}

/// Decodes a blob response frame's body, as the codec does.
pub fn decode_blob_response(body: &[u8]) -> io::Result<BlobResponse> {
    decode_body(body, MAX_RESPONSE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<M: Serialize>(m: &M) -> Vec<u8> {
        postcard::to_allocvec(m).expect("encodes")
    }

    #[test]
    fn every_message_decodes_from_its_encoding() {
        let campaign = CampaignId([3; 32]);
        for r in [
            SyncRequest::Campaigns,
            SyncRequest::Messages { campaign, from: 9 },
        ] {
            assert_eq!(decode_sync_request(&encode(&r)).expect("decodes"), r);
        }
        for r in [
            SyncResponse::Campaigns(vec![vec![1, 2], vec![]]),
            SyncResponse::Messages {
                campaign,
                messages: vec![vec![4; 10]],
                next: 11,
            },
            SyncResponse::Unknown,
        ] {
            assert_eq!(decode_sync_response(&encode(&r)).expect("decodes"), r);
        }
        let id = BlobId::of_bytes(b"x");
        for r in [
            BlobRequest::Hashes {
                id,
                from: 3,
                max: MAX_HASHES,
            },
            BlobRequest::Part { id, index: 5 },
        ] {
            assert_eq!(decode_blob_request(&encode(&r)).expect("decodes"), r);
        }
        for r in [
            BlobResponse::Hashes {
                total: 3 << 20,
                from: 0,
                cvs: vec![[7; 32]; MAX_HASHES as usize],
            },
            BlobResponse::Part {
                index: 2,
                data: vec![1; 256 * 1024],
            },
            BlobResponse::NotFound,
        ] {
            assert_eq!(decode_blob_response(&encode(&r)).expect("decodes"), r);
        }
    }

    #[test]
    fn a_part_is_encoded_as_a_sequence_of_bytes_would_be() {
        #[derive(Serialize)]
        enum Plain {
            _Hashes,
            Part { index: u64, data: Vec<u8> },
        }
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let plain = encode(&Plain::Part {
            index: 7,
            data: data.clone(),
        });
        let ours = encode(&BlobResponse::Part { index: 7, data });
        assert_eq!(plain, ours, "the wire format is unchanged");
    }

    #[test]
    fn oversized_truncated_and_unknown_bodies_are_refused() {
        let request = encode(&SyncRequest::Messages {
            campaign: CampaignId([3; 32]),
            from: 9,
        });
        assert!(decode_sync_request(&request[..request.len() - 1]).is_err());
        assert!(decode_sync_request(&[7]).is_err(), "no such variant");
        assert!(decode_sync_request(&[]).is_err());
        let mut long = encode(&SyncRequest::Campaigns);
        long.resize(MAX_REQUEST_LEN + 1, 0);
        let e = decode_sync_request(&long).expect_err("over the limit");
        assert!(e.to_string().contains("over the limit"), "{e}");
        // A length prefix that claims more than the frame holds.
        assert!(decode_blob_response(&[0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
