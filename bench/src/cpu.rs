//! CPU accounting from /proc: the whole machine's busy share, this process's own CPU time, and
//! every process's (to tell who else used the machine during a load).

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

/// CPU time (user + system jiffies) of every process now, by pid, with its command name:
/// two snapshots tell who used the machine in between (`cpu_by_command`).
pub fn process_snapshot() -> std::collections::HashMap<u32, (String, u64)> {
    let mut processes = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return processes;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let command = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let jiffies = fields
            .get(11)
            .and_then(|utime| utime.parse::<u64>().ok())
            .zip(fields.get(12).and_then(|stime| stime.parse::<u64>().ok()))
            .map(|(utime, stime)| utime + stime);
        if let Some(jiffies) = jiffies {
            processes.insert(pid, (command, jiffies));
        }
    }
    processes
}

/// CPU used between two snapshots by command name, as a share of all cores over `wall_s`,
/// largest first. A process that started in between counts from zero; one that ended is lost.
pub fn cpu_by_command(
    before: &std::collections::HashMap<u32, (String, u64)>,
    after: &std::collections::HashMap<u32, (String, u64)>,
    wall_s: f64,
    ticks_per_s: f64,
) -> Vec<(String, f64)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut by_command: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for (pid, (command, jiffies)) in after {
        let earlier = before
            .get(pid)
            .filter(|(name, _)| name == command)
            .map_or(0, |(_, jiffies)| *jiffies);
        *by_command.entry(command.clone()).or_default() += jiffies.saturating_sub(earlier);
    }
    let mut shares: Vec<(String, f64)> = by_command
        .into_iter()
        .filter(|(_, jiffies)| *jiffies > 0)
        .map(|(command, jiffies)| (command, jiffies as f64 / ticks_per_s / wall_s / cores))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}
