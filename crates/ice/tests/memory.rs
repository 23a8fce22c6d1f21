//! How much memory a connected agent holds, measured with a counting global allocator: the
//! load generator runs 10,000 agents on two cores, so an agent must stay at a few KiB.
//!
//! This is its own test binary because the allocator is process-wide; it holds a single test
//! so that no other test allocates while it measures.

mod net;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use net::{Net, Spec};
use uturn_ice::{Agent, Policy};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Connects a pair, keeps it running a while, and returns the heap both agents hold.
fn heap_of_connected_pair(policy: Policy, servers: bool) -> usize {
    let mut spec = [Spec::new(true), Spec::new(false)];
    for (i, s) in spec.iter_mut().enumerate() {
        s.lan = i as u8 + 1;
        s.nat = true;
        s.servers = servers;
        s.policy = policy;
        s.mdns = true;
    }
    if !servers {
        for s in &mut spec {
            s.lan = 1;
            s.nat = false;
        }
    }
    let mut net = Net::new(spec);
    assert!(net.run_until(Duration::from_secs(10), Net::both_connected));
    net.run_for(Duration::from_secs(120));
    assert!(net.both_connected());
    let agents: Vec<Agent> = net.hosts.drain(..).map(|h| h.agent).collect();
    let vec_buffer = agents.capacity() * std::mem::size_of::<Agent>();
    let before = LIVE.load(Ordering::Relaxed);
    drop(agents);
    let after = LIVE.load(Ordering::Relaxed);
    (before - after) as usize - vec_buffer
}

#[test]
fn a_connected_agent_holds_a_few_kib() {
    let inline = std::mem::size_of::<Agent>();
    let host = heap_of_connected_pair(Policy::All, false) / 2;
    let relay = heap_of_connected_pair(Policy::RelayOnly, true) / 2;
    let all = heap_of_connected_pair(Policy::All, true) / 2;
    eprintln!(
        "Agent: {inline} B inline; heap per connected agent: host only {host} B, \
         relay-only with TURN {relay} B, all candidates with STUN+TURN {all} B"
    );
    assert!(inline <= 1024, "{inline}");
    assert!(host + inline <= 4 * 1024, "{host}");
    assert!(relay + inline <= 8 * 1024, "{relay}");
    assert!(all + inline <= 8 * 1024, "{all}");
}
