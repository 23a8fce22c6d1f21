//! How much memory a connected agent holds, measured with a counting global allocator: the
//! load generator runs 10,000 agents on two cores, so an agent must stay at a few KiB.
//!
//! This is its own test binary because the allocator is process-wide. The counters are kept
//! per thread, so that the test harness printing results on its own thread does not show up in
//! a test's figures.

mod net;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use net::{Net, Spec};
use uturn_ice::{Agent, AgentConfig, Event, Input, Policy, State};

/// Counts live heap bytes and allocations, per thread.
struct Counting;

thread_local! {
    // `const` initialisers with no destructor: using them allocates nothing, which matters
    // inside an allocator.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: isize, allocations: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
    let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + allocations));
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize, 1);
        // SAFETY: the caller upholds `alloc`'s contract, which is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize), 0);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize, 1);
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
    let before = live();
    drop(agents);
    let after = live();
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

/// Delivers everything the agents want to send, straight from one to the other (a host pair on
/// one wire, no latency), with fixed buffers so that the driver itself allocates nothing.
fn wire(agents: &mut [Agent; 2], now: Instant, buf: &mut [u8], received: &mut usize) {
    loop {
        let mut progress = false;
        for i in 0..2 {
            while let Some(t) = agents[i].poll_transmit(buf) {
                let (from, to, len) = (t.from, t.to, t.len);
                if let Input::Data { .. } = agents[1 - i].handle_input(now, to, from, &buf[..len]) {
                    *received += 1;
                }
                progress = true;
            }
        }
        if !progress {
            return;
        }
    }
}

#[test]
fn steady_state_allocates_nothing() {
    let t0 = Instant::now();
    let mk = |controlling, seed, base: &str| {
        let mut a = Agent::new(AgentConfig::new(controlling, [seed; 32])).unwrap();
        a.add_host(base.parse().unwrap(), None).unwrap();
        a
    };
    let mut agents = [mk(true, 1, "10.0.0.1:5000"), mk(false, 2, "10.0.0.2:5000")];
    for i in 0..2 {
        let c = agents[i].local_credentials().clone();
        agents[1 - i]
            .set_remote_credentials(c.ufrag(), c.pwd())
            .unwrap();
        agents[i].gather(t0);
    }
    for i in 0..2 {
        while let Some(e) = agents[i].poll_event() {
            match e {
                Event::LocalCandidate(c) => agents[1 - i].add_remote_candidate(t0, &c).unwrap(),
                Event::GatheringDone => agents[1 - i].set_remote_gathering_done(),
                _ => {}
            }
        }
    }
    let mut buf = [0u8; 1500];
    let mut now = t0;
    let mut received = 0;
    let mut step = |agents: &mut [Agent; 2], now: &mut Instant, received: &mut usize| {
        wire(agents, *now, &mut buf, received);
        for a in agents.iter_mut() {
            while a.poll_event().is_some() {}
        }
        *now = agents
            .iter()
            .filter_map(|a| a.poll_timeout())
            .min()
            .unwrap();
        for a in agents.iter_mut() {
            if a.poll_timeout().is_some_and(|t| t <= *now) {
                a.handle_timeout(*now);
            }
        }
    };
    // Connect, and run long enough for every table to reach its working size.
    while now < t0 + Duration::from_secs(60) {
        step(&mut agents, &mut now, &mut received);
    }
    assert!(agents.iter().all(|a| a.state() == State::Connected));

    let before = allocations();
    received = 0;
    let mut sent = 0;
    // Two minutes of consent checks, and ten datagrams each way at every wakeup.
    let end = now + Duration::from_secs(120);
    let mut payload = [7u8; 200];
    let mut out = [0u8; 1500];
    while now < end {
        for i in 0..2 {
            for n in 0..10u8 {
                payload[0] = n;
                let t = agents[i].send(&payload, &mut out).unwrap();
                sent += 1;
                if let Input::Data { payload: p, .. } =
                    agents[1 - i].handle_input(now, t.to, t.from, &out[..t.len])
                {
                    assert_eq!(p[0], n);
                    received += 1;
                }
            }
        }
        step(&mut agents, &mut now, &mut received);
    }
    let allocations = allocations() - before;
    assert!(sent >= 500, "{sent}");
    assert_eq!(received, sent);
    assert_eq!(allocations, 0, "the data path and consent allocate nothing");
    assert!(agents.iter().all(|a| a.state() == State::Connected));
}
