//! Process limits.

/// Raises the open-file soft limit to the hard limit (every allocation holds a relay socket) and
/// returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Descriptors kept back from relay sockets: stdio, the listeners, each worker's ring or epoll
/// and its wake-ups, the metrics server and its connections, the signal pipe, and slack for
/// the config file on reload. Without a reserve, a flood of allocations would starve those.
pub fn reserved_descriptors(threads: usize, listeners: usize) -> u64 {
    32 + (4 + listeners as u64) * threads as u64
}

/// How many relay sockets each worker may open with `nofile` descriptors in all. TCP and TLS
/// client connections (at most `tcp_max_connections`) and RFC 6062 peer connections are not
/// reserved here: they take descriptors from the same limit, and an accept that finds none is
/// counted and retried by the driver. An operator with stream listeners sizes `LimitNOFILE` for
/// both (tuning/uturn.service).
pub fn relay_socket_budget(nofile: u64, threads: usize, listeners: usize) -> usize {
    let spare = nofile.saturating_sub(reserved_descriptors(threads, listeners));
    (spare / threads.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_a_reserve_and_splits_between_workers() {
        assert_eq!(relay_socket_budget(64, 1, 1), 64 - 37);
        assert_eq!(relay_socket_budget(1_048_576, 4, 2), (1_048_576 - 56) / 4);
        assert_eq!(relay_socket_budget(10, 2, 2), 0);
    }
}
