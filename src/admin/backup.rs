//! `POST /api/spool/backup` (admin only, audited): the spool's backup
//! archive (`spool::backup`) streamed as the response body while the
//! relay goes on taking notifications. The spool's backend walks it off
//! the runtime and hands the archive over in chunks through a small bounded channel,
//! so neither the spool nor the archive is ever held in memory: a slow
//! client slows the walk down. A failure midway ends the body with an
//! error (the client sees a cut transfer, and an archive without its
//! manifest is refused by every reader anyway).

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame};
use serde_json::json;
use tokio::sync::mpsc;

use super::respond::{audit, no_parameters, ApiError, Call};
use crate::listen::slots::RequestUnderWay;

/// The admin listener's answers: whole, or the streamed archive.
pub(super) type AdminBody = Either<Full<Bytes>, Streamed>;

/// Bytes handed to the response per chunk.
const CHUNK: usize = 256 << 10;
/// Chunks waiting for the client at most: what a slow client costs.
const CHUNKS_QUEUED: usize = 8;
/// How often a long backup logs how far it got (ms).
const LOG_EVERY_MS: i64 = 10_000;

/// `POST /api/spool/backup` (the route table checks the caller is an admin).
pub(super) async fn post_backup(call: Call) -> Result<Response<AdminBody>, ApiError> {
    let Call {
        admin,
        caller,
        query,
        under_way,
        ..
    } = call;
    no_parameters(&query)?;
    let created_ms = admin.clock.now_ms();
    audit(
        &admin,
        &caller,
        "spool.backup",
        "spool",
        json!({ "counts": admin.spool.counts().notifications }),
    )
    .await?;
    let (chunks, body) = mpsc::channel(CHUNKS_QUEUED);
    let spool = admin.spool.clone();
    let by = caller.name.clone();
    // The admin's clock times the walk for the log (a test's clock too).
    let clock = admin.clock;
    // The backend writes the archive off the runtime; `ChunkWriter` hands
    // each chunk over with a blocking send there.
    tokio::spawn(async move {
        let out = ChunkWriter {
            chunks: chunks.clone(),
            buffer: Vec::with_capacity(CHUNK),
        };
        let started_ms = clock.now_ms();
        let mut logged_ms = started_ms;
        let progress = move |counts: &crate::spool::backup::ArchiveCounts| {
            if clock.now_ms().saturating_sub(logged_ms) >= LOG_EVERY_MS {
                logged_ms = clock.now_ms();
                tracing::info!(
                    notifications = counts.notifications,
                    "spool backup under way"
                );
            }
        };
        match spool.backup(out, created_ms, progress).await {
            Ok((manifest, _)) => tracing::info!(
                by = %by,
                notifications = manifest.counts.notifications,
                deliveries = manifest.counts.deliveries,
                newest = manifest.newest.as_deref().unwrap_or("-"),
                took_ms = clock.now_ms().saturating_sub(started_ms).max(0),
                "spool backup sent"
            ),
            Err(err) => {
                tracing::warn!(by = %by, error = %err, "spool backup failed");
                let _ = chunks.send(Err(io::Error::other(err.to_string()))).await;
            }
        }
    });
    let mut response = Response::new(Either::Right(Streamed {
        chunks: body,
        _under_way: under_way,
    }));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zstd"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"webhook-relay-spool.backup\""),
    );
    Ok(response)
}

/// The archive's bytes into the channel, [`CHUNK`] at a time; a client
/// gone makes every write fail, which ends the walk.
struct ChunkWriter {
    chunks: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A response body read from the channel the walk fills.
pub(super) struct Streamed {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    /// Held until the body is dropped: the connection has a request under
    /// way while the archive streams.
    _under_way: RequestUnderWay,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}
