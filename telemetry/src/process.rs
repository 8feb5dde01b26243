//! The standard `process_*` metrics, read from `/proc/self` at scrape time.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

pub struct ProcessMetrics {
    cpu: Counter<f64, AtomicU64>,
    rss: Gauge,
    vsize: Gauge,
    fds: Gauge,
    threads: Gauge,
    start: Gauge<f64, AtomicU64>,
    /// CPU seconds already added to the counter (the counter only goes up by deltas).
    /// Scrapes are rare and may overlap; a mutex keeps the delta arithmetic exact.
    seen_cpu: Mutex<f64>,
}

fn clock_ticks() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf takes an integer name and returns an integer; no memory involved.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> i64 {
    #[allow(unsafe_code)]
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p
    } else {
        4096
    }
}

/// (utime + stime in seconds, start time in ticks since boot, vsize bytes, rss bytes, threads)
pub fn read_stat(pid: &str) -> Option<(f64, f64, i64, i64, i64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
    let ticks = clock_ticks();
    let cpu = (num(11)? + num(12)?) / ticks;
    let threads = num(17)? as i64;
    let start = num(19)?;
    let vsize = num(20)? as i64;
    let rss = num(21)? as i64 * page_size();
    Some((cpu, start, vsize, rss, threads))
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

impl ProcessMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProcessMetrics {
            cpu: Counter::default(),
            rss: Gauge::default(),
            vsize: Gauge::default(),
            fds: Gauge::default(),
            threads: Gauge::default(),
            start: Gauge::default(),
            seen_cpu: Mutex::new(0.0),
        };
        let p = registry.sub_registry_with_prefix("process");
        p.register_with_unit("cpu", "Total user and system CPU time spent", Unit::Seconds, m.cpu.clone());
        p.register_with_unit("resident_memory", "Resident memory size", Unit::Bytes, m.rss.clone());
        p.register_with_unit("virtual_memory", "Virtual memory size", Unit::Bytes, m.vsize.clone());
        p.register("open_fds", "Number of open file descriptors", m.fds.clone());
        p.register("threads", "Number of OS threads", m.threads.clone());
        p.register_with_unit("start_time", "Start time of the process since the Unix epoch", Unit::Seconds, m.start.clone());
        m.refresh();
        m
    }

    pub fn refresh(&self) {
        if let Some((cpu, start, vsize, rss, threads)) = read_stat("self") {
            if let Ok(mut seen) = self.seen_cpu.lock() {
                if cpu > *seen {
                    self.cpu.inc_by(cpu - *seen);
                    *seen = cpu;
                }
            }
            self.rss.set(rss);
            self.vsize.set(vsize);
            self.threads.set(threads);
            if let Some(bt) = boot_time() {
                self.start.set(bt + start / clock_ticks());
            }
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(d.count() as i64);
        }
    }
}
