//! CPU accounting from /proc: the whole machine's busy share, and this process's own CPU time.

/// Cumulative busy and total jiffies of all cores (first line of /proc/stat), and this
/// process's user + system jiffies (/proc/self/stat).
#[derive(Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
    process: Option<u64>,
}

impl CpuTimes {
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu  user nice system idle iowait irq softirq steal ...
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        let total: u64 = fields.iter().sum();
        let idle = fields.get(3)? + fields.get(4)?;
        Some(Self {
            busy: total - idle,
            total,
            process: process_jiffies(),
        })
    }

    /// Share of all cores busy (not idle, not waiting for I/O) between two readings, 0 to 1.
    pub fn busy_between(before: Option<Self>, after: Option<Self>) -> Option<f64> {
        let (before, after) = (before?, after?);
        let total = after.total.checked_sub(before.total)?;
        (total > 0).then(|| (after.busy - before.busy) as f64 / total as f64)
    }

    /// Share of all cores used by this process between two readings, 0 to 1.
    pub fn process_between(before: Option<Self>, after: Option<Self>) -> Option<f64> {
        let (before, after) = (before?, after?);
        let total = after.total.checked_sub(before.total)?;
        let used = after.process?.checked_sub(before.process?)?;
        (total > 0).then(|| used as f64 / total as f64)
    }
}

/// utime + stime of this process, fields 14 and 15 of /proc/self/stat (after the command name,
/// which may hold spaces, in parentheses).
fn process_jiffies() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
