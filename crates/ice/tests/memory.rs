//! How much memory a connected agent holds, measured with a counting global allocator: the
//! load generator runs 10,000 agents on two cores, so an agent must stay at a few KiB.
//!
//! This is its own test binary because the allocator is process-wide; its tests take a lock so
//! that no other test allocates while one measures.

mod net;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use net::{Net, Spec};
use uturn_ice::{Agent, AgentConfig, Event, Input, Policy, State};

static SERIAL: Mutex<()> = Mutex::new(());

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

    let before = ALLOCATIONS.load(Ordering::Relaxed);
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
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert!(sent >= 500, "{sent}");
    assert_eq!(received, sent);
    assert_eq!(allocations, 0, "the data path and consent allocate nothing");
    assert!(agents.iter().all(|a| a.state() == State::Connected));
}
