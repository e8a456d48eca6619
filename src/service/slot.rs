//! Where in its period each host's periodic statement falls: the heartbeat, and the poll of a
//! guardian without LISTEN.
//!
//! A fleet whose guardians started together (a rollout, or all of them reconnecting after a
//! database outage) would otherwise beat and poll in step, for good: a thousand heartbeats
//! inside a few milliseconds every interval, a stall of the database that every run falling
//! due then waits out (a scheduled run's p99 of 370 ms at a thousand guardians, its p50
//! 14 ms). Each host takes a fixed place in the period instead, from a hash of its name and
//! the wall clock, which the hosts share (as systemd's `FixedRandomDelay=` places a timer by
//! the machine id): spread evenly over the fleet, stable across restarts, and the period
//! itself unchanged, so neither the lease nor a poll's bound moves.
//! Pure: the clock is passed in.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, SystemTime};

/// The place of `key` (a host name and what recurs) in a period: the same for the same key,
/// spread evenly over keys.
pub fn phase_of(key: &str, period: Duration) -> Duration {
    let nanos = period.as_nanos();
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    Duration::from_nanos((u128::from(h.finish()) % nanos) as u64)
}

/// How long from `now` until the next instant at `phase` in the period (never zero: an
/// instant at the phase itself waits a whole period, the statement having just gone).
pub fn until_next(period: Duration, phase: Duration, now: SystemTime) -> Duration {
    let nanos = period.as_nanos();
    if nanos == 0 {
        return Duration::ZERO;
    }
    // A clock before 1970 is read as 1970: only the spread is at stake, never a bound.
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let into = since % nanos;
    let at = phase.as_nanos() % nanos;
    let wait = (at + nanos - into) % nanos;
    Duration::from_nanos(if wait == 0 { nanos } else { wait } as u64)
}

/// When the next statement goes: at this key's place in the period, but never later than one
/// period after the last one (`since_last`), whatever that place.
pub fn next_in(key: &str, period: Duration, since_last: Duration, now: SystemTime) -> Duration {
    until_next(period, phase_of(key, period), now).min(period.saturating_sub(since_last))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn the_wait_ends_at_the_phase_and_never_exceeds_a_period() {
        let phase = Duration::from_millis(300);
        assert_eq!(until_next(SECOND, phase, at(5_000)), phase);
        assert_eq!(
            until_next(SECOND, phase, at(5_299)),
            Duration::from_millis(1)
        );
        // At the phase itself: the next one, a period on.
        assert_eq!(until_next(SECOND, phase, at(5_300)), SECOND);
        assert_eq!(
            until_next(SECOND, phase, at(5_301)),
            Duration::from_millis(999)
        );
        for ms in (0..3_000).step_by(7) {
            let w = until_next(SECOND, phase, at(ms));
            assert!(w > Duration::ZERO && w <= SECOND, "{ms}: {w:?}");
        }
    }

    #[test]
    fn never_later_than_a_period_after_the_last() {
        let key = "host-a/poll";
        let phase = phase_of(key, SECOND);
        // Just after its place: the next would be almost a period away, but the last
        // statement went 800 ms ago.
        let now =
            SystemTime::UNIX_EPOCH + Duration::from_secs(10) + phase + Duration::from_millis(5);
        let wait = next_in(key, SECOND, Duration::from_millis(800), now);
        assert_eq!(wait, Duration::from_millis(200));
        // Long overdue: at once.
        assert_eq!(next_in(key, SECOND, 3 * SECOND, now), Duration::ZERO);
    }

    #[test]
    fn hosts_are_spread_over_the_period() {
        // A thousand hosts in ten slots of 100 ms: each holds about a hundred, none a crowd.
        let mut slots = [0usize; 10];
        for i in 0..1000 {
            let p = phase_of(&format!("host-{i}/beat"), SECOND);
            assert!(p < SECOND);
            slots[(p.as_millis() / 100) as usize] += 1;
        }
        assert!(slots.iter().all(|&n| (60..=140).contains(&n)), "{slots:?}");
        // The same key, the same place.
        assert_eq!(phase_of("h/beat", SECOND), phase_of("h/beat", SECOND));
    }

    #[test]
    fn a_zero_period_waits_for_nothing() {
        assert_eq!(phase_of("h", Duration::ZERO), Duration::ZERO);
        assert_eq!(
            until_next(Duration::ZERO, Duration::ZERO, at(1)),
            Duration::ZERO
        );
    }
}
