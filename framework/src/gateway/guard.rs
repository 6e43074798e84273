//! Connections that make no progress are closed: a client that stops sending half-way through
//! its headers or body, sends nothing, or never reads its answer would otherwise hold a socket
//! (and a file descriptor, and the answer's buffers) for good. A few hundred such clients once
//! left the gateway unable to accept `/health`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// The gateway's listener: each connection it accepts is a [`Guarded`] stream.
pub struct GuardedListener {
    listener: TcpListener,
    idle: Duration,
}

impl GuardedListener {
    /// Closes a connection once a read or a write of it waits `idle` without progress.
    pub fn new(listener: TcpListener, idle: Duration) -> Self {
        Self { listener, idle }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        (Guarded::new(io, self.idle), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A stream whose reads and writes fail with [`io::ErrorKind::TimedOut`] once one has waited
/// `idle` without a byte moving. The HTTP server reads a connection while a request is being
/// answered too (to notice a client that left), so `idle` must exceed the longest answer.
pub struct Guarded<T> {
    io: T,
    idle: Duration,
    reading: Option<Pin<Box<Sleep>>>,
    writing: Option<Pin<Box<Sleep>>>,
}

impl<T> Guarded<T> {
    pub fn new(io: T, idle: Duration) -> Self {
        Self {
            io,
            idle,
            reading: None,
            writing: None,
        }
    }
}

/// The outcome of an I/O poll: progress clears the wait's deadline; waiting arms it, and once
/// it passes, the wait is an error.
fn bounded<R>(
    polled: Poll<io::Result<R>>,
    deadline: &mut Option<Pin<Box<Sleep>>>,
    idle: Duration,
    what: &str,
    cx: &mut Context<'_>,
) -> Poll<io::Result<R>> {
    if polled.is_ready() {
        *deadline = None;
        return polled;
    }
    let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => {
            *deadline = None;
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client's connection made no {what} progress in {idle:?}"),
            )))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        bounded(polled, &mut this.reading, this.idle, "read", cx)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        bounded(polled, &mut this.writing, this.idle, "write", cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        bounded(polled, &mut this.writing, this.idle, "write", cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        bounded(polled, &mut this.writing, this.idle, "write", cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        bounded(polled, &mut this.writing, this.idle, "write", cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Guarded;

    /// A peer that sends nothing fails a read, and one that reads nothing fails a write, once
    /// the limit has passed; a peer that keeps up is never cut off.
    #[tokio::test]
    async fn a_stalled_read_or_write_fails_after_the_limit_and_progress_resets_it() {
        let limit = Duration::from_millis(300);
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(ours, limit);
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), guarded.read(&mut buf))
            .await
            .expect("the read gave up by itself");
        assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limit, "{:?}", started.elapsed());

        // Bytes every 100 ms: each read makes progress, for three times the limit.
        let writer = tokio::spawn(async move {
            for _ in 0..9 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                peer.write_all(b"x").await.unwrap();
            }
            peer
        });
        for _ in 0..9 {
            assert_eq!(guarded.read(&mut buf).await.unwrap(), 1);
        }
        let _peer = writer.await.unwrap();

        // The peer never reads: the write fills the pipe and fails once the limit has passed.
        let started = Instant::now();
        let write = tokio::time::timeout(
            Duration::from_secs(5),
            guarded.write_all(&vec![0u8; 1 << 20]),
        )
        .await
        .expect("the write gave up by itself");
        assert_eq!(write.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
    }
}
