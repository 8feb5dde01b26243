//! CPU time and RSS of a process tree, read from `/proc`.
//!
//! CPU = utime + stime (fields 14 and 15 of `/proc/<pid>/stat`) summed over the root and
//! every live descendant (found through the `ppid` field of every `/proc/*/stat`), in
//! clock ticks (`getconf CLK_TCK`). RSS = the sum of `VmRSS` of the same processes, fds
//! the number of their open file descriptors.

use std::collections::HashMap;
use std::fs;

#[derive(Clone, Copy, Debug, Default)]
pub struct TreeSample {
    /// utime + stime of every process of the tree, in clock ticks.
    pub ticks: u64,
    pub rss_kb: u64,
    /// Sum of `Pss` (`/proc/<pid>/smaps_rollup`): shared pages split between the
    /// processes, fairer than RSS for a forked tree such as the stock controller's.
    pub pss_kb: u64,
    pub processes: usize,
    /// Open file descriptors of the tree (`/proc/<pid>/fd` entries): constant over a soak
    /// unless something leaks connections or files.
    pub fds: u64,
}

/// `sysconf(_SC_CLK_TCK)`, via `getconf` (no unsafe here); 100 if that fails.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// `(ppid, utime + stime)` from a `/proc/<pid>/stat` line. `comm` may hold spaces and
/// parentheses, so split after the last `)`.
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn kb_field(path: &str, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn pss_kb(pid: u32) -> u64 {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// The root and all its live descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(parse_stat) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied());
        }
        i += 1;
    }
    out
}

/// Samples the whole tree under `root`; `None` if `root` is gone.
pub fn sample(root: u32) -> Option<TreeSample> {
    fs::metadata(format!("/proc/{root}")).ok()?;
    let mut s = TreeSample::default();
    for pid in tree(root) {
        if let Some((_, t)) = fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(parse_stat) {
            s.ticks += t;
            s.rss_kb += rss_kb(pid);
            s.pss_kb += pss_kb(pid);
            s.fds += fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
            s.processes += 1;
        }
    }
    Some(s)
}

/// `[pid, name, rss_kb]` of every process of the tree (which one holds the memory).
pub fn rss_by_process(root: u32) -> Vec<(u32, String, u64)> {
    tree(root)
        .into_iter()
        .map(|pid| {
            let name = fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_owned()).unwrap_or_default();
            (pid, name, rss_kb(pid))
        })
        .filter(|(_, _, rss)| *rss > 0)
        .collect()
}

/// This process's own CPU ticks (the load generator's cost, for context).
pub fn self_ticks() -> u64 {
    fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat).map(|(_, t)| t).unwrap_or(0)
}

/// The 1-minute load average, to note how busy the machine was.
pub fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let line = "123 (a) b (c)) S 7 123 123 0 -1 4194560 100 0 0 0 25 17 0 0 20 0 1 0 5 100 10";
        assert_eq!(parse_stat(line), Some((7, 42)));
    }

    #[test]
    fn own_tree_is_sampled() {
        let s = sample(std::process::id()).expect("self");
        assert!(s.processes >= 1);
        assert!(s.rss_kb > 0);
    }
}
