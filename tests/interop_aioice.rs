//! Interoperability with aioice (PyPI), a third-party ICE agent with its own TURN client: two
//! aioice agents with the relay-only policy gather relayed candidates from uturn, connect through
//! it (relay to relay on one server) and exchange data both ways. The script is
//! `tests/interop/aioice_pair.py`.
//!
//! Without Python's aioice the test prints "skipped: ..." and passes; with
//! `UTURN_REQUIRE_INTEROP=1` (CI, after `scripts/install-deps.sh`) that is a failure.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

both_backends!(aioice_pair_through_uturn);

fn aioice_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aioice"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let required = std::env::var("UTURN_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "python3 with aioice not installed and UTURN_REQUIRE_INTEROP=1: run scripts/install-deps.sh"
        );
        eprintln!("skipped: python3 -c 'import aioice' failed (run scripts/install-deps.sh)");
    }
    ok
}

fn aioice_pair_through_uturn(b: Backend) {
    if !aioice_available() {
        return;
    }
    let mut opts = RelayOptions::new(b);
    opts.metrics = true;
    let relay = opts.start();
    let (user, pass) = relay.opts.users[0].clone();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/aioice_pair.py");
    let mut cmd = Command::new("python3");
    cmd.args([
        script,
        &relay.listen.ip().to_string(),
        &relay.listen.port().to_string(),
        &user,
        &pass,
    ]);
    let mut p = Proc::spawn(cmd).expect("spawn python3");
    let status = p
        .wait_timeout(Duration::from_secs(60))
        .expect("aioice pair finished within 60 s");
    let out = p.output();
    eprintln!("=== {b:?}: aioice pair\n{out}");
    assert!(status.success(), "aioice pair failed:\n{out}");
    assert!(out.contains("exchanged 20 messages each way"), "{out}");
    // The traffic really went through uturn: two allocations, and at least the 40 messages
    // relayed in each direction (plus ICE checks).
    let m = relay.wait_metrics("the aioice run", |m| {
        m.sum("uturn_packets_relayed_total", &[("direction", "to_peer")]) >= 40.0
    });
    assert!(m.sum("uturn_allocations_total", &[]) >= 2.0);
    assert!(m.sum("uturn_packets_relayed_total", &[("direction", "to_client")]) >= 40.0);
}
