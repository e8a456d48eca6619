//! The listener: LISTEN/NOTIFY wake-ups on a dedicated connection.
//!
//! Owns the channels `sisy_wakeup` (payload: a pool: a job changed or a pending run
//! appeared; forwarded only by the guardian acting for the pool, see `Leads`), `sisy_help`
//! (payload: a host asked by the full guardian acting for its pool), `sisy_kill` (payload:
//! a run id: `sisy.kill` or `overlap = replace`) and
//! `sisy_hosts` (payload: a host: drained or undrained). It wakes the dispatcher or stops a
//! run; kill requests reach the process in milliseconds instead of at the next heartbeat.
//! On a broken connection it reconnects with backoff (capped at the heartbeat interval, so it
//! is back within a heartbeat of the database) and wakes the dispatcher, since
//! notifications sent meanwhile are lost (the safety poll and heartbeat cover the rest). An
//! outage is logged once, by [`crate::outage`], not once per attempt. A connection that
//! falls silent (black-holed: no error, no notification, ever) looks like a quiet one, so
//! once per `lease` the listener asks it a trivial question; no answer within
//! `lease − heartbeat_interval` closes it and reconnects. Once per lease, not per heartbeat:
//! a notification lost meanwhile costs at most the dispatcher's safety poll, and an idle
//! guardian's statements stay few. Connecting and subscribing are bounded by the same limit.
//! Does not act on anything itself beyond forwarding. Not started with `listen = false`
//! (through a transaction pooler, where LISTEN cannot work): the dispatcher's tick every
//! `poll_interval` then finds triggered runs and kill requests.
//!
//! Its shape is every service's, with one difference: its work is not a pass but a session.
//! [`Listener::run_once`] connects, subscribes and forwards until the connection breaks —
//! it never ends well, so it returns how it ended ([`Ended`]) rather than a `Result`;
//! [`Listener::run`] is the loop around it (the backoff timer and `abandon`; the listener is
//! what wakes others, nothing wakes it). It reads the [`LiveConfig`] at every session and
//! notification rather than a config of its own: a reload's pools, lease and database URL
//! apply from the next notification or reconnection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{self, q};
use crate::outage::{self, Outage};
use crate::run::StopReason;
use crate::run::table::RunTable;
use crate::service::{Leads, LiveConfig};

/// What the listener needs: where to forward (the dispatcher's wake-up, the run table), and
/// when to end (`abandon`: it listens for kills until the guardian exits).
pub struct Listener {
    pub config: LiveConfig,
    pub host: String,
    pub runs: Arc<RunTable>,
    pub wake: Arc<Notify>,
    /// Which pools' wake-ups are this guardian's to act on.
    pub leads: Leads,
    pub outage: Arc<Outage>,
    pub abandon: CancellationToken,
}

/// The first pause before reconnecting, and the one after a session that subscribed.
const FIRST_PAUSE: Duration = Duration::from_millis(200);

/// How a session ended: the connection broke (or never opened), and whether it had
/// subscribed (it was healthy, so the backoff starts again).
struct Ended {
    subscribed: bool,
    error: anyhow::Error,
}

impl Listener {
    /// The listener's loop; returns when the guardian abandons its work.
    pub async fn run(self) {
        let mut pause = FIRST_PAUSE;
        loop {
            let ended = tokio::select! {
                ended = self.run_once() => ended,
                _ = self.abandon.cancelled() => return,
            };
            if ended.subscribed {
                pause = FIRST_PAUSE;
            }
            let e = ended.error;
            if outage::is_connection_error(&e) {
                self.outage.failed("listener", &e);
            } else {
                tracing::warn!(error = %format!("{e:#}"), "notification connection failed; reconnecting with backoff");
            }
            self.wake.notify_one();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.abandon.cancelled() => return,
            }
            pause = (pause * 2).min(self.config.get().heartbeat_interval);
        }
    }

    /// One session: listens until the connection breaks.
    async fn run_once(&self) -> Ended {
        let subscribed = AtomicBool::new(false);
        let error = match self.listen(&subscribed).await {
            Ok(never) => match never {},
            Err(e) => e,
        };
        Ended {
            subscribed: subscribed.load(Ordering::Relaxed),
            error,
        }
    }

    /// Connects, subscribes (then sets `subscribed`) and forwards notifications; only an
    /// error ends it.
    async fn listen(&self, subscribed: &AtomicBool) -> Result<Infallible> {
        let config = self.config.get();
        let (every, limit) = (
            config.lease,
            config.lease.saturating_sub(config.heartbeat_interval),
        );
        let began = std::time::Instant::now();
        let connect = db::connect_for_notifications(&config.database_url);
        // Bounded like the heartbeat's, which opens its connection within the same limit.
        let (client, mut connection) = tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| db::timed_out("a new notification connection", limit))??;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        // The client drives requests; the connection stream must be polled for them to complete.
        let subscribe = async {
            let listen = client.batch_execute(q::LISTEN);
            tokio::time::timeout(limit, listen)
                .await
                .map_err(|_| db::timed_out("LISTEN", limit))??;
            tracing::debug!("listening for notifications");
            subscribed.store(true, Ordering::Relaxed);
            self.outage.ok(began);
            // Whatever happened before LISTEN took effect: look once.
            self.wake.notify_one();
            loop {
                tokio::time::sleep(every).await;
                tokio::time::timeout(limit, client.simple_query(q::PING))
                    .await
                    .map_err(|_| db::timed_out("the notification connection's check", limit))??;
            }
        };
        tokio::pin!(subscribe);
        loop {
            tokio::select! {
                r = &mut subscribe => return r,
                msg = messages.next() => match msg {
                    Some(Ok(AsyncMessage::Notification(n))) => self.handle(n.channel(), n.payload()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the database closed the notification connection"),
                },
            }
        }
    }

    fn handle(&self, channel: &str, payload: &str) {
        match channel {
            // A new run or a changed job of a pool: for the one guardian acting for it.
            "sisy_wakeup" if self.leads.acts_for(payload) => self.wake.notify_one(),
            // This host, asked by the full guardian acting for its pool; drained or undrained.
            "sisy_help" | "sisy_hosts" if payload == self.host => self.wake.notify_one(),
            "sisy_kill" => {
                if let Ok(id) = payload.parse::<i64>() {
                    self.runs.stop(id, StopReason::KillRequested);
                }
            }
            _ => {}
        }
    }
}
