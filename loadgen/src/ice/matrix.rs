//! `--nat-matrix`: one pair of agents for every combination of NAT behaviours, the path each
//! pair ended on, and what theory says it should have been.
//!
//! # The theory
//!
//! Agent A (controlling) sits behind NAT A, agent B behind NAT B; each gathers a host candidate
//! (an mDNS name), a server-reflexive one `X_S` (the mapping its NAT made towards the STUN/TURN
//! server S) and a relayed one on S. The three public addresses (S, NAT A, NAT B) differ. A check
//! from X to Y leaves X's NAT through the mapping its *mapping* behaviour picks for that
//! destination (RFC 4787 section 4.1: the same one for every destination when
//! endpoint-independent, EIM; one per destination address, ADM; one per destination address and
//! port, APDM) and enters Y's NAT only if the *filtering* of the mapping it arrives on lets the
//! source in (section 5: anyone, EIF; addresses that mapping has sent to, ADF; addresses and
//! ports it has sent to, APDF). A response must come back from the address the check went to
//! (RFC 8445 section 7.2.5.2.1), and a check from an unknown source teaches the receiver a
//! peer-reflexive candidate that it checks at once (section 7.3.1.3 and 7.3.1.4).
//!
//! Working that through for each side's mapping `m` and filtering `f` (the derivation is in
//! `loadgen/README.md`), a direct path (server- or peer-reflexive) forms exactly when
//! [`hole_punching_works`]:
//!
//! 1. both mappings are EIM; or
//! 2. exactly one side X has an EIM mapping, and X's filtering is not APDF (the other side's
//!    checks come from a new port of its NAT, which X must let in; X has sent to that address);
//!    or
//! 3. neither mapping is EIM, they are not both APDM, and one side has EIF filtering while the
//!    other's is not APDF (the EIF side lets the first check in; every later one comes from a
//!    port the other side has not sent to, which only an ADM side answers from a port already
//!    known; two APDM sides make a new port for every new peer address, forever).
//!
//! Otherwise the pair ends on the relay: the relayed candidate's permission is per IP address
//! (RFC 8656 section 9), so a check from a host socket to the peer's relayed address always
//! gets through. Agents on one LAN (or with no NAT at all) connect host to host: their mDNS
//! names resolve only there. On a direct path the local candidate of an EIM side is its
//! server-reflexive address (its one mapping is what the peer sees) and that of any other side is
//! peer-reflexive (a mapping made for the peer). The EIM side's candidate is typed `srflx`, or
//! `prflx` when the answer to one of its checks taught it the address before the STUN server's
//! answer did (RFC 8445 section 7.2.5.3.1): the same address either way, so both count as
//! expected; a non-EIM side can only be `prflx`. With `--policy relay` every pair relays.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::nat::{Filtering, Mapping, NatBehavior};
use crate::stats::CandidateType;

/// Where the two agents of one pair of the matrix live.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Case {
    /// Both straight on loopback.
    NoNat,
    /// Both hosts of one LAN behind one NAT.
    SameLan(NatBehavior),
    /// Each on a LAN of its own: A (controlling) behind `a`, B behind `b`.
    Apart { a: NatBehavior, b: NatBehavior },
}

impl Case {
    /// How the report names A's and B's networks.
    pub fn labels(&self) -> (String, String) {
        match self {
            Case::NoNat => ("none".into(), "none".into()),
            Case::SameLan(b) => (format!("{b} (one LAN)"), format!("{b} (one LAN)")),
            Case::Apart { a, b } => (a.to_string(), b.to_string()),
        }
    }
}

/// The matrix: no NAT, the nine behaviours with both agents on one LAN, and all 81 ordered
/// pairs of behaviours with the agents apart. Pair `i` of the run is case `i`.
pub fn cases(timeout: Duration) -> Vec<Case> {
    let all = NatBehavior::all(timeout);
    let mut v = vec![Case::NoNat];
    v.extend(all.iter().map(|&b| Case::SameLan(b)));
    for &a in &all {
        for &b in &all {
            v.push(Case::Apart { a, b });
        }
    }
    v
}

/// The kind of path a pair's selected candidate pair is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Host to host.
    Host,
    /// Through the NATs without the relay: server- or peer-reflexive candidates.
    Direct,
    /// A relayed candidate on either end.
    Relay,
}

impl Path {
    fn letter(self) -> char {
        match self {
            Path::Host => 'H',
            Path::Direct => 'D',
            Path::Relay => 'R',
        }
    }

    fn name(self) -> &'static str {
        match self {
            Path::Host => "host",
            Path::Direct => "direct",
            Path::Relay => "relay",
        }
    }
}

/// What theory predicts for a case.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub path: Path,
    /// On a direct path, A's and B's local candidate types.
    pub local: Option<[CandidateType; 2]>,
}

