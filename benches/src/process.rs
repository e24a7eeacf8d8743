//! Readings of other processes from `/proc`: CPU time, resident memory, load average.

use std::time::Duration;

/// utime + stime of `pid` (all threads), or `None` if it cannot be read.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    satsuma_bot::harness::cpu_time_of(pid).ok()
}

/// utime and stime of `pid` (all threads), apart, or `None` if they cannot be read.
pub fn cpu_times(pid: u32) -> Option<(Duration, Duration)> {
    satsuma_bot::harness::cpu_times_of(pid).ok()
}

/// Resident set size of `pid` in MiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&status).map(|kib| kib as f64 / 1024.0)
}

/// `VmRSS:` in KiB from a `/proc/<pid>/status` text.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Busy and total clock ticks of the whole machine (all cores) from `/proc/stat`'s `cpu` line:
/// busy = everything but idle and iowait. Two readings give the machine's CPU use in between
/// ([`machine_busy_cores`]), whoever used it.
pub fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// [`machine_ticks`] from a `/proc/stat` text.
pub fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Cores the whole machine kept busy between two [`machine_ticks`] readings (2.0: both cores of
/// a 2-core machine all the time).
pub fn machine_busy_cores(before: (u64, u64), after: (u64, u64), cores: usize) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    let busy = after.0.checked_sub(before.0)?;
    (total > 0).then(|| busy as f64 / total as f64 * cores as f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let text = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1536 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(text), Some(1536));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn machine_ticks_count_everything_but_idle_and_iowait() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((160, 1000)));
        assert_eq!(parse_machine_ticks("intr 1 2\n"), None);
        // 300 of 1000 ticks busy in between: 30 % of a 2-core machine, 0.6 cores.
        let cores = machine_busy_cores((160, 1000), (460, 2000), 2).unwrap();
        assert!((cores - 0.6).abs() < 1e-9, "{cores}");
        assert_eq!(machine_busy_cores((160, 1000), (160, 1000), 2), None);
        assert!(machine_ticks().is_some());
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_mib(me).unwrap() > 0.0);
        assert!(cpu_time(me).is_some());
        assert!(cpu_time(u32::MAX).is_none());
    }
}
