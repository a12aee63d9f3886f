//! The body of the relay's answers, which can keep the request's unread
//! body alive until the answer is out. Over HTTP/2 the request stream is
//! then let go only after the answer's last frame, so h2 resets it with
//! `NO_ERROR` (RFC 9113 §8.1: "answered early") instead of `CANCEL` before
//! the answer. (The handler first reads and drops a bounded amount of an
//! unread upload, see `handler::drain`; this is for what is left.)

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A complete answer, with the request body it may keep.
#[derive(Debug)]
pub struct AnswerBody {
    data: Option<Bytes>,
    len: u64,
    /// Dropped with the answer, after its last frame.
    _kept: Option<Incoming>,
}

impl AnswerBody {
    pub fn new(data: Bytes) -> AnswerBody {
        let len = data.len() as u64;
        AnswerBody {
            data: Some(data).filter(|d| !d.is_empty()),
            len,
            _kept: None,
        }
    }

    /// Keeps `body`, the request's unread body, as the module doc says.
    pub fn keeping(mut self, body: Incoming) -> AnswerBody {
        if !body.is_end_stream() {
            self._kept = Some(body);
        }
        self
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}
