//! UDP segmentation offload on send (GSO, `UDP_SEGMENT`) and coalescing on receive (GRO,
//! `UDP_GRO`): the pieces both backends and the bare reference forwarder share.
//!
//! # Why
//! The kernel's cost per datagram (socket lookup, route, skb, queueing, wake-up) dominates a
//! relay. GSO hands the kernel several datagrams of one size to one destination in one call and
//! one skb, which it splits as late as possible; GRO lets a socket receive several datagrams of
//! one flow as one buffer plus the segment size (`UDP_GRO` control message). Each segment is
//! still its own datagram on the wire and to the application: the driver splits coalesced
//! receives into separate packets, and the peer's kernel delivers every GSO segment separately
//! unless its socket opted into GRO too.
//!
//! # What makes a run
//! Datagrams queued in one batch with the same socket, the same destination and the same length
//! can go out as one GSO send; the last one of a run may be shorter (the kernel's rule). A run
//! holds at most [`MAX_SEGMENTS`] segments and [`MAX_BYTES`] bytes (the UDP length limit).

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;

/// Most segments in one GSO send (`UDP_MAX_SEGMENTS` is 64 in the kernels we support; newer
/// ones allow 128).
pub const MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send: a UDP datagram's 65,535 less the IPv6 and UDP headers,
/// rounded down.
pub const MAX_BYTES: usize = 65_000;
/// Control space for one `UDP_SEGMENT` (u16) or `UDP_GRO` (int) message:
/// `CMSG_SPACE(sizeof(int))` on 64-bit Linux.
pub const CMSG_SPACE: usize = 24;
/// `sizeof(struct cmsghdr)` on 64-bit Linux: `size_t cmsg_len; int level; int type`.
const CMSG_HDR: usize = 16;

const _: () = assert!(std::mem::size_of::<libc::cmsghdr>() == CMSG_HDR);

/// Turns on `UDP_GRO` for a socket: the kernel may hand it coalesced datagrams with a
/// `UDP_GRO` control message giving the segment size.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    super::sock::set_int_opt(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Finds the `UDP_GRO` control message in `control` (the first `msg_controllen` bytes the
/// kernel wrote) and returns the segment size. Parsed field by field: the bytes come from the
/// kernel, but a malformed length must not make us read out of bounds.
pub fn gro_segment_size(control: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    while at + CMSG_HDR <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + 8].try_into().ok()?);
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().ok()?);
        let typ = i32::from_ne_bytes(control[at + 12..at + 16].try_into().ok()?);
        if len < CMSG_HDR || at + len > control.len() {
            return None;
        }
        if level == libc::SOL_UDP && typ == libc::UDP_GRO && len >= CMSG_HDR + 4 {
            let v = i32::from_ne_bytes(control[at + CMSG_HDR..at + CMSG_HDR + 4].try_into().ok()?);
            return usize::try_from(v).ok().filter(|&v| v > 0);
        }
        // CMSG_NXTHDR: the next header starts at the aligned end of this one.
        at += (len + 7) & !7;
    }
    None
}

