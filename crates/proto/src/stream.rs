//! Framing on stream transports (TCP, TLS): STUN messages and ChannelData messages follow each
//! other on one byte stream (RFC 8656 section 12.5), and a read may end in the middle of one or
//! hold several. [`Framer`] collects bytes and hands out whole messages.
//!
//! Bounded: a connection never buffers more than one maximal message (a STUN message is at most
//! 20 + 65,535 bytes, a padded ChannelData 4 + 65,535 + 1), and the buffer only grows to what
//! the bytes actually received need. Anything that is neither STUN nor ChannelData is a framing
//! error: the stream cannot be resynchronised and the connection must be closed.

use crate::channel_data;
use crate::stun::{padded, HEADER_LEN, MAGIC_COOKIE};

/// The largest frame: a STUN header plus a 16-bit length.
pub const MAX_FRAME: usize = HEADER_LEN + u16::MAX as usize;

/// Why a stream cannot be read further.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FramingError {
    #[error("bytes on the stream are neither STUN nor ChannelData")]
    Garbage,
    #[error("STUN message without the magic cookie")]
    BadCookie,
    #[error("STUN length is not a multiple of 4")]
    Unaligned,
}

/// One whole message taken off the stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete STUN message.
    Stun(&'a [u8]),
    /// A ChannelData message: header and payload, without the stream padding.
    ChannelData(&'a [u8]),
}

/// Collects a stream's bytes into frames.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes before `start` were handed out already.
    start: usize,
    failed: Option<FramingError>,
}

/// How long the frame at the start of `b` is on the wire (padding included) and how much of it
/// is the message; `Ok(None)` when more bytes are needed to tell.
fn frame_len(b: &[u8]) -> Result<Option<(usize, usize)>, FramingError> {
    let Some(&first) = b.first() else {
        return Ok(None);
    };
    match first {
        0..=3 => {
            if b.len() < 8 {
                return Ok(None);
            }
            if b[4..8] != MAGIC_COOKIE.to_be_bytes() {
                return Err(FramingError::BadCookie);
            }
            let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
            if len % 4 != 0 {
                return Err(FramingError::Unaligned);
            }
            Ok(Some((HEADER_LEN + len, HEADER_LEN + len)))
        }
        0x40..=0x4F => {
            if b.len() < channel_data::HEADER_LEN {
                return Ok(None);
            }
            let msg = channel_data::HEADER_LEN + usize::from(u16::from_be_bytes([b[2], b[3]]));
            Ok(Some((padded(msg), msg)))
        }
        _ => Err(FramingError::Garbage),
    }
}

impl Framer {
    pub fn new() -> Self {
        Framer::default()
    }

    /// Bytes held for a message not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Adds bytes read from the stream. Call [`Framer::next_frame`] until it returns `None`
    /// before pushing more, so the buffer never holds more than one partial message.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            // Everything before `start` was consumed: move the partial message to the front.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if the bytes so far hold one. After an error the stream is dead
    /// and every later call returns the same error.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, FramingError>> {
        if let Some(e) = self.failed {
            return Some(Err(e));
        }
        let rest = &self.buf[self.start..];
        let (wire, msg) = match frame_len(rest) {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.compact();
                return None;
            }
            Err(e) => {
                self.failed = Some(e);
                self.buf = Vec::new();
                self.start = 0;
                return Some(Err(e));
            }
        };
        if rest.len() < wire {
            self.compact();
            return None;
        }
        let at = self.start;
        self.start += wire;
        let bytes = &self.buf[at..at + msg];
        Some(Ok(if bytes[0] < 4 {
            Frame::Stun(bytes)
        } else {
            Frame::ChannelData(bytes)
        }))
    }

    /// Ends framing and hands over the bytes received after the last message taken (RFC 6062
    /// section 5.4: once a ConnectionBind succeeded, what follows it on the connection is the
    /// peer's stream, not TURN). The framer is empty afterwards.
    pub fn take_rest(&mut self) -> Vec<u8> {
        let mut rest = core::mem::take(&mut self.buf);
        rest.drain(..self.start.min(rest.len()));
        self.start = 0;
        rest
    }

    /// Releases memory once everything was consumed, so an idle connection holds no buffer.
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > 4096 {
                self.buf = Vec::new();
            }
        }
    }
}

