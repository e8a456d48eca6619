//! Tests of the heartbeat's pure parts: the watchdog deadline's rules, and the bound on a
//! beat that counts only the time the process ran.

use super::*;

const L: Duration = Duration::from_secs(3);
const M: Duration = Duration::from_millis(500);

fn at(base: std::time::Instant, ms: u64) -> std::time::Instant {
    base + Duration::from_millis(ms)
}

#[test]
fn successful_beats_give_the_tight_deadline() {
    let t = std::time::Instant::now();
    let mut d = Deadline::new(at(t, 3000));
    d.confirm(at(t, 1000), L);
    assert_eq!(d.renew(at(t, 1010), L, M), at(t, 4000));
    assert_eq!(d.check_at(M, at(t, 1010)), Some(at(t, 3500)));
}

#[test]
fn an_overdue_confirmation_is_stretched_by_the_live_guardian_and_kept() {
    let t = std::time::Instant::now();
    let mut d = Deadline::new(at(t, 3000));
    // The beats hang: at 2.5 s the confirmed deadline is within the margin.
    assert_eq!(d.renew(at(t, 2500), L, M), at(t, 5500));
    // Woken early (a success that confirms nothing later): the stretch stays.
    assert_eq!(d.renew(at(t, 2600), L, M), at(t, 5500));
    // At the stretch's own margin, it is taken again.
    assert_eq!(d.renew(at(t, 5000), L, M), at(t, 8000));
    // A beat succeeds again: back to the tight deadline, even though it is earlier.
    d.confirm(at(t, 5100), L);
    assert_eq!(d.renew(at(t, 5150), L, M), at(t, 8100));
}

#[test]
fn a_slow_success_never_leaves_less_than_the_margin() {
    let t = std::time::Instant::now();
    let mut d = Deadline::new(at(t, 3000));
    // Sent at 0.1 s, answered at 2.9 s: its confirmation is only 0.2 s away.
    d.confirm(at(t, 100), L);
    let published = d.renew(at(t, 2900), L, M);
    assert!(published >= at(t, 2900) + M, "{published:?}");
}

#[test]
fn a_deadline_that_passed_during_a_pause_is_revived_only_by_a_confirmed_beat() {
    let t = std::time::Instant::now();
    let mut d = Deadline::new(at(t, 3000));
    // Paused from 1 s to 10 s: the keep-alive timer fires on resume, late.
    assert_eq!(
        d.renew(at(t, 10_000), L, M),
        at(t, 3000),
        "revived by the timer"
    );
    assert_eq!(d.check_at(M, at(t, 10_000)), None, "the timer would spin");
    // The beat that was outstanding during the pause answers: it confirms nothing now.
    d.confirm(at(t, 900), L);
    assert_eq!(d.renew(at(t, 10_010), L, M), at(t, 3000));
    // A beat sent after the resume confirms the lease: the tight deadline again.
    d.confirm(at(t, 10_020), L);
    assert_eq!(d.renew(at(t, 10_030), L, M), at(t, 13_020));
    assert_eq!(d.check_at(M, at(t, 10_030)), Some(at(t, 12_520)));
}

/// The bound with a pause in the middle of the work: the runtime's only thread is
/// blocked (as SIGSTOP blocks them all) for longer than the bound, and the answer comes
/// soon after the resume.
async fn paused_beat<F, Fut>(bound: F) -> Result<u32>
where
    F: FnOnce(Pool, Duration, oneshot::Receiver<u32>) -> Fut,
    Fut: std::future::Future<Output = Result<u32>>,
{
    let pool = idle_pool();
    let (answer, answered) = oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1300));
        let _ = answer.send(7);
    });
    tokio::spawn(async {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1000));
    });
    bound(pool, Duration::from_millis(600), answered).await
}

use tokio::sync::oneshot;

/// A pool that is never used to connect (creating it connects to nothing).
fn idle_pool() -> Pool {
    let mut config = deadpool_postgres::Config::new();
    config.dbname = Some("none".into());
    config.create_pool(None, tokio_postgres::NoTls).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_pause_in_the_middle_of_a_beat_is_not_a_timeout() {
    let answer = paused_beat(|pool, limit, answered| async move {
        crate::db::within(&pool, limit, "the heartbeat", async {
            Ok(answered.await.unwrap())
        })
        .await
    })
    .await;
    assert_eq!(answer.unwrap(), 7);
}

#[tokio::test(flavor = "current_thread")]
async fn a_database_that_does_not_answer_still_times_out() {
    let pool = idle_pool();
    let start = Instant::now();
    let err = crate::db::within(&pool, Duration::from_millis(300), "the heartbeat", async {
        std::future::pending::<Result<()>>().await
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("did not answer the heartbeat"),
        "{err}"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
