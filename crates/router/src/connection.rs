//! What the server knows about one visitor connection beyond what hyper tells it: when a
//! byte last moved either way, and how many requests are under way, so that a connection
//! idle for longer than [`crate::ServerLimits::idle_timeout`] can be closed.
//!
//! hyper's own header timeout already closes an HTTP/1.1 connection that waits too long
//! for a request head, but nothing in hyper closes an HTTP/2 connection that just sits
//! there, nor an HTTP/1.1 one sooner than that.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{BoxError, ResponseBody};

/// Activity on one connection, shared by its I/O wrapper, its requests and its watchdog.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    /// Milliseconds after `started` that a byte last moved or a request ended.
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Marks a request as under way until the guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(Arc::clone(self))
    }

    /// Resolves once no request has been under way and no byte has moved for `limit`.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        loop {
            let quiet = self.quiet_for();
            let wait = if self.busy.load(Ordering::SeqCst) > 0 {
                // A request under way is never idle; look again a whole period later, so a
                // connection is closed at most twice the limit after its last request.
                limit
            } else if quiet >= limit {
                return;
            } else {
                limit - quiet
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request under way on a connection; see [`Activity::busy`].
#[derive(Debug)]
pub(crate) struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's stream, noting each read or write that moved bytes in its [`Activity`].
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as under way until it is done.
pub(crate) struct ServedBody {
    body: ResponseBody,
    _busy: BusyGuard,
}

impl ServedBody {
    pub(crate) fn new(body: ResponseBody, busy: BusyGuard) -> ServedBody {
        ServedBody { body, _busy: busy }
    }
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::DEADLINE;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_waits_for_requests_to_end_and_bytes_to_stop() {
        let activity = Activity::new();
        let limit = Duration::from_millis(50);
        let busy = activity.busy();
        let idle = tokio::time::timeout(limit * 3, activity.idle_for(limit)).await;
        assert!(idle.is_err(), "a connection with a request under way went idle");
        drop(busy);
        let started = Instant::now();
        tokio::time::timeout(DEADLINE, activity.idle_for(limit)).await.unwrap();
        assert!(started.elapsed() >= limit, "idle before the limit: {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn reads_and_writes_count_as_activity() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut watched = Watched::new(server, Arc::clone(&activity));
        let quiet = Duration::from_millis(20);
        let become_quiet = || async {
            while activity.quiet_for() < quiet {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };

        tokio::time::timeout(DEADLINE, become_quiet()).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        watched.read_exact(&mut byte).await.unwrap();
        assert!(activity.quiet_for() < quiet, "a read did not count");

        tokio::time::timeout(DEADLINE, become_quiet()).await.unwrap();
        watched.write_all(b"y").await.unwrap();
        assert!(activity.quiet_for() < quiet, "a write did not count");
    }
}
