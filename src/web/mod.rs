//! `sisy web`: the dashboard, a read-only web page for people who would rather look than
//! query (SPEC §10). Server-rendered HTML (maud, checked at compile time, every value from a
//! row escaped), a small stylesheet, no JavaScript at all: the pages refresh themselves with
//! `<meta http-equiv="refresh">`, and the Content-Security-Policy forbids scripts, so that
//! even a value that escaped the escaping could not run.
//!
//! Owns the HTTP side: the routes, the headers every answer carries (`Server-Timing`, the
//! security headers), the error pages, and turning a page's data into HTML ([`pages`], on
//! the shared frame of [`frame`]). Reads through a pool of its own ([`db::page_pool`]), one
//! statement per page, each in a read-only transaction with a time limit
//! ([`db::read_page`]): `sisy_reader` rights are enough, and no page reads a job's `env`.
//! Binds to loopback unless told otherwise; the page has no authentication by design (README:
//! "The dashboard" says how to put it behind a reverse proxy that has).

mod frame;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db;

/// How long one page's statement may run on the server before the page says so.
const STATEMENT_LIMIT: Duration = Duration::from_secs(5);
/// How long a page waits for a connection and its statement altogether.
const PAGE_LIMIT: Duration = Duration::from_secs(10);
/// Connections to the database: a few pages at a time; more requests wait their turn.
const POOL_SIZE: usize = 4;

/// What the handlers share: the pool.
pub(crate) struct Web {
    pool: Pool,
}

/// Serves the dashboard on `listen` until `shutdown`, telling `bound` the address it
/// listens on (the port, when `listen` asked for port 0); an error if the address cannot be
/// bound or the server fails.
pub async fn serve(
    url: &str,
    listen: SocketAddr,
    bound: impl FnOnce(SocketAddr),
    shutdown: CancellationToken,
) -> Result<()> {
    let pool = db::page_pool(url, POOL_SIZE)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    if !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "the dashboard listens beyond this host and has no authentication: put it behind a reverse proxy that authenticates (README, \"The dashboard\")"
        );
    }
    bound(address);
    let app = router(Arc::new(Web { pool }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the dashboard's server failed")
}

fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(pages::fleet))
        .route("/jobs", get(pages::jobs))
        .route("/job", get(pages::job))
        .route("/runs", get(pages::runs))
        .route("/run", get(pages::run))
        .route("/flows", get(pages::flows))
        .route("/flow", get(pages::flow))
        .route("/flow.svg", get(pages::flow_svg))
        .route("/missed", get(pages::missed))
        .route("/style.css", get(stylesheet))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(headers))
        .with_state(web)
}

/// Every answer: how long the server took (`Server-Timing`, read by the benchmark and any
/// browser's developer tools), and headers that keep a page from running scripts, from being
/// framed, and from being cached by a proxy with stale data.
async fn headers(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={took:.2}")) {
        h.insert("server-timing", v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
        .into_response()
}

async fn not_found() -> Response {
    Problem::NotFound("there is no such page".to_string()).into_response()
}

/// Why a page could not be shown; each is a page of its own with the status it maps to.
#[derive(Debug)]
pub(crate) enum Problem {
    /// A parameter that does not read (`?id=abc`): what was wrong and what is expected.
    BadRequest(String),
    /// No such job, run or flow run.
    NotFound(String),
    /// The database failed, refused or did not answer in time.
    Database(String),
    /// The page's data was read but could not be drawn (a flow's graph).
    Drawing(String),
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            Problem::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            Problem::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            Problem::Database(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The database did not answer",
                m,
            ),
            Problem::Drawing(m) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be drawn",
                m,
            ),
        };
        let body = frame::page(
            title,
            frame::Nav::None,
            None,
            maud::html! { p.problem { (message) } },
        );
        (status, body).into_response()
    }
}

impl Web {
    /// Runs one page's statement, read-only and bounded on the server ([`db::read_page`]),
    /// and waited for at most [`PAGE_LIMIT`] here ([`db::within`]): a database that stops
    /// answering is an error page in bounded time, and the connection it held is closed,
    /// never handed to the next page (nor one a browser left mid-statement).
    pub(crate) async fn read(
        &self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, Problem> {
        let work = async {
            let client = db::checkout(&self.pool)
                .await
                .context("no connection to the database")?;
            let rows = db::read_page(&client, STATEMENT_LIMIT, sql, params)
                .await
                .map_err(|e| anyhow::anyhow!("{}", db::error_message(&e)))?;
            client.release();
            anyhow::Ok(rows)
        };
        db::within(&self.pool, PAGE_LIMIT, "the page's statement", work)
            .await
            .map_err(|e| Problem::Database(format!("{e:#}")))
    }
}