/// See the [module documentation](self), rules 1 to 3.
pub fn hole_punching_works(a: NatBehavior, b: NatBehavior) -> bool {
    use Filtering::{AddressAndPortDependent as Apdf, EndpointIndependent as Eif};
    use Mapping::{AddressAndPortDependent as Apdm, EndpointIndependent as Eim};
    match (a.mapping == Eim, b.mapping == Eim) {
        (true, true) => true,
        (true, false) => a.filtering != Apdf,
        (false, true) => b.filtering != Apdf,
        (false, false) => {
            !(a.mapping == Apdm && b.mapping == Apdm)
                && ((a.filtering == Eif && b.filtering != Apdf)
                    || (b.filtering == Eif && a.filtering != Apdf))
        }
    }
}

/// What RFC 4787 and RFC 8445 predict for `case`; `relay_only` is `--policy relay`.
pub fn expect(case: &Case, relay_only: bool) -> Expectation {
    let reflexive = |n: &NatBehavior| {
        if n.mapping == Mapping::EndpointIndependent {
            CandidateType::Srflx
        } else {
            CandidateType::Prflx
        }
    };
    let path = |p| Expectation {
        path: p,
        local: None,
    };
    if relay_only {
        return path(Path::Relay);
    }
    match case {
        Case::NoNat | Case::SameLan(_) => Expectation {
            path: Path::Host,
            local: Some([CandidateType::Host; 2]),
        },
        Case::Apart { a, b } if hole_punching_works(*a, *b) => Expectation {
            path: Path::Direct,
            local: Some([reflexive(a), reflexive(b)]),
        },
        Case::Apart { .. } => path(Path::Relay),
    }
}

/// The selected pair of one agent: its local and remote candidate types.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selected {
    pub local: CandidateType,
    pub remote: CandidateType,
}

/// How one pair of a run ended up, as the scenario reports it (first connection only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairOutcome {
    /// Run-wide pair number.
    pub pair: usize,
    /// Start to connected, per agent.
    pub setup: [Option<Duration>; 2],
    pub selected: [Option<Selected>; 2],
}

impl PairOutcome {
    /// The kind of path, once both agents connected.
    pub fn path(&self) -> Option<Path> {
        let [Some(a), Some(b)] = self.selected else {
            return None;
        };
        let kinds = [a.local, a.remote, b.local, b.remote];
        Some(if kinds.contains(&CandidateType::Relay) {
            Path::Relay
        } else if kinds.iter().all(|&k| k == CandidateType::Host) {
            Path::Host
        } else {
            Path::Direct
        })
    }

    /// Both agents connected: the later of their setup times.
    pub fn setup(&self) -> Option<Duration> {
        Some(self.setup[0]?.max(self.setup[1]?))
    }
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub pair: usize,
    pub a_nat: String,
    pub b_nat: String,
    pub expected: Path,
    /// On a direct or host path, the local candidate types theory predicts for A and B.
    pub expected_local: Option<[CandidateType; 2]>,
    /// `None`: the pair did not connect.
    pub path: Option<Path>,
    pub a: Option<Selected>,
    pub b: Option<Selected>,
    pub setup_ms: Option<u64>,
    pub ok: bool,
}

/// The whole matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Matrix {
    pub relay_only: bool,
    pub rows: Vec<Row>,
    #[serde(skip)]
    cases: Vec<Case>,
}

impl Matrix {
    /// Compares each case with its pair's outcome (a case without one did not connect).
    pub fn build(cases: &[Case], relay_only: bool, outcomes: &[PairOutcome]) -> Matrix {
        let rows = cases
            .iter()
            .enumerate()
            .map(|(i, case)| {
                let exp = expect(case, relay_only);
                let out = outcomes.iter().find(|o| o.pair == i);
                let path = out.and_then(PairOutcome::path);
                let [a, b] = out.map_or([None, None], |o| o.selected);
                let locals_match = match (exp.local, a, b) {
                    (None, _, _) => true,
                    (Some([ea, eb]), Some(a), Some(b)) => fits(ea, a.local) && fits(eb, b.local),
                    _ => false,
                };
                let (a_nat, b_nat) = case.labels();
                Row {
                    pair: i,
                    a_nat,
                    b_nat,
                    expected: exp.path,
                    expected_local: exp.local,
                    path,
                    a,
                    b,
                    setup_ms: out
                        .and_then(PairOutcome::setup)
                        .map(|d| d.as_millis() as u64),
                    ok: path == Some(exp.path) && locals_match,
                }
            })
            .collect();
        Matrix {
            relay_only,
            rows,
            cases: cases.to_vec(),
        }
    }

    /// Pairs that did not do what theory says.
    pub fn mismatches(&self) -> usize {
        self.rows.iter().filter(|r| !r.ok).count()
    }

