//! The one reader of `/proc`: process states, parents, groups, start times and
//! environments, for the supervisor (is a run's group still alive), the run shim (its
//! children to stop) and the orphan sweep (what a previous guardian left behind).
//!
//! Owns parsing `/proc/PID/stat` (the fields after the ")" closing the command name, which
//! may itself hold spaces and parentheses). Does not send signals nor decide whom to stop.
//! Synchronous and allocation-light: the run shim calls it with no runtime.

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// One letter: R, S, D, Z (zombie), X (dead), …
    pub state: String,
    pub ppid: i32,
    pub pgrp: i32,
    /// Start time in clock ticks after boot (field 22): with the pid, names one process.
    pub start_time: u64,
}

impl Stat {
    /// Whether the process still runs something: a zombie waits only to be reaped.
    pub fn is_live(&self) -> bool {
        self.state != "Z" && self.state != "X"
    }
}

/// The stat of process `pid`; None when it is gone or the line cannot be read.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a `/proc/PID/stat` line: state(3) ppid(4) pgrp(5) … starttime(22).
fn parse_stat(text: &str) -> Option<Stat> {
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.to_string(),
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every process id in `/proc` (empty when `/proc` cannot be read).
pub(crate) fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The live (not zombie) members of process group `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|s| s.pgrp == pgid && s.is_live()))
        .collect()
}

/// The live direct children of `parent`, with their process groups.
pub(crate) fn children_of(parent: i32) -> Vec<(i32, i32)> {
    pids()
        .into_iter()
        .filter_map(|pid| {
            let s = stat(pid)?;
            (s.ppid == parent && s.is_live()).then_some((pid, s.pgrp))
        })
        .collect()
}

/// The environment block of process `pid` (NUL-separated `KEY=value`), if readable.
pub(crate) fn environ(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ")).ok()
}

/// This boot's id: with a start time, tells a process of this boot from one of the last.
/// Read once per process (it cannot change while the process lives).
pub(crate) fn boot_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.state.as_str(), s.ppid, s.pgrp, s.start_time),
            ("S", 1, 42, 777)
        );
    }

    #[test]
    fn this_process_is_live_and_its_start_time_stable() {
        let me = std::process::id() as i32;
        let a = stat(me).expect("own stat");
        assert!(a.is_live());
        assert_eq!(stat(me).map(|s| s.start_time), Some(a.start_time));
        assert!(group_members(a.pgrp).contains(&me));
    }
}
