//! ChannelData messages (RFC 8656 section 12.4): a 4-byte header (channel number, length) in
//! front of application data. This is the fast path: classify on the first byte, read the header,
//! and forward the payload in place.

/// The 4-byte ChannelData header.
pub const HEADER_LEN: usize = 4;

/// A TURN channel number, always in 0x4000-0x4FFF (RFC 8656 section 12). Numbers 0x5000-0x7FFF
/// are reserved and cannot be bound, so this type refuses them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    pub const MIN: u16 = 0x4000;
    pub const MAX: u16 = 0x4FFF;

    pub const fn new(n: u16) -> Option<Self> {
        if n >= Self::MIN && n <= Self::MAX {
            Some(ChannelNumber(n))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// 0..4096, for indexing per-allocation tables.
    pub const fn index(self) -> usize {
        (self.0 - Self::MIN) as usize
    }
}

/// Why bytes are not a usable ChannelData message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ChannelDataError {
    #[error("shorter than the 4-byte ChannelData header")]
    TooShort,
    #[error("channel number outside 0x4000-0x4FFF")]
    BadChannel,
    #[error("length field exceeds the bytes received")]
    Truncated,
}

/// A parsed ChannelData header with the payload's place in the datagram.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChannelData {
    pub channel: ChannelNumber,
    /// The payload length the header claims.
    pub len: u16,
}

impl ChannelData {
    /// Parses the header of a ChannelData message at the start of `b`.
    ///
    /// RFC 8656 section 12.5: a UDP datagram shorter than 4 + length is discarded; one longer is
    /// accepted and the excess (padding) ignored.
    #[inline]
    pub fn parse(b: &[u8]) -> Result<ChannelData, ChannelDataError> {
        if b.len() < HEADER_LEN {
            return Err(ChannelDataError::TooShort);
        }
        let channel = ChannelNumber::new(u16::from_be_bytes([b[0], b[1]]))
            .ok_or(ChannelDataError::BadChannel)?;
        let len = u16::from_be_bytes([b[2], b[3]]);
        if HEADER_LEN + usize::from(len) > b.len() {
            return Err(ChannelDataError::Truncated);
        }
        Ok(ChannelData { channel, len })
    }

    /// The payload range within the datagram.
    #[inline]
    pub fn payload_range(&self) -> core::ops::Range<usize> {
        HEADER_LEN..HEADER_LEN + usize::from(self.len)
    }

    /// On stream transports each message is padded to 4 bytes (RFC 8656 section 12.5); this is
    /// the number of bytes the whole framed message occupies there.
    #[inline]
    pub fn stream_len(&self) -> usize {
        crate::stun::padded(HEADER_LEN + usize::from(self.len))
    }
}

/// Writes a ChannelData header into `out[..4]`, usually the headroom right in front of a payload
/// received from a peer.
#[inline]
pub fn write_header(out: &mut [u8; HEADER_LEN], channel: ChannelNumber, len: u16) {
    out[..2].copy_from_slice(&channel.get().to_be_bytes());
    out[2..].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_write() {
        let mut b = [0u8; 9];
        let mut hdr = [0u8; 4];
        write_header(&mut hdr, ChannelNumber::new(0x4001).unwrap(), 5);
        b[..4].copy_from_slice(&hdr);
        let cd = ChannelData::parse(&b).unwrap();
        assert_eq!(cd.channel.get(), 0x4001);
        assert_eq!(cd.payload_range(), 4..9);
        assert_eq!(cd.stream_len(), 12);
    }

    #[test]
    fn rejects_short_reserved_and_truncated() {
        assert_eq!(
            ChannelData::parse(&[0x40, 0]),
            Err(ChannelDataError::TooShort)
        );
        assert_eq!(
            ChannelData::parse(&[0x50, 0, 0, 0]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0, 0, 1]),
            Err(ChannelDataError::Truncated)
        );
        // Longer than claimed: the excess is padding and is ignored.
        assert_eq!(
            ChannelData::parse(&[0x40, 0, 0, 1, 9, 0, 0, 0])
                .unwrap()
                .len,
            1
        );
    }

    #[test]
    fn channel_range() {
        assert!(ChannelNumber::new(0x3FFF).is_none());
        assert!(ChannelNumber::new(0x4000).is_some());
        assert!(ChannelNumber::new(0x4FFF).is_some());
        assert!(ChannelNumber::new(0x5000).is_none());
    }
}