    /// The grid (A's NAT in rows, B's in columns) and the table of every pair.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let cell = |r: &Row| {
            let c = r.path.map_or('x', Path::letter);
            let mark = if r.ok { ' ' } else { '!' };
            format!("{c}{mark}")
        };
        let _ = writeln!(
            out,
            "NAT matrix, policy {}: path of each pair (H host, D direct through the NATs, R relay, x not connected, ! differs from theory)",
            if self.relay_only { "relay" } else { "all" }
        );
        let behaviors: Vec<NatBehavior> = self
            .cases
            .iter()
            .filter_map(|c| match c {
                Case::SameLan(b) => Some(*b),
                _ => None,
            })
            .collect();
        let _ = write!(out, "  {:<11}", "A \\ B");
        for b in &behaviors {
            let _ = write!(out, "{:>10}", b.to_string());
        }
        let _ = writeln!(out);
        for a in &behaviors {
            let _ = write!(out, "  {:<11}", a.to_string());
            for b in &behaviors {
                let row = self
                    .cases
                    .iter()
                    .position(|c| matches!(c, Case::Apart { a: x, b: y } if x == a && y == b));
                let s = row.map_or_else(|| "  ".into(), |i| cell(&self.rows[i]));
                let _ = write!(out, "{s:>10}");
            }
            let _ = writeln!(out);
        }
        let same: Vec<String> = self
            .cases
            .iter()
            .zip(&self.rows)
            .filter(|(c, _)| matches!(c, Case::SameLan(_)))
            .map(|(_, r)| format!("{:>10}", cell(r)))
            .collect();
        if !same.is_empty() {
            let _ = writeln!(out, "  {:<11}{}", "one LAN", same.concat());
        }
        if let Some(r) = self
            .cases
            .iter()
            .zip(&self.rows)
            .find(|(c, _)| matches!(c, Case::NoNat))
            .map(|(_, r)| r)
        {
            let _ = writeln!(out, "  {:<11}{:>10}", "no NAT", cell(r));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:>4}  {:<19} {:<19} {:<19} {:<7} {:<14} {:<14} {:>8}",
            "pair",
            "A nat",
            "B nat",
            "expected",
            "path",
            "A local/remote",
            "B local/remote",
            "setup ms"
        );
        let sel = |s: Option<Selected>| {
            s.map_or_else(
                || "-".to_string(),
                |s| format!("{}/{}", name(s.local), name(s.remote)),
            )
        };
        for r in &self.rows {
            let expected = match r.expected_local {
                Some([a, b]) if r.expected == Path::Direct => {
                    format!("{} {}/{}", r.expected.name(), name(a), name(b))
                }
                _ => r.expected.name().to_string(),
            };
            let _ = writeln!(
                out,
                "  {:>4}  {:<19} {:<19} {:<19} {:<7} {:<14} {:<14} {:>8}{}",
                r.pair,
                r.a_nat,
                r.b_nat,
                expected,
                r.path.map_or("failed", Path::name),
                sel(r.a),
                sel(r.b),
                r.setup_ms.map_or_else(|| "-".into(), |m| m.to_string()),
                if r.ok { "" } else { "  MISMATCH" }
            );
        }
        let bad = self.mismatches();
        if bad == 0 {
            let _ = writeln!(
                out,
                "matrix: all {} pairs as theory predicts",
                self.rows.len()
            );
        } else {
            let _ = writeln!(
                out,
                "matrix: {bad} of {} pairs differ from theory",
                self.rows.len()
            );
        }
        out
    }
}

/// Whether a selected local candidate type is what theory predicts: a server-reflexive
/// address may have been learned as peer-reflexive first (see the module documentation).
fn fits(expected: CandidateType, got: CandidateType) -> bool {
    got == expected || (expected == CandidateType::Srflx && got == CandidateType::Prflx)
}