/// Frames for sending on a stream: a ChannelData message padded to 4 bytes (RFC 8656 section
/// 12.5); STUN messages are always a multiple of 4 already.
pub fn stream_padding(len: usize) -> usize {
    padded(len) - len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, Encoder, MessageType, Method, TransactionId};

    fn stun(n: u8) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        let mut e = Encoder::new(
            &mut buf,
            MessageType::new(Method::BINDING, Class::Request),
            TransactionId([n; 12]),
        )
        .unwrap();
        e.add_raw(0x8022, &[n; 5]).unwrap();
        let len = e.finish();
        buf.truncate(len);
        buf
    }

    fn channel(n: u8, len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut msg = vec![0x40, n, 0, len as u8];
        msg.extend((0..len).map(|i| i as u8 ^ n));
        let mut wire = msg.clone();
        wire.resize(padded(msg.len()), 0);
        (msg, wire)
    }

    fn drain(f: &mut Framer) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while let Some(r) = f.next_frame() {
            match r.unwrap() {
                Frame::Stun(b) | Frame::ChannelData(b) => v.push(b.to_vec()),
            }
        }
        v
    }

    /// A stream of mixed messages, split at every possible pair of boundaries, yields the
    /// same messages in order.
    #[test]
    fn split_and_merged_at_every_byte_boundary() {
        let mut msgs = Vec::new();
        let mut stream = Vec::new();
        for (i, len) in [0usize, 1, 3, 4, 5, 7, 100].iter().enumerate() {
            let s = stun(i as u8);
            stream.extend_from_slice(&s);
            msgs.push(s);
            let (m, w) = channel(i as u8, *len);
            stream.extend_from_slice(&w);
            msgs.push(m);
        }
        for a in 0..=stream.len() {
            for b in (a..=stream.len()).step_by(7) {
                let mut f = Framer::new();
                let mut got = Vec::new();
                for part in [&stream[..a], &stream[a..b], &stream[b..]] {
                    f.push(part);
                    got.extend(drain(&mut f));
                }
                assert_eq!(got, msgs, "split at {a} and {b}");
                assert_eq!(f.buffered(), 0);
            }
        }
        // One byte at a time.
        let mut f = Framer::new();
        let mut got = Vec::new();
        for byte in &stream {
            f.push(std::slice::from_ref(byte));
            got.extend(drain(&mut f));
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn garbage_kills_the_stream() {
        let mut f = Framer::new();
        f.push(&[0x16, 3, 1, 0, 0]);
        assert_eq!(f.next_frame(), Some(Err(FramingError::Garbage)));
        f.push(&stun(1));
        assert_eq!(f.next_frame(), Some(Err(FramingError::Garbage)));

        let mut f = Framer::new();
        let mut s = stun(1);
        s[5] ^= 1;
        f.push(&s);
        assert_eq!(f.next_frame(), Some(Err(FramingError::BadCookie)));

        let mut f = Framer::new();
        f.push(&[0, 1, 0, 3, 0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(f.next_frame(), Some(Err(FramingError::Unaligned)));
    }

    #[test]
    fn partial_message_is_bounded_by_its_own_length() {
        let mut f = Framer::new();
        // A ChannelData header claiming 65535 bytes, then a trickle.
        f.push(&[0x40, 0, 0xFF, 0xFF]);
        for _ in 0..100 {
            f.push(&[0u8; 100]);
            assert!(f.next_frame().is_none());
        }
        assert_eq!(f.buffered(), 4 + 100 * 100);
        assert!(f.buffered() <= MAX_FRAME + 4);
    }

    #[test]
    fn the_rest_after_the_last_message_is_handed_over_raw() {
        let mut f = Framer::new();
        let s = stun(1);
        let mut bytes = s.clone();
        bytes.extend_from_slice(b"\x16not turn any more");
        f.push(&bytes);
        assert_eq!(drain_one(&mut f), s);
        assert_eq!(f.take_rest(), b"\x16not turn any more");
        assert_eq!(f.buffered(), 0);
        assert!(f.next_frame().is_none());
    }

    fn drain_one(f: &mut Framer) -> Vec<u8> {
        match f.next_frame().unwrap().unwrap() {
            Frame::Stun(b) | Frame::ChannelData(b) => b.to_vec(),
        }
    }

    #[test]
    fn padding_for_stream_channel_data() {
        assert_eq!(stream_padding(4), 0);
        assert_eq!(stream_padding(5), 3);
        assert_eq!(stream_padding(7), 1);
    }
}
