//! CPU time of a process from `/proc/PID/stat` (proc(5)): fields 14 and 15, utime and stime, in
//! clock ticks (`sysconf(_SC_CLK_TCK)`). Used for the relay (`--server-pid`) and for loadgen
//! itself, so that a report says which of the two was the limit.

use std::fs;
use std::io;
use std::time::Duration;

/// Why CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}: unexpected format")]
    Format(String),
}

/// Which process to read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Process {
    This,
    Pid(u32),
}

impl Process {
    fn path(self) -> String {
        match self {
            Process::This => "/proc/self/stat".into(),
            Process::Pid(p) => format!("/proc/{p}/stat"),
        }
    }

    /// User plus system CPU time used so far.
    pub fn cpu_time(self) -> Result<Duration, CpuError> {
        let path = self.path();
        let text = fs::read_to_string(&path).map_err(|source| CpuError::Read {
            path: path.clone(),
            source,
        })?;
        let ticks = parse_stat(&text).ok_or(CpuError::Format(path))?;
        Ok(ticks_to_duration(ticks, clock_ticks()))
    }
}

/// utime + stime in clock ticks from the text of a `stat` file. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted after the last
/// `)`.
pub fn parse_stat(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    // After the name: field 3 (state) is the first; utime is field 14, stime field 15.
    let utime: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Clock ticks per second (`_SC_CLK_TCK`); 100 when sysconf fails, the value on every Linux
/// architecture that loadgen runs on.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let per_second = per_second.max(1);
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

/// CPU time over a window: read at its start, then [`CpuWindow::finish`] at its end.
#[derive(Copy, Clone, Debug)]
pub struct CpuWindow {
    process: Process,
    start: Duration,
}

impl CpuWindow {
    pub fn start(process: Process) -> Result<Self, CpuError> {
        Ok(CpuWindow {
            process,
            start: process.cpu_time()?,
        })
    }

    /// CPU seconds used since [`CpuWindow::start`].
    pub fn finish(&self) -> Result<f64, CpuError> {
        let end = self.process.cpu_time()?;
        Ok(end.saturating_sub(self.start).as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_hostile_command_name() {
        // Field 2 is "(a) b) c)"; utime 1234, stime 56 (fields 14 and 15).
        let line = "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 1 0 \
                    100 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(1290));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn ticks_convert_exactly() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(ticks_to_duration(5, 0), Duration::from_secs(5));
        assert!(clock_ticks() > 0);
    }

    /// CPU time of this process from getrusage, an independent reference for /proc's figure.
    fn rusage_cpu() -> Duration {
        // SAFETY: getrusage fills the struct we pass; zeroed is a valid initial value for it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_SELF with a valid pointer.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let w = CpuWindow::start(Process::This).unwrap();
        // Spin until the kernel has charged 150 ms of CPU to us (by getrusage), however long
        // that takes on a busy machine: a wall-clock loop would measure the scheduler instead.
        let start = rusage_cpu();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while rusage_cpu() - start < Duration::from_millis(150) {
            assert!(std::time::Instant::now() < deadline, "no CPU time in 30 s");
            for _ in 0..10_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let used = w.finish().unwrap();
        // /proc counts in 10 ms ticks, and other test threads add their own time.
        assert!(used >= 0.12, "{used}");
        let me = Process::Pid(std::process::id()).cpu_time().unwrap();
        assert!(me >= Duration::from_millis(120));
    }
}
