//! Process metrics from `/proc/self`, with the Prometheus client libraries' standard names
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, ...). Read at scrape time;
//! anything unreadable (not Linux, restricted /proc) is simply left out.

use std::fs;

/// The kernel reports `/proc` times in USER_HZ clock ticks, which the Linux ABI fixes at 100
/// on every architecture we ship for (it is what `sysconf(_SC_CLK_TCK)` returns); reading it
/// through libc would be the only reason for an FFI dependency here.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

pub(crate) fn read() -> ProcessStats {
    let mut s = ProcessStats::default();
    if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
        if let Some(p) = parse_stat(&stat) {
            s.cpu_seconds = Some((p.utime + p.stime) as f64 / USER_HZ);
            s.virtual_bytes = Some(p.vsize);
            if let Some(btime) = fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(parse_btime)
            {
                s.start_time_seconds = Some(btime as f64 + p.starttime as f64 / USER_HZ);
            }
        }
    }
    s.resident_bytes = fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(parse_vm_rss);
    s.open_fds = fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.filter(Result::is_ok).count() as u64);
    s.max_fds = fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(parse_max_fds);
    s
}

#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

/// `/proc/self/stat`: the command name (field 2) is in parentheses and may contain spaces or
/// parentheses, so fields are counted from the last `)`; the first field after it is field 3.
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: num(14)?,
        stime: num(15)?,
        starttime: num(22)?,
        vsize: num(23)?,
    })
}

/// `btime <seconds since the epoch>` in `/proc/stat`: when the machine booted.
fn parse_btime(s: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS:   12345 kB` in `/proc/self/status`.
fn parse_vm_rss(s: &str) -> Option<u64> {
    let v = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}

/// `Max open files   <soft>   <hard>   files` in `/proc/self/limits`; the soft limit.
fn parse_max_fds(s: &str) -> Option<u64> {
    let v = s.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    v.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (egret (w) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    9 0 123456 987654321 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 \
                    1 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                utime: 250,
                stime: 50,
                starttime: 123456,
                vsize: 987654321
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_vm_rss("VmPeak:\t 10 kB\nVmRSS:\t    2048 kB\n"),
            Some(2048 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(parse_max_fds(limits), Some(1_048_576));
    }

    #[test]
    fn reads_this_process() {
        let s = read();
        if cfg!(target_os = "linux") {
            assert!(s.resident_bytes.is_some_and(|b| b > 0));
            assert!(s.open_fds.is_some_and(|n| n >= 3));
            assert!(s.cpu_seconds.is_some());
            assert!(s.start_time_seconds.is_some_and(|t| t > 1_000_000_000.0));
        }
    }
}
