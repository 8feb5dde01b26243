//! File descriptors. Each engine holds about 8 connections to a controller (registration,
//! heartbeat ping and pong, MUX, control, task, IOPub, broadcast); with Linux's usual soft
//! limit of 1,024 the controller runs out at roughly 120 engines, and what fails then is
//! an `accept` deep in libzmq, with nothing said to anyone. So at start the hub raises its
//! soft `RLIMIT_NOFILE` to the hard limit (as stock users do by hand with `ulimit -n`),
//! logs how many engines that leaves room for, and refuses registrations beyond it with
//! an error the engine prints.

use tracing::{info, warn};

/// Connections per engine to a process that runs the hub and the schedulers.
pub const PER_ENGINE_WITH_SCHEDULER: u64 = 8;
/// Connections per engine to the hub alone (registration, heartbeat ping and pong).
pub const PER_ENGINE_HUB_ONLY: u64 = 3;
/// Connections per engine to a scheduler child (MUX, control, task, IOPub, broadcast).
pub const PER_ENGINE_SCHEDULER_ONLY: u64 = 5;
/// Kept free for clients, the metrics endpoint, the task database and logs.
pub const RESERVE: u64 = 64;

/// How many engines fit in `soft` descriptors with `open` already in use.
pub fn room(soft: u64, open: u64, per_engine: u64) -> usize {
    let free = soft.saturating_sub(open).saturating_sub(RESERVE);
    usize::try_from(free / per_engine.max(1)).unwrap_or(usize::MAX)
}

/// Raises the soft limit to the hard one; returns the soft limit now in force.
pub fn raise() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            warn!("cannot raise the file-descriptor limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft)
        }
    }
}

/// Descriptors this process has open now.
pub fn open_now() -> u64 {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0)
}

/// Raises the limit, logs the room it leaves, and returns the engine capacity.
pub fn plan(per_engine: u64) -> usize {
    let Some(soft) = raise() else { return usize::MAX };
    if soft == rlimit::INFINITY {
        return usize::MAX;
    }
    let open = open_now();
    let engines = room(soft, open, per_engine);
    info!(limit = soft, open, per_engine, "file descriptors: room for {engines} engines");
    if engines < 16 {
        warn!("the file-descriptor limit ({soft}) leaves room for only {engines} engines; raise it with ulimit -n");
    }
    engines
}

/// The room of a scheduler child, which inherits our (raised) limit and has about as much
/// open before engines come as we do: in process mode the smaller of the two rooms is the
/// controller's, or engines past the scheduler's would register and then fail to connect.
pub fn scheduler_child_room() -> usize {
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else { return usize::MAX };
    if soft == rlimit::INFINITY {
        return usize::MAX;
    }
    room(soft, open_now(), PER_ENGINE_SCHEDULER_ONLY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_leaves_the_reserve_and_never_underflows() {
        assert_eq!(room(1024, 40, 8), (1024 - 40 - 64) / 8);
        assert_eq!(room(100, 90, 8), 0);
        assert_eq!(room(1 << 20, 40, 3), ((1 << 20) - 40 - 64) / 3);
        assert_eq!(room(1024, 40, 0), 1024 - 40 - 64);
    }
}
