//! Socket addresses as the kernel writes them (`sockaddr_in` / `sockaddr_in6` bytes), parsed
//! without `unsafe`: the bytes come from a kernel-filled buffer and are read field by field.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Bytes reserved for a peer address: `sizeof(struct sockaddr_in6)`, the larger family.
pub(crate) const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// Parses the first `len` bytes of `name` as a `sockaddr_in` or `sockaddr_in6`.
pub(crate) fn parse(name: &[u8], len: usize) -> Option<SocketAddr> {
    let name = name.get(..len)?;
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    // sin_port / sin6_port are in network byte order at offset 2 in both layouts.
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope: [u8; 4] = name.get(24..28)?.try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                // std keeps sin6_flowinfo as the raw field value (no byte swap) and
                // sin6_scope_id is host order: read both as native-endian to match.
                u32::from_ne_bytes(flow),
                u32::from_ne_bytes(scope),
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockAddr;

    fn raw(addr: SocketAddr) -> Vec<u8> {
        let sa = SockAddr::from(addr);
        // SAFETY: `as_ptr` points at `len` initialised bytes of the SockAddr's storage.
        unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), sa.len() as usize) }.to_vec()
    }

    #[test]
    fn round_trips_both_families() {
        for a in [
            "127.0.0.1:3478".parse::<SocketAddr>().unwrap(),
            "[::1]:65535".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0x12345, 7)),
        ] {
            let bytes = raw(a);
            assert_eq!(parse(&bytes, bytes.len()), Some(a));
        }
    }

    #[test]
    fn rejects_short_and_unknown() {
        let v4 = raw("10.0.0.1:1".parse().unwrap());
        assert_eq!(parse(&v4, 6), None);
        assert_eq!(parse(&v4, 100), None);
        assert_eq!(parse(&[0xff, 0xff, 0, 0, 0, 0, 0, 0], 8), None);
        assert_eq!(parse(&[], 0), None);
    }
}
