//! One client connection over TCP or TLS (RFC 8656 section 3.1), sans-IO: bytes from the socket
//! go in, whole STUN and ChannelData messages for the TURN server come out, messages from the
//! server go in and bytes for the socket come out. A worker keeps one [`StreamConn`] per accepted
//! connection next to its socket; the connection never reads a clock or touches the socket.
//!
//! The rules that keep a hostile client from holding memory or descriptors:
//! - Input is framed as it arrives ([`uturn_proto::stream::Framer`]): at most one partial message
//!   (64 KiB) is held, plus what one read delivered.
//! - Output is capped ([`StreamLimits::max_outbound`]): a client that does not read while the
//!   server keeps answering (or relaying to it) is closed when the cap is reached, instead of
//!   buffering without bound.
//! - Timers close slow, stalled and half-open connections: the first message (TLS handshake
//!   included) must arrive within [`StreamLimits::handshake_timeout`]; a partial message may not
//!   sit longer than [`StreamLimits::partial_timeout`] (a trickle of bytes does not keep a
//!   connection alive); a connection that sends no message for [`StreamLimits::idle_timeout`]
//!   is closed; output that the socket does not take for [`StreamLimits::stall_timeout`] is a
//!   client that stopped reading, or a peer that is gone without a FIN.
//!
//! After a ConnectionBind (RFC 6062 section 5.4) the connection is spliced: [`StreamConn::splice`]
//! ends framing and the bytes both ways are the peer's, passed through as they are (decrypted and
//! encrypted for TLS). Then only the output cap and the stall timer apply, and the worker reads
//! from the peer no more than [`StreamConn::outbound_room`], which pushes back on the peer
//! instead of closing.
//!
//! # Driving it
//! ```text
//! on readable:  n = read(sock, buf); conn.receive(now, &buf[..n])?;       (Err: close)
//!               while let Some(m) = conn.next_message() { m?; server.handle_client(.., m, ..)
//!                   -> transmit: conn.send(now, bytes)? }
//! on writable:  n = write(sock, conn.pending_output()); conn.consumed(now, n)
//! on EOF:       close after flushing pending_output()
//! on timer:     conn.handle_timeout(now)?   (wake at conn.poll_timeout())
//! ```

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uturn_proto::stream::{Frame, Framer, FramingError};

/// The bounds and timers of one connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most bytes waiting for the socket. Past it the connection is closed (framed mode) or the
    /// peer is not read from (spliced mode).
    pub max_outbound: usize,
    /// From accept to the first complete message (TLS handshake included).
    pub handshake_timeout: Duration,
    /// How long the start of a message may wait for its rest.
    pub partial_timeout: Duration,
    /// How long a connection may go without a complete message. Clients refresh allocations
    /// at least every 10 minutes by default (RFC 8656 section 7.2), so a little more than that.
    pub idle_timeout: Duration,
    /// How long output may wait with the socket taking none of it.
    pub stall_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_outbound: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
            partial_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(660),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the connection must be closed. After an error, [`StreamConn::pending_output`] may still
/// hold a TLS alert worth a best-effort write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CloseReason {
    #[error("the byte stream is not STUN or ChannelData: {0}")]
    Framing(#[from] FramingError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("more than {0} bytes waiting for a client that does not read")]
    OutboundFull(usize),
    #[error("no complete message (or TLS handshake) within the handshake timeout")]
    HandshakeTimeout,
    #[error("a partial message waited longer than the partial-message timeout")]
    PartialTimeout,
    #[error("no message within the idle timeout")]
    IdleTimeout,
    #[error("the socket took no output within the stall timeout")]
    Stalled,
    #[error("the client closed the connection")]
    ClosedByClient,
}

/// Whether the connection still carries TURN, or is a spliced RFC 6062 data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Framed,
    Spliced,
}

/// One client connection. See the [module documentation](self).
#[derive(Debug)]
pub struct StreamConn {
    tls: Option<Box<rustls::ServerConnection>>,
    framer: Framer,
    mode: Mode,
    /// Plaintext from the client in spliced mode, for the peer.
    raw_in: Vec<u8>,
    /// Bytes for the socket: `out[out_start..]`.
    out: Vec<u8>,
    out_start: usize,
    limits: StreamLimits,
    opened: Instant,
    /// The last complete message; `None` until the first.
    last_message: Option<Instant>,
    /// Since when a partial message has been waiting.
    partial_since: Option<Instant>,
    /// Since when output has been waiting without the socket taking any.
    stalled_since: Option<Instant>,
    /// The client sent EOF or close_notify.
    client_closed: bool,
}

