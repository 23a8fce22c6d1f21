//! A worker's slice of the relay port range: which ports are in use, random choice of a free
//! one (RFC 8656 section 7.2 asks for unpredictable relay ports), and even/odd pairs for
//! EVEN-PORT.

use super::rng::Rng;

/// A set of ports `min..=max` with a bit per port.
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    len: usize,
    used: Vec<u64>,
    in_use: usize,
}

impl PortPool {
    pub fn new(min: u16, max: u16) -> Self {
        let len = if max >= min {
            usize::from(max - min) + 1
        } else {
            0
        };
        PortPool {
            min,
            len,
            used: vec![0; len.div_ceil(64)],
            in_use: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.len
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    fn index(&self, port: u16) -> Option<usize> {
        let i = usize::from(port.checked_sub(self.min)?);
        (i < self.len).then_some(i)
    }

    pub fn is_free(&self, port: u16) -> bool {
        self.index(port)
            .is_some_and(|i| self.used[i / 64] & (1 << (i % 64)) == 0)
    }

    /// Marks `port` used; false if it was outside the pool or already used.
    pub fn take(&mut self, port: u16) -> bool {
        match self.index(port) {
            Some(i) if self.used[i / 64] & (1 << (i % 64)) == 0 => {
                self.used[i / 64] |= 1 << (i % 64);
                self.in_use += 1;
                true
            }
            _ => false,
        }
    }

    pub fn release(&mut self, port: u16) {
        if let Some(i) = self.index(port) {
            if self.used[i / 64] & (1 << (i % 64)) != 0 {
                self.used[i / 64] &= !(1 << (i % 64));
                self.in_use -= 1;
            }
        }
    }

    /// Takes a free port at a random place in the pool; with `even`, an even port whose odd
    /// successor is free too (the successor is left free: the caller reserves it if asked to).
    /// `skip` lets the caller exclude ports it already failed to bind in this attempt.
    pub fn take_random(&mut self, rng: &mut Rng, even: bool, skip: &[u16]) -> Option<u16> {
        if self.len == 0 || self.in_use >= self.len {
            return None;
        }
        let start = (rng.next_u64() % self.len as u64) as usize;
        for k in 0..self.len {
            let i = (start + k) % self.len;
            let port = self.min + i as u16;
            if skip.contains(&port) || !self.is_free(port) {
                continue;
            }
            if even && (!port.is_multiple_of(2) || port == u16::MAX || !self.is_free(port + 1)) {
                continue;
            }
            self.take(port);
            return Some(port);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_release_and_exhaust() {
        let mut rng = Rng::new(1);
        let mut p = PortPool::new(50000, 50009);
        let mut got = Vec::new();
        while let Some(port) = p.take_random(&mut rng, false, &[]) {
            assert!((50000..=50009).contains(&port));
            got.push(port);
        }
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 10);
        assert_eq!(p.in_use(), 10);
        p.release(50003);
        assert_eq!(p.take_random(&mut rng, false, &[]), Some(50003));
    }

    #[test]
    fn even_ports_leave_a_free_successor() {
        let mut rng = Rng::new(7);
        let mut p = PortPool::new(50001, 50010);
        for _ in 0..4 {
            let port = p.take_random(&mut rng, true, &[]).unwrap();
            assert_eq!(port % 2, 0);
            assert!(p.is_free(port + 1));
            assert!(p.take(port + 1));
        }
        // 50010's successor is outside the pool, so no even port remains.
        assert_eq!(p.take_random(&mut rng, true, &[]), None);
    }

    #[test]
    fn skip_list_is_honoured() {
        let mut rng = Rng::new(3);
        let mut p = PortPool::new(40000, 40001);
        assert_eq!(p.take_random(&mut rng, false, &[40000]), Some(40001));
        assert_eq!(p.take_random(&mut rng, false, &[40000]), None);
    }
}
