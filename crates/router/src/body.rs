//! What the router sends back: an app's streamed response, a page of its own, or a file.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::fs::File;
use tokio::io::Take;
use tokio_stream::Stream;
use tokio_util::io::ReaderStream;

use crate::cache::Recorder;
use crate::h1::RawHeaders;
use crate::upstream::UpstreamBody;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// One request under way to an instance, from the moment it is sent until its response body
/// is done (or dropped).
pub(crate) struct InFlightGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl InFlightGuard {
    pub(crate) fn new(counter: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> InFlightGuard {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlightGuard(counter)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The body of every response the router writes.
///
/// An enum rather than a boxed body so that the common cases cost no allocation; every
/// variant is `Unpin`, which keeps polling free of pin projections.
pub(crate) enum ResponseBody {
    /// The app's response, relayed as it arrives; the guard counts the request as under way
    /// to its instance until the body is done.
    App { body: UpstreamBody, _in_flight: InFlightGuard },
    /// The app's response, relayed as it arrives and copied into the cache on the way.
    Recording { body: UpstreamBody, recorder: Box<Recorder>, _in_flight: InFlightGuard },
    /// Something the router wrote itself: an error page, or nothing (HEAD, 304, 301).
    Page(Full<Bytes>),
    /// A file read from disk in chunks as the client takes them, so a large download
    /// holds only one chunk in memory. The `Take` caps it at the length announced in
    /// `Content-Length` even if the file grows meanwhile; a byte range is a `Take` after a seek.
    File(ReaderStream<Take<File>>),
}

impl ResponseBody {
    /// An empty body, for responses whose headers say everything.
    pub(crate) fn empty() -> ResponseBody {
        ResponseBody::Page(Full::default())
    }

    /// An app's headers that are not in the response's map (see [`RawHeaders`]).
    pub(crate) fn raw_headers(&self) -> Option<&RawHeaders> {
        match self {
            ResponseBody::App { body, .. } | ResponseBody::Recording { body, .. } => {
                Some(body.raw_headers())
            }
            ResponseBody::Page(_) | ResponseBody::File(_) => None,
        }
    }

    /// Gives `id` to the app's headers, to be written as the response's `X-Request-Id`
    /// with them (see [`RawHeaders`]); hands it back for a body without app headers, whose
    /// response's map takes it.
    pub(crate) fn attach_request_id(&mut self, id: HeaderValue) -> Option<HeaderValue> {
        match self {
            ResponseBody::App { body, .. } | ResponseBody::Recording { body, .. } => {
                body.raw_headers_mut().request_id = Some(id);
                None
            }
            ResponseBody::Page(_) | ResponseBody::File(_) => Some(id),
        }
    }

    /// Moves an app's headers into the response's map, for a response that is about to be
    /// read or changed by name, or sent by hyper.
    pub(crate) fn move_headers_into(&mut self, headers: &mut http::HeaderMap) {
        match self {
            ResponseBody::App { body, .. } | ResponseBody::Recording { body, .. } => {
                body.move_headers_into(headers);
            }
            ResponseBody::Page(_) | ResponseBody::File(_) => {}
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::App { body, .. } => Pin::new(body).poll_frame(cx),
            ResponseBody::Recording { body, recorder, .. } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    recorder.observe(data);
                }
                polled
            }
            ResponseBody::Page(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ResponseBody::File(chunks) => Pin::new(chunks)
                .poll_next(cx)
                .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data).map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::App { body, .. } | ResponseBody::Recording { body, .. } => {
                body.is_end_stream()
            }
            ResponseBody::Page(body) => body.is_end_stream(),
            // A file's end is only known by reading it; its length is in the headers.
            ResponseBody::File(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::App { body, .. } | ResponseBody::Recording { body, .. } => {
                body.size_hint()
            }
            ResponseBody::Page(body) => body.size_hint(),
            ResponseBody::File(_) => SizeHint::default(),
        }
    }
}