fn name(t: CandidateType) -> &'static str {
    match t {
        CandidateType::Host => "host",
        CandidateType::Srflx => "srflx",
        CandidateType::Prflx => "prflx",
        CandidateType::Relay => "relay",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::DEFAULT_TIMEOUT;
    use Filtering::{
        AddressAndPortDependent as Apdf, AddressDependent as Adf, EndpointIndependent as Eif,
    };
    use Mapping::{
        AddressAndPortDependent as Apdm, AddressDependent as Adm, EndpointIndependent as Eim,
    };

    fn n(m: Mapping, f: Filtering) -> NatBehavior {
        NatBehavior::new(m, f)
    }

    #[test]
    fn the_issue_s_landmarks() {
        // EIM and EIF on both sides: direct, server-reflexive both ways.
        let full = n(Eim, Eif);
        let e = expect(&Case::Apart { a: full, b: full }, false);
        assert_eq!(e.path, Path::Direct);
        assert_eq!(e.local, Some([CandidateType::Srflx; 2]));
        // APDM on both sides: relay, whatever the filtering.
        for fa in Filtering::ALL {
            for fb in Filtering::ALL {
                assert!(!hole_punching_works(n(Apdm, fa), n(Apdm, fb)));
            }
        }
        // One LAN: host, whatever the NAT; --policy relay: relay.
        for b in NatBehavior::all(DEFAULT_TIMEOUT) {
            assert_eq!(expect(&Case::SameLan(b), false).path, Path::Host);
            assert_eq!(expect(&Case::SameLan(b), true).path, Path::Relay);
        }
        assert_eq!(expect(&Case::NoNat, false).path, Path::Host);
    }

    #[test]
    fn the_rule_is_symmetric_and_counts_as_derived() {
        let all = NatBehavior::all(DEFAULT_TIMEOUT);
        let mut direct = 0;
        for &a in &all {
            for &b in &all {
                assert_eq!(hole_punching_works(a, b), hole_punching_works(b, a));
                direct += usize::from(hole_punching_works(a, b));
            }
        }
        // Rule 1: 9 (3 x 3 filterings). Rule 2: 2 x (2 filterings x 6 non-EIM behaviours)
        // = 24. Rule 3: the 36 non-EIM pairs minus the 9 APDM/APDM ones = 27, of which those
        // with one EIF side and the other not APDF: counted below by hand.
        let rule3: usize = [Adm, Apdm]
            .iter()
            .flat_map(|&ma| [Adm, Apdm].map(move |mb| (ma, mb)))
            .filter(|&(ma, mb)| !(ma == Apdm && mb == Apdm))
            .map(|_| {
                // (fa, fb) with (fa = EIF and fb != APDF) or (fb = EIF and fa != APDF):
                // (E,E) (E,A) (A,E) = 3 of 9.
                3
            })
            .sum();
        assert_eq!(direct, 9 + 24 + rule3);
        assert_eq!(direct, 42);
        // Spot checks of rule 2 and 3.
        assert!(hole_punching_works(n(Eim, Adf), n(Apdm, Apdf)));
        assert!(!hole_punching_works(n(Eim, Apdf), n(Apdm, Eif)));
        assert!(hole_punching_works(n(Adm, Adf), n(Apdm, Eif)));
        assert!(!hole_punching_works(n(Adm, Adf), n(Adm, Adf)));
        assert!(!hole_punching_works(n(Adm, Apdf), n(Adm, Eif)));
    }

    #[test]
    fn the_table_checks_itself() {
        let cases = cases(DEFAULT_TIMEOUT);
        assert_eq!(cases.len(), 1 + 9 + 81);
        let sel = |l, r| {
            Some(Selected {
                local: l,
                remote: r,
            })
        };
        use CandidateType::*;
        // Every pair as theory says, except pair 0 (no NAT) which relayed, and the last
        // (APDM both sides) which never connected.
        let outcomes: Vec<PairOutcome> = cases
            .iter()
            .enumerate()
            .take(cases.len() - 1)
            .map(|(i, c)| {
                let e = expect(c, false);
                let selected = match (i, e.path, e.local) {
                    (0, _, _) => [sel(Host, Relay), sel(Relay, Host)],
                    (_, Path::Relay, _) => [sel(Srflx, Relay), sel(Relay, Srflx)],
                    (_, _, Some([a, b])) => [sel(a, b), sel(b, a)],
                    _ => unreachable!(),
                };
                PairOutcome {
                    pair: i,
                    setup: [Some(Duration::from_millis(100)); 2],
                    selected,
                }
            })
            .collect();
        let mut outcomes = outcomes;
        // An EIM side whose srflx address was learned as prflx first is still as predicted;
        // a non-EIM side cannot be srflx.
        let eim_eif = cases
            .iter()
            .position(|c| matches!(c, Case::Apart { a, b } if a.mapping == Mapping::EndpointIndependent && b.mapping == Mapping::AddressAndPortDependent))
            .unwrap();
        outcomes[eim_eif].selected[0] = sel(Prflx, Prflx);
        let m = Matrix::build(&cases, false, &outcomes);
        assert!(m.rows[eim_eif].ok);
        outcomes[eim_eif].selected[1] = sel(Srflx, Prflx);
        let m2 = Matrix::build(&cases, false, &outcomes);
        assert!(!m2.rows[eim_eif].ok);
        assert_eq!(m.mismatches(), 2);
        assert!(!m.rows[0].ok && !m.rows[90].ok);
        assert_eq!(m.rows[90].path, None);
        let t = m.table();
        assert!(
            t.contains("matrix: 2 of 91 pairs differ from theory"),
            "{t}"
        );
        assert!(t.contains("MISMATCH"));
        assert!(t.contains("apdm-apdf"));
        // The grid has the nine behaviours as columns, and the failed pair shows as `x!`.
        assert!(t.contains("x!"), "{t}");
    }
}
