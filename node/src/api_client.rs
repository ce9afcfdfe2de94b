//! A minimal HTTP/1.1 client for the node's own API, used by `hivemesh campaign …` and
//! `hivemesh status` to talk to a running `hivemesh run` (usually on 127.0.0.1). One request per
//! connection (`Connection: close`); bodies are read whole, up to [`MAX_RESPONSE`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body read.
pub const MAX_RESPONSE: usize = 512 * 1024 * 1024;
/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// No node answers at the address.
    #[error("cannot reach the node's API at {addr}: {source} (is `hivemesh run` running?)")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke or timed out.
    #[error("API request to {addr} failed: {reason}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The response was not HTTP.
    #[error("malformed response from {addr}: {reason}")]
    Malformed {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: Malformed,
    },
}

/// What is wrong with a response that is not the HTTP/1.1 this client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// No blank line after the headers.
    #[error("no end of headers")]
    NoEndOfHeaders,
    /// The headers are not UTF-8.
    #[error("headers are not UTF-8")]
    HeadersNotUtf8,
    /// Nothing before the blank line.
    #[error("empty response")]
    Empty,
    /// The first line has no status code.
    #[error("bad status line {0:?}")]
    StatusLine(String),
    /// `content-length` is not a number.
    #[error("bad content-length")]
    ContentLength,
    /// Fewer body bytes than `content-length` says.
    #[error("body shorter than content-length")]
    ShortBody,
    /// The body is over [`MAX_RESPONSE`].
    #[error("body over {MAX_RESPONSE} bytes")]
    TooLarge,
    /// A chunk size line is cut off.
    #[error("truncated chunk size")]
    TruncatedChunkSize,
    /// A chunk size is not hex.
    #[error("bad chunk size")]
    ChunkSize,
    /// A chunk is cut off.
    #[error("truncated chunk")]
    TruncatedChunk,
    /// A chunk's closing CRLF is missing.
    #[error("truncated chunk end")]
    TruncatedChunkEnd,
}

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` field of a JSON error body, or the body itself.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| self.text())
    }
}

/// Sends one request to `addr`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<ApiResponse, ApiClientError> {
    tokio::time::timeout(TIMEOUT, request_inner(addr, method, path, headers, body))
        .await
        .map_err(|_| ApiClientError::Io {
            addr,
            reason: format!("no answer within {} s", TIMEOUT.as_secs()),
        })?
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<ApiResponse, ApiClientError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ApiClientError::Connect { addr, source })?;
    let io = |e: std::io::Error| ApiClientError::Io {
        addr,
        reason: e.to_string(),
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    let sent = stream.write_all(body).await;
    answer(addr, &mut stream, sent).await
}

/// Reads the (small) answer to a request whose body went out with result `sent`. A node that
/// refuses early (a body over a limit, a full store) answers and closes its side while the
/// body is still going out: its answer is read all the same, and the send's error counts only
/// when no answer came.
async fn answer(
    addr: SocketAddr,
    stream: &mut TcpStream,
    sent: std::io::Result<()>,
) -> Result<ApiResponse, ApiClientError> {
    let io = |e: std::io::Error| ApiClientError::Io {
        addr,
        reason: e.to_string(),
    };
    let mut raw = Vec::new();
    let read = stream
        .take(MAX_RESPONSE as u64 + 64 * 1024)
        .read_to_end(&mut raw)
        .await;
    if raw.is_empty() || read.is_err() && sent.is_ok() {
        sent.map_err(io)?;
        read.map_err(io)?;
    }
    parse_response(&raw).map_err(|reason| ApiClientError::Malformed { addr, reason })
}

/// Sends a file as the body of one request (streamed: never held whole), and reads the
/// (small) answer. No overall time limit: a large upload takes as long as it takes.
pub async fn upload_file(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    file: &std::path::Path,
) -> Result<ApiResponse, ApiClientError> {
    let io = |e: std::io::Error| ApiClientError::Io {
        addr,
        reason: e.to_string(),
    };
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(|e| ApiClientError::Io {
            addr,
            reason: format!("{}: {e}", file.display()),
        })?;
    let len = f.metadata().await.map_err(io)?.len();
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ApiClientError::Connect { addr, source })?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {len}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    let sent = tokio::io::copy(&mut f, &mut stream).await.map(drop);
    answer(addr, &mut stream, sent).await
}

/// A GET whose 200 body is streamed into `out` (never held whole); the blake3 hash of what
/// was written and its size come back. Any other status comes back as an error response.
pub async fn download_to(
    addr: SocketAddr,
    path: &str,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<Result<(blake3::Hash, u64), ApiResponse>, ApiClientError> {
    let io = |e: std::io::Error| ApiClientError::Io {
        addr,
        reason: e.to_string(),
    };
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ApiClientError::Connect { addr, source })?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    // The head, read until the blank line (at most 64 KiB).
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if raw.len() > 64 * 1024 {
            return Err(ApiClientError::Malformed {
                addr,
                reason: Malformed::NoEndOfHeaders,
            });
        }
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err(ApiClientError::Malformed {
                addr,
                reason: Malformed::NoEndOfHeaders,
            });
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let status = parse_response(&raw[..end])
        .map(|r| r.status)
        .or_else(|_| {
            // The head alone: a status line is all that is needed here.
            std::str::from_utf8(&raw[..end])
                .ok()
                .and_then(|h| h.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or(Malformed::StatusLine(String::new()))
        })
        .map_err(|reason| ApiClientError::Malformed { addr, reason })?;
    if status != 200 {
        (&mut stream)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        let r =
            parse_response(&raw).map_err(|reason| ApiClientError::Malformed { addr, reason })?;
        return Ok(Err(r));
    }
    let mut hasher = blake3::Hasher::new();
    let mut total = (raw.len() - end) as u64;
    hasher.update(&raw[end..]);
    out.write_all(&raw[end..]).await.map_err(io)?;
    loop {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).await.map_err(io)?;
        total += n as u64;
    }
    out.flush().await.map_err(io)?;
    Ok(Ok((hasher.finalize(), total)))
}

/// Parses a whole HTTP/1.1 response (fixed length, chunked, or read to close).
pub fn parse_response(raw: &[u8]) -> Result<ApiResponse, Malformed> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(Malformed::NoEndOfHeaders)?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| Malformed::HeadersNotUtf8)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(Malformed::Empty)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Malformed::StatusLine(status_line.into()))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
        if k == "content-length" {
            length = Some(v.parse::<usize>().map_err(|_| Malformed::ContentLength)?);
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or(Malformed::ShortBody)?.to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > MAX_RESPONSE {
        return Err(Malformed::TooLarge);
    }
    Ok(ApiResponse { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(Malformed::TruncatedChunkSize)?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| Malformed::ChunkSize)?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| Malformed::ChunkSize)?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or(Malformed::TruncatedChunk)?;
        out.extend_from_slice(chunk);
        if out.len() > MAX_RESPONSE {
            return Err(Malformed::TooLarge);
        }
        rest = rest.get(size + 2..).ok_or(Malformed::TruncatedChunkEnd)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixed_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello!!")
            .expect("parse");
        assert_eq!((r.status, r.body.as_slice()), (201, b"hello".as_slice()));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .expect("parse");
        assert_eq!(r.body, b"abcde");
        assert_eq!(
            parse_response(b"garbage").expect_err("garbage"),
            Malformed::NoEndOfHeaders
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
    }
}
