//! The body of the relay's answers, which can keep the request's unread
//! body alive until the answer is out, so an early refusal (401, 404, 413,
//! 503) reaches the client instead of a reset:
//! - over HTTP/2 the request stream is let go only after the answer's last
//!   frame, so h2 resets it with `NO_ERROR` (RFC 9113 §8.1), which clients
//!   read as "answered early", not with `CANCEL` before the answer;
//! - over HTTP/1.x the answer is written first, then up to [`DRAIN_BYTES`]
//!   of the rest of the upload are read and thrown away (for at most
//!   [`DRAIN_TIME`]), so the connection is not closed with unread data,
//!   which makes the kernel send a reset that can destroy the answer in
//!   the client's buffers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Most of an unread upload read and dropped after an early answer.
pub const DRAIN_BYTES: u64 = 1 << 20;
/// Longest time spent on that.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A complete answer, with the request body it may keep.
#[derive(Debug)]
pub struct Answer {
    data: Option<Bytes>,
    len: u64,
    rest: Option<Rest>,
}

#[derive(Debug)]
enum Rest {
    /// HTTP/2: dropped with the answer, after its last frame.
    Keep(#[allow(dead_code)] Incoming),
    /// HTTP/1.x: read and thrown away before the answer ends.
    Drain {
        body: Incoming,
        left: u64,
        until: Pin<Box<tokio::time::Sleep>>,
    },
}

impl Answer {
    pub fn new(data: Bytes) -> Answer {
        let len = data.len() as u64;
        Answer {
            data: Some(data).filter(|d| !d.is_empty()),
            len,
            rest: None,
        }
    }

    /// Keeps `body`, the request's unread body, as the module doc says.
    pub fn keeping(mut self, body: Incoming, version: http::Version) -> Answer {
        if body.is_end_stream() {
            return self;
        }
        self.rest = Some(if version == http::Version::HTTP_2 {
            Rest::Keep(body)
        } else {
            Rest::Drain {
                body,
                left: DRAIN_BYTES,
                until: Box::pin(tokio::time::sleep(DRAIN_TIME)),
            }
        });
        self
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(Rest::Drain { body, left, until }) = &mut self.rest {
            loop {
                if until.as_mut().poll(cx).is_ready() {
                    break;
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => {
                        let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                        match left.checked_sub(len) {
                            Some(rest) => *left = rest,
                            None => break,
                        }
                    }
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => break,
                }
            }
            self.rest = None;
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !matches!(self.rest, Some(Rest::Drain { .. }))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}
