//! A TCP stream that acknowledges what it reads at once, for the direct connections to nodes.
//!
//! sshd leaves Nagle's algorithm on for sessions without a pty, and SSH is request/response,
//! so Linux puts our end of the socket in delayed-ACK ("pingpong") mode. Whenever sshd has
//! written one packet and has a second one ready (the `echo $$` pid line, then the exit status;
//! the auth reply, then its global requests), Nagle holds the second until our ACK of the first
//! arrives, and that ACK waits for the 40 ms delayed-ACK timer: measured on the lab with
//! tcpdump, 44 ms of a 70 ms `exec -- true` was that wait. Re-arming `TCP_QUICKACK` after every
//! read sends the pending ACK now (the kernel drops out of quickack mode again by itself, so
//! once is not enough). One `setsockopt` per read; elsewhere than Linux this is a plain stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// [`TcpStream`] that sets `TCP_QUICKACK` after each read that returned data.
pub(crate) struct QuickAckStream(TcpStream);

impl QuickAckStream {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        QuickAckStream(tcp)
    }

    #[cfg(target_os = "linux")]
    fn ack_now(&self) {
        // A failure only means the ACK is delayed as before.
        let _ = set_quickack(&self.0, 1);
    }

    #[cfg(not(target_os = "linux"))]
    fn ack_now(&self) {}
}

/// `setsockopt(TCP_QUICKACK, on)`: 1 sends a pending ACK now and leaves delayed-ACK mode, 0
/// enters it.
#[cfg(target_os = "linux")]
fn set_quickack(tcp: &TcpStream, on: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket fd owned by `tcp`, and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

impl AsyncRead for QuickAckStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.ack_now();
        }
        r
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// 1 when the socket is in quickack mode, 0 in delayed-ACK (pingpong) mode.
    fn quickack(tcp: &TcpStream) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, out-pointers to a c_int and its length.
        let rc = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt(TCP_QUICKACK): {}", io::Error::last_os_error());
        v
    }

    // The delayed-ACK stall: after sshd's pid line, its exit status sat behind Nagle for 40 ms
    // waiting for our ACK. Every read must leave the socket out of delayed-ACK mode.
    #[tokio::test]
    async fn regression_exit_status_waited_40ms_for_a_delayed_ack() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, (mut server, _)) = (client.unwrap(), server.unwrap());
        let mut stream = QuickAckStream::new(client);
        for round in 0..3 {
            // What the kernel does to a request/response connection like SSH's.
            set_quickack(&stream.0, 0).unwrap();
            assert_eq!(quickack(&stream.0), 0, "round {round}: could not enter delayed-ACK mode");
            server.write_all(b"4242\n").await.unwrap();
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"4242\n");
            assert_eq!(quickack(&stream.0), 1, "round {round}: a read left the ACK delayed");
        }
    }
}
