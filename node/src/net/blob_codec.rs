//! The codec of `/hivemesh/blob/2`: the same length-prefixed postcard frames as
//! [`super::PostcardCodec`], byte for byte, but a part's bytes are written straight from the
//! buffer they were read into and read straight into the buffer they are verified and written
//! from, not copied through one postcard buffer on each side (a quarter of a transfer's
//! memory copies; BENCHMARKS.md "Datasets as blobs").

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite};
use libp2p::StreamProtocol;
use libp2p::request_response;

use super::wire::{BlobRequest, BlobResponse, MAX_REQUEST_LEN, MAX_RESPONSE_LEN};
use super::{encode, read_frame, read_len, write_frame, write_pieces};

/// Postcard's tag of [`BlobResponse::Part`] (its variant index as a varint).
const PART_TAG: u32 = 1;
/// The longest head of a part: its tag, its index and its length, each a varint.
const MAX_PART_HEAD: usize = 1 + 10 + 10;

/// The blob protocol's codec (requests as [`super::PostcardCodec`] has them).
#[derive(Debug, Clone, Copy, Default)]
pub struct BlobCodec;

/// Writes a response: a part as its head and then its bytes, in place.
pub(super) async fn write_response<T>(io: &mut T, resp: &BlobResponse) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let BlobResponse::Part { index, data } = resp else {
        return write_frame(io, resp, MAX_RESPONSE_LEN).await;
    };
    let head = encode(&(PART_TAG, *index, data.len() as u64))?;
    write_pieces(io, &[&head, data], MAX_RESPONSE_LEN).await
}

/// Reads a response: a part's bytes go straight into their own buffer.
pub(super) async fn read_response<T>(io: &mut T) -> io::Result<BlobResponse>
where
    T: AsyncRead + Unpin + Send,
{
    let len = read_len(io, MAX_RESPONSE_LEN).await?;
    let mut body = vec![0u8; len.min(MAX_PART_HEAD)];
    io.read_exact(&mut body).await?;
    let head = postcard::take_from_bytes::<(u32, u64, u64)>(&body);
    let Ok(((PART_TAG, index, n), rest)) = head else {
        // Anything else is small or rare: read whole and decoded as postcard would.
        body.resize(len, 0);
        io.read_exact(&mut body[len.min(MAX_PART_HEAD)..]).await?;
        return super::decode_body(&body, MAX_RESPONSE_LEN);
    };
    let head_len = body.len() - rest.len();
    if head_len as u64 + n != len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a part of {n} bytes in a frame of {len}"),
        ));
    }
    // The head's read took the first bytes of the part already.
    body.drain(..head_len);
    let have = body.len();
    body.resize(n as usize, 0);
    io.read_exact(&mut body[have..]).await?;
    Ok(BlobResponse::Part { index, data: body })
}

impl request_response::Codec for BlobCodec {
    type Protocol = StreamProtocol;
    type Request = BlobRequest;
    type Response = BlobResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlobRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_REQUEST_LEN).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlobResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_response(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: BlobRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, MAX_REQUEST_LEN).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: BlobResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_response(io, &resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use hivemesh_protocol::id::BlobId;

    /// The frame the generic codec writes for `resp`.
    async fn generic(resp: &BlobResponse) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        write_frame(&mut out, resp, MAX_RESPONSE_LEN).await.unwrap();
        out.into_inner()
    }

    fn responses() -> Vec<BlobResponse> {
        let data = |n: usize| (0..n).map(|i| (i * 7) as u8).collect::<Vec<u8>>();
        vec![
            BlobResponse::Part {
                index: 0,
                data: data(256 * 1024),
            },
            BlobResponse::Part {
                index: 1 << 40,
                data: data(5),
            },
            BlobResponse::Part {
                index: 3,
                data: Vec::new(),
            },
            BlobResponse::Hashes {
                total: 9 << 20,
                from: 8,
                cvs: vec![[5; 32]; 300],
            },
            BlobResponse::NotFound,
        ]
    }

    #[test]
    fn frames_are_the_generic_codecs_bytes_both_ways() {
        futures::executor::block_on(async {
            for resp in responses() {
                let mut out = Cursor::new(Vec::new());
                write_response(&mut out, &resp).await.unwrap();
                let bytes = out.into_inner();
                assert_eq!(
                    bytes,
                    generic(&resp).await,
                    "{:?}",
                    std::mem::discriminant(&resp)
                );
                let back = read_response(&mut Cursor::new(bytes)).await.unwrap();
                assert_eq!(back, resp);
            }
        });
    }

    #[test]
    fn a_part_whose_length_disagrees_with_its_frame_or_that_is_cut_short_is_refused() {
        futures::executor::block_on(async {
            let resp = BlobResponse::Part {
                index: 2,
                data: vec![9; 1000],
            };
            let good = generic(&resp).await;
            // The frame says one byte more than the part's head and bytes.
            let mut longer = good.clone();
            longer[..4].copy_from_slice(&(good.len() as u32 - 3).to_be_bytes());
            longer.push(0);
            let err = read_response(&mut Cursor::new(longer)).await.unwrap_err();
            assert!(err.to_string().contains("a part of 1000 bytes"), "{err}");
            // Cut short.
            let err = read_response(&mut Cursor::new(good[..good.len() - 1].to_vec()))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            // Over the limit: refused from the prefix alone.
            let mut huge = (MAX_RESPONSE_LEN as u32 + 1).to_be_bytes().to_vec();
            huge.extend([1, 2, 3]);
            let err = read_response(&mut Cursor::new(huge)).await.unwrap_err();
            assert!(err.to_string().contains("over the limit"), "{err}");
        });
    }

    #[test]
    fn requests_travel_as_the_generic_codec_has_them() {
        futures::executor::block_on(async {
            let req = BlobRequest::Part {
                id: BlobId::of_bytes(b"x"),
                index: 4,
            };
            let mut out = Cursor::new(Vec::new());
            let mut codec = BlobCodec;
            let proto = super::super::BLOB_PROTOCOL;
            request_response::Codec::write_request(&mut codec, &proto, &mut out, req.clone())
                .await
                .unwrap();
            let mut input = Cursor::new(out.into_inner());
            let back = request_response::Codec::read_request(&mut codec, &proto, &mut input)
                .await
                .unwrap();
            assert_eq!(back, req);
        });
    }
}
