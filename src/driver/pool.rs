//! Buffer memory shared by both backends: an anonymous mapping cut into fixed-size buffers, and
//! the [`Packet`] handle that owns one receive buffer while the handler holds it.
//!
//! The memory is reached only through raw pointers, never through a Rust reference to the whole
//! region: the kernel writes into buffers it owns while the handler holds `&mut` to another.

use std::cell::RefCell;
use std::io;
use std::ops::Range;
use std::ptr::NonNull;
use std::rc::Rc;

use super::{RecvPacket, BUF_SIZE};

/// Page-aligned, zero-filled anonymous memory (`mmap`), unmapped on drop.
#[derive(Debug)]
pub(crate) struct Region {
    addr: NonNull<u8>,
    len: usize,
}

impl Region {
    pub(crate) fn new(len: usize) -> io::Result<Region> {
        Self::map(len, libc::MAP_POPULATE)
    }

    /// Like [`Region::new`], but pages are faulted in when first touched: for large buffers of
    /// which usually only the first page is used (GRO receive buffers).
    pub(crate) fn new_lazy(len: usize) -> io::Result<Region> {
        Self::map(len, 0)
    }

    fn map(len: usize, populate: libc::c_int) -> io::Result<Region> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty region"));
        }
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched. MAP_POPULATE
        // (unless lazy) faults the pages in now rather than on the first datagram.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | populate,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Region { addr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is the mapping made in `new`, unmapped only here. Owners that
        // lend the memory to the kernel keep the Region alive until the kernel is done with it
        // (the uring backend leaks it when a drain fails rather than unmap it under the kernel).
        unsafe {
            libc::munmap(self.addr.as_ptr().cast(), self.len);
        }
    }
}

/// `count` buffers of [`BUF_SIZE`] bytes, and the list of buffer indices the handler gave back
/// (by dropping a [`Packet`]). The driver drains that list once per batch.
#[derive(Debug)]
pub(crate) struct BufPool {
    region: Region,
    count: u32,
    returned: RefCell<Vec<u32>>,
}

impl BufPool {
    pub(crate) fn new(count: u32) -> io::Result<BufPool> {
        let region = Region::new(count as usize * BUF_SIZE)?;
        Ok(BufPool {
            region,
            count,
            returned: RefCell::new(Vec::with_capacity(count as usize)),
        })
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Start of buffer `idx`.
    pub(crate) fn buf_ptr(&self, idx: u32) -> *mut u8 {
        assert!(idx < self.count, "buffer index out of range");
        // SAFETY: idx < count, so the offset stays inside the region.
        unsafe { self.region.as_ptr().add(idx as usize * BUF_SIZE) }
    }

    /// Hands a buffer back to the driver.
    pub(crate) fn give_back(&self, idx: u32) {
        self.returned.borrow_mut().push(idx);
    }

    /// Pops up to `max` given-back indices into `out` (appended). The portable backend uses the
    /// given-back list as its free list.
    pub(crate) fn take_some(&self, max: usize, out: &mut Vec<u32>) {
        let mut returned = self.returned.borrow_mut();
        let n = returned.len().min(max);
        let from = returned.len() - n;
        out.extend(returned.drain(from..));
    }

    /// Pops one given-back index (the portable backend's free list).
    pub(crate) fn take_one(&self) -> Option<u32> {
        self.returned.borrow_mut().pop()
    }

    /// How many given-back indices there are (the portable backend's free buffers).
    pub(crate) fn available(&self) -> usize {
        self.returned.borrow().len()
    }

    pub(crate) fn has_returned(&self) -> bool {
        !self.returned.borrow().is_empty()
    }

    /// Moves the given-back indices into `out` (cleared first).
    pub(crate) fn take_returned(&self, out: &mut Vec<u32>) {
        out.clear();
        std::mem::swap(&mut *self.returned.borrow_mut(), out);
    }
}

/// Marks a packet whose buffer was handed to a send: its drop returns nothing.
const TAKEN: u32 = u32::MAX;

/// A received datagram: owns one receive buffer of the worker's pool until dropped or forwarded.
/// `!Send` (it holds an `Rc`): a buffer never leaves its worker.
#[derive(Debug)]
pub struct Packet {
    pool: Rc<BufPool>,
    idx: u32,
    start: u32,
    end: u32,
}

impl Packet {
    /// Wraps buffer `idx`, which the kernel has filled with a datagram at `range`.
    pub(crate) fn new(pool: Rc<BufPool>, idx: u32, range: Range<usize>) -> Packet {
        debug_assert!(range.start <= range.end && range.end <= BUF_SIZE);
        debug_assert!(idx < pool.count());
        Packet {
            pool,
            idx,
            start: range.start as u32,
            end: range.end as u32,
        }
    }