impl StreamConn {
    /// A plain TCP connection accepted at `now`.
    pub fn plain(now: Instant, limits: StreamLimits) -> Self {
        StreamConn {
            tls: None,
            framer: Framer::new(),
            mode: Mode::Framed,
            raw_in: Vec::new(),
            out: Vec::new(),
            out_start: 0,
            limits,
            opened: now,
            last_message: None,
            partial_since: None,
            stalled_since: None,
            client_closed: false,
        }
    }

    /// A TLS connection accepted at `now`; the handshake runs in the first calls to
    /// [`StreamConn::receive`].
    pub fn tls(
        now: Instant,
        limits: StreamLimits,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<Self, CloseReason> {
        let mut c = Self::plain(now, limits);
        c.tls = Some(Box::new(rustls::ServerConnection::new(config)?));
        Ok(c)
    }

    /// TLS only: whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// TLS only: the negotiated protocol version, once known.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.as_ref().and_then(|t| t.protocol_version())
    }

    pub fn is_spliced(&self) -> bool {
        self.mode == Mode::Spliced
    }

    // -----------------------------------------------------------------------------------------
    // Input.

    /// Bytes read from the socket. In framed mode, take the messages with
    /// [`StreamConn::next_message`] before the next call; in spliced mode, the client's bytes
    /// with [`StreamConn::take_raw_into`].
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) -> Result<(), CloseReason> {
        if self.tls.is_none() {
            self.plaintext(bytes);
        } else {
            self.receive_tls(bytes)?;
        }
        if self.mode == Mode::Framed && self.framer.buffered() > 0 {
            self.partial_since.get_or_insert(now);
        }
        Ok(())
    }

    /// TLS only: the client sent close_notify. What came before it in the same read is still
    /// to be taken ([`StreamConn::next_message`], [`StreamConn::take_raw_into`]); then the
    /// connection closes.
    pub fn client_has_closed(&self) -> bool {
        self.client_closed
    }

    fn plaintext(&mut self, bytes: &[u8]) {
        match self.mode {
            Mode::Framed => self.framer.push(bytes),
            Mode::Spliced => self.raw_in.extend_from_slice(bytes),
        }
    }

    fn receive_tls(&mut self, mut bytes: &[u8]) -> Result<(), CloseReason> {
        let mut chunk = [0u8; 4096];
        while !bytes.is_empty() {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            // `read_tls` takes what fits its buffer; processing empties it for the next round.
            // It fails only when its buffer is full, which processing after each call prevents;
            // should it happen anyway, the connection is not worth more effort.
            let taken = tls.read_tls(&mut bytes).map_err(|_| {
                CloseReason::Tls(rustls::Error::General("TLS input buffer full".into()))
            })?;
            if taken == 0 {
                // rustls took nothing (it may refuse input after close_notify): stop rather
                // than spin; the rest is ignored.
                break;
            }
            let state = match tls.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // rustls queued an alert: put it on the wire before the close.
                    self.flush_tls();
                    return Err(CloseReason::Tls(e));
                }
            };
            let mut left = state.plaintext_bytes_to_read();
            while left > 0 {
                let Some(tls) = self.tls.as_mut() else {
                    break;
                };
                // Ok(0) or an error here means no more plaintext for now (close_notify is
                // reported by `peer_has_closed` below).
                let n = match tls.reader().read(&mut chunk) {
                    Ok(n) if n > 0 => n,
                    _ => break,
                };
                left = left.saturating_sub(n);
                self.plaintext(&chunk[..n]);
            }
            if state.peer_has_closed() {
                self.client_closed = true;
            }
        }
        self.flush_tls();
        Ok(())
    }

    /// The next whole message (framed mode), or the framing error that ends the connection.
    /// Call it until it returns `None` after every [`StreamConn::receive`].
    pub fn next_message(&mut self, now: Instant) -> Option<Result<Frame<'_>, CloseReason>> {
        if self.mode != Mode::Framed {
            return None;
        }
        let pending = self.framer.buffered();
        match self.framer.next_frame() {
            Some(Ok(f)) => {
                self.last_message = Some(now);
                // What follows this message, if anything, starts its own wait on the call that
                // finds it incomplete.
                self.partial_since = None;
                Some(Ok(f))
            }
            Some(Err(e)) => Some(Err(CloseReason::Framing(e))),
            None => {
                if pending > 0 {
                    self.partial_since.get_or_insert(now);
                } else {
                    self.partial_since = None;
                }
                None
            }
        }
    }

    /// Ends framing after a successful ConnectionBind (RFC 6062 section 5.4): returns the bytes
    /// that followed the request, which belong to the peer already. From now on the client's
    /// bytes come out of [`StreamConn::take_raw_into`], and [`StreamConn::send`] carries the peer's.
    pub fn splice(&mut self) -> Vec<u8> {
        self.mode = Mode::Spliced;
        self.partial_since = None;
        let mut rest = self.framer.take_rest();
        rest.append(&mut self.raw_in);
        rest
    }

    /// Spliced mode: moves the client's bytes received so far onto the end of `to` (the bytes
    /// waiting for the peer). No allocation when `to` is empty: the two buffers swap.
    pub fn take_raw_into(&mut self, to: &mut Vec<u8>) {
        if to.is_empty() {
            std::mem::swap(to, &mut self.raw_in);
        } else {
            to.append(&mut self.raw_in);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Output.

    /// Queues bytes for the client: a message from the server (framed mode) or the peer's bytes
    /// (spliced mode). Past [`StreamLimits::max_outbound`] the connection must be closed; in
    /// spliced mode, read no more than [`StreamConn::outbound_room`] from the peer instead.
    pub fn send(&mut self, now: Instant, bytes: &[u8]) -> Result<(), CloseReason> {
        let pending = self.out.len() - self.out_start;
        if pending + bytes.len() > self.limits.max_outbound {
            return Err(CloseReason::OutboundFull(self.limits.max_outbound));
        }
        match self.tls.as_mut() {
            None => self.out.extend_from_slice(bytes),
            Some(tls) => {
                tls.writer()
                    .write_all(bytes)
                    .map_err(|_| CloseReason::Tls(rustls::Error::General("write".into())))?;
                self.flush_tls();
            }
        }
        if self.out.len() > self.out_start {
            self.stalled_since.get_or_insert(now);
        }
        Ok(())
    }

    /// How many more bytes [`StreamConn::send`] takes now.
    pub fn outbound_room(&self) -> usize {
        let pending = self.out.len() - self.out_start;
        // TLS adds a record header and tag per record: leave room for them.
        let overhead = if self.tls.is_some() { 64 } else { 0 };
        self.limits
            .max_outbound
            .saturating_sub(pending)
            .saturating_sub(overhead)
    }

    /// Moves what rustls has to send (handshake, records, alerts) into the output.
    fn flush_tls(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        while tls.wants_write() {
            if tls.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }

    /// Bytes to write to the socket now.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.out_start..]
    }

    /// The socket took the first `n` bytes of [`StreamConn::pending_output`].
    pub fn consumed(&mut self, now: Instant, n: usize) {
        self.out_start = (self.out_start + n).min(self.out.len());
        if self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
            self.stalled_since = None;
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
        } else if n > 0 {
            self.stalled_since = Some(now);
            if self.out_start > self.out.len() / 2 {
                self.out.drain(..self.out_start);
                self.out_start = 0;
            }
        }
    }

    /// TLS: queues close_notify (then write [`StreamConn::pending_output`] and close).
    pub fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
        }
        self.flush_tls();
    }

    // -----------------------------------------------------------------------------------------
    // Timers.

    /// When [`StreamConn::handle_timeout`] has something to check.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let l = &self.limits;
        let mut deadlines = [None; 4];
        deadlines[0] = self.stalled_since.map(|t| t + l.stall_timeout);
        if self.mode == Mode::Framed {
            deadlines[1] = match self.last_message {
                None => Some(self.opened + l.handshake_timeout),
                Some(t) => Some(t + l.idle_timeout),
            };
            deadlines[2] = self.partial_since.map(|t| t + l.partial_timeout);
        }
        deadlines.into_iter().flatten().min()
    }

    /// Closes the connection whose timer ran out.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), CloseReason> {
        let l = self.limits;
        if self
            .stalled_since
            .is_some_and(|t| now >= t + l.stall_timeout)
        {
            return Err(CloseReason::Stalled);
        }
        if self.mode == Mode::Spliced {
            return Ok(());
        }
        match self.last_message {
            None if now >= self.opened + l.handshake_timeout => {
                return Err(CloseReason::HandshakeTimeout)
            }
            Some(t) if now >= t + l.idle_timeout => return Err(CloseReason::IdleTimeout),
            _ => {}
        }
        if self
            .partial_since
            .is_some_and(|t| now >= t + l.partial_timeout)
        {
            return Err(CloseReason::PartialTimeout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
