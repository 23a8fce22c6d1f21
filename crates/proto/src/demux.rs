//! Demultiplexing on the first byte of a datagram (RFC 7983 section 7, as updated by RFC 8656
//! section 12): STUN, TURN ChannelData, or something else (DTLS, RTP, ZRTP, QUIC) that a TURN
//! server's listening socket does not handle.

use crate::stun::message::looks_like_stun;

/// What a datagram arriving at the listening port is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// First byte 0-3 and the magic cookie in place.
    Stun,
    /// First byte 64-79 (channel numbers 0x4000-0x4FFF) with a complete 4-byte header.
    ChannelData,
    /// Anything else.
    Other,
}

/// O(1) classification: reads at most the first 8 bytes.
#[inline]
pub fn classify(b: &[u8]) -> PacketKind {
    match b.first() {
        Some(0..=3) if looks_like_stun(b) => PacketKind::Stun,
        Some(64..=79) if b.len() >= crate::channel_data::HEADER_LEN => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let mut stun = [0u8; 20];
        stun[4..8].copy_from_slice(&crate::stun::MAGIC_COOKIE.to_be_bytes());
        assert_eq!(classify(&stun), PacketKind::Stun);
        stun[4] = 0;
        assert_eq!(classify(&stun), PacketKind::Other, "no cookie");
        assert_eq!(classify(&[0x40, 0, 0, 0]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x4F, 0xFF, 0, 0]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x50, 0, 0, 0]), PacketKind::Other);
        assert_eq!(classify(&[0x40, 0]), PacketKind::Other);
        for b in [16u8, 20, 63, 128, 191, 255] {
            assert_eq!(classify(&[b, 0, 0, 0, 0, 0, 0, 0]), PacketKind::Other);
        }
        assert_eq!(classify(&[]), PacketKind::Other);
    }
}