    /// Whether this packet's buffer belongs to `pool`.
    pub(crate) fn is_from(&self, pool: &Rc<BufPool>) -> bool {
        Rc::ptr_eq(&self.pool, pool)
    }

    /// Sets where the datagram sits, once the driver has parsed what the kernel wrote.
    pub(crate) fn set_range(&mut self, range: Range<usize>) {
        debug_assert!(range.start <= range.end && range.end <= BUF_SIZE);
        self.start = range.start as u32;
        self.end = range.end as u32;
    }

    /// Gives up ownership of the buffer to a send; returns its index.
    pub(crate) fn take(mut self) -> u32 {
        let idx = self.idx;
        self.idx = TAKEN;
        idx
    }
}

impl RecvPacket for Packet {
    fn buf(&self) -> &[u8] {
        // SAFETY: this Packet is the only owner of buffer `idx` (the driver hands each index out
        // once and takes it back only through `take` or drop); the kernel does not write to a
        // buffer while user space owns it. The Rc keeps the region mapped.
        unsafe { std::slice::from_raw_parts(self.pool.buf_ptr(self.idx), BUF_SIZE) }
    }

    fn buf_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `buf`; `&mut self` makes this the only live reference to the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.pool.buf_ptr(self.idx), BUF_SIZE) }
    }

    fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        if self.idx != TAKEN {
            self.pool.give_back(self.idx);
        }
    }
}

/// Send buffers for [`super::Io::send`]: a region and a free list. Owned by the driver alone.
#[derive(Debug)]
pub(crate) struct SendPool {
    region: Region,
    free: Vec<u32>,
}

impl SendPool {
    pub(crate) fn new(count: u16) -> io::Result<SendPool> {
        let region = Region::new(count as usize * BUF_SIZE)?;
        Ok(SendPool {
            region,
            free: (0..u32::from(count)).rev().collect(),
        })
    }

    /// Copies `bytes` into a free buffer; `None` when none is free or `bytes` is too long.
    pub(crate) fn fill(&mut self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() > BUF_SIZE {
            return None;
        }
        let idx = self.free.pop()?;
        // SAFETY: `idx` came off the free list, so no queued send points at it; the copy stays
        // inside one BUF_SIZE buffer of the region (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(idx), bytes.len());
        }
        Some(idx)
    }

    pub(crate) fn ptr(&self, idx: u32) -> *mut u8 {
        assert!((idx as usize + 1) * BUF_SIZE <= self.region.len());
        // SAFETY: bounds checked above.
        unsafe { self.region.as_ptr().add(idx as usize * BUF_SIZE) }
    }

    pub(crate) fn release(&mut self, idx: u32) {
        self.free.push(idx);
    }

    pub(crate) fn is_exhausted(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_packet_returns_its_buffer_and_forwarded_one_does_not() {
        let pool = Rc::new(BufPool::new(4).unwrap());
        let mut p = Packet::new(pool.clone(), 2, 64..70);
        p.buf_mut()[64..70].copy_from_slice(b"abcdef");
        assert_eq!(p.payload(), b"abcdef");
        drop(p);
        let q = Packet::new(pool.clone(), 3, 64..64);
        assert_eq!(q.take(), 3);
        let mut out = Vec::new();
        pool.take_returned(&mut out);
        assert_eq!(out, vec![2]);
    }

    #[test]
    fn send_pool_refuses_oversize_and_runs_dry() {
        let mut sp = SendPool::new(1).unwrap();
        assert!(sp.fill(&[0; BUF_SIZE + 1]).is_none());
        let i = sp.fill(b"hi").unwrap();
        assert!(sp.is_exhausted());
        assert!(sp.fill(b"x").is_none());
        sp.release(i);
        assert!(sp.fill(b"x").is_some());
    }
}