/// Writes one `SOL_UDP / UDP_SEGMENT` control message with `segment` into `control` and returns
/// the `msg_controllen` to use.
pub fn write_segment_cmsg(control: &mut [u8; CMSG_SPACE], segment: u16) -> usize {
    let len = CMSG_HDR + 2; // CMSG_LEN(sizeof(u16))
    control.fill(0);
    control[..8].copy_from_slice(&len.to_ne_bytes());
    control[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    control[12..16].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    control[16..18].copy_from_slice(&segment.to_ne_bytes());
    CMSG_SPACE
}

/// Whether a failed GSO send says the kernel will not segment on this path (rather than a
/// failure the datagrams would meet one by one too): `EIO` (no checksum offload on the
/// device), `EINVAL` (a segment size it refuses), `EOPNOTSUPP`/`ENOPROTOOPT` (no UDP_SEGMENT).
/// The caller sends the same datagrams again one by one and stops using GSO.
pub fn refused(errno: i32) -> bool {
    matches!(
        errno,
        libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT
    )
}

/// A sort key that makes sends from one socket to one destination adjacent: socket id in the
/// high half, then the destination folded into 64 bits (exact for IPv4; IPv6 addresses are
/// folded, and the rare collision only splits a run: runs compare destinations exactly). A u128
/// compares far faster than `(SockId, SocketAddr)`, and sorting every batch showed in profiles.
pub fn group_key(sock: u32, to: &std::net::SocketAddr) -> u128 {
    let dest: u64 = match to {
        std::net::SocketAddr::V4(a) => (u64::from(a.ip().to_bits()) << 16) | u64::from(a.port()),
        std::net::SocketAddr::V6(a) => {
            let ip = a.ip().to_bits();
            let folded = (ip as u64) ^ ((ip >> 64) as u64).rotate_left(17);
            (1 << 63)
                | (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17) << 16
                | u64::from(a.port())
        }
    };
    (u128::from(sock) << 64) | u128::from(dest)
}

/// How many of the datagrams with lengths `lens` (in queue order, all to one socket and
/// destination) form the next GSO run: the first one's length, repeated, and at most one shorter
/// one to end it; at least 1 (a run of one is a plain send).
pub fn run_length(lens: impl IntoIterator<Item = usize>) -> usize {
    let mut it = lens.into_iter();
    let Some(seg) = it.next() else { return 0 };
    if seg == 0 || seg > MAX_BYTES || seg > usize::from(u16::MAX) {
        return 1;
    }
    let mut n = 1;
    let mut bytes = seg;
    for len in it {
        if n == MAX_SEGMENTS || bytes + len > MAX_BYTES || len > seg || len == 0 {
            break;
        }
        n += 1;
        bytes += len;
        if len < seg {
            break; // a shorter one ends the run
        }
    }
    n
}

/// The segments of a coalesced datagram of `len` bytes received with segment size `segment`:
/// byte ranges of `segment` bytes, the last one possibly shorter. A `segment` of 0 is treated as
/// "not coalesced" (one range).
pub fn segments(len: usize, segment: usize) -> impl Iterator<Item = Range<usize>> {
    let step = if segment == 0 { len.max(1) } else { segment };
    (0..len).step_by(step).map(move |s| s..(s + step).min(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_equal_lengths_ended_by_one_shorter() {
        assert_eq!(run_length([]), 0);
        assert_eq!(run_length([100]), 1);
        assert_eq!(run_length([100, 100, 100]), 3);
        assert_eq!(run_length([100, 100, 60, 100]), 3);
        assert_eq!(run_length([100, 120, 100]), 1);
        assert_eq!(run_length([100, 100, 120]), 2);
        assert_eq!(run_length([0, 0]), 1);
        assert_eq!(run_length(std::iter::repeat_n(10, 200)), MAX_SEGMENTS);
        // 1400-byte segments: 46 fit in MAX_BYTES.
        assert_eq!(run_length(std::iter::repeat_n(1400, 64)), MAX_BYTES / 1400);
    }

    #[test]
    fn refusals_that_call_for_plain_sends() {
        for e in [libc::EIO, libc::EINVAL, libc::EOPNOTSUPP, libc::ENOPROTOOPT] {
            assert!(refused(e), "{e}");
        }
        // These would fail one by one too: no point resending.
        for e in [libc::EAGAIN, libc::ENOBUFS, libc::ENETUNREACH, libc::EACCES] {
            assert!(!refused(e), "{e}");
        }
    }

    #[test]
    fn group_keys_separate_sockets_and_destinations() {
        let a: std::net::SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: std::net::SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let v6: std::net::SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(group_key(3, &a), group_key(3, &a));
        assert_ne!(group_key(3, &a), group_key(3, &b));
        assert_ne!(group_key(3, &a), group_key(4, &a));
        assert_ne!(group_key(3, &a), group_key(3, &v6));
        // Socket first: all of one socket's sends sort together.
        assert!(group_key(3, &v6) < group_key(4, &a));
    }

    #[test]
    fn segments_split_by_size_with_a_short_tail() {
        let s: Vec<_> = segments(250, 100).collect();
        assert_eq!(s, vec![0..100, 100..200, 200..250]);
        assert_eq!(segments(200, 100).count(), 2);
        assert_eq!(segments(50, 100).collect::<Vec<_>>(), vec![0..50]);
        assert_eq!(segments(50, 0).collect::<Vec<_>>(), vec![0..50]);
        assert_eq!(segments(0, 100).count(), 0);
    }

    #[test]
    fn segment_cmsg_round_trips_through_the_gro_parser_layout() {
        let mut c = [0u8; CMSG_SPACE];
        assert_eq!(write_segment_cmsg(&mut c, 1200), CMSG_SPACE);
        assert_eq!(usize::from_ne_bytes(c[..8].try_into().unwrap()), 18);
        assert_eq!(u16::from_ne_bytes([c[16], c[17]]), 1200);
        // The same layout with UDP_GRO and an int is what the kernel writes on receive.
        let mut g = [0u8; 48];
        g[..8].copy_from_slice(&20usize.to_ne_bytes());
        g[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        g[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        g[16..20].copy_from_slice(&1200i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&g[..24]), Some(1200));
        // Behind another control message.
        let mut two = [0u8; 48];
        two[..8].copy_from_slice(&20usize.to_ne_bytes());
        two[8..12].copy_from_slice(&libc::SOL_IP.to_ne_bytes());
        two[24..48].copy_from_slice(&g[..24]);
        assert_eq!(gro_segment_size(&two), Some(1200));
    }

    #[test]
    fn gro_parser_refuses_garbage() {
        assert_eq!(gro_segment_size(&[]), None);
        assert_eq!(gro_segment_size(&[0xff; 40]), None);
        let mut short = [0u8; 24];
        short[..8].copy_from_slice(&4usize.to_ne_bytes());
        assert_eq!(gro_segment_size(&short), None);
        let mut neg = [0u8; 24];
        neg[..8].copy_from_slice(&20usize.to_ne_bytes());
        neg[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        neg[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        neg[16..20].copy_from_slice(&(-5i32).to_ne_bytes());
        assert_eq!(gro_segment_size(&neg), None);
    }

    #[test]
    fn gro_can_be_enabled_on_a_udp_socket() {
        use std::os::fd::AsRawFd;
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_gro(s.as_raw_fd()).unwrap();
    }
}
