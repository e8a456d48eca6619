//! Running the catalogue's statements the one way the connection allows: every guardian
//! statement goes through [`query`], [`query_one`] or [`execute`], and transactions that
//! take row locks start with [`begin`]; nothing else in the guardian chooses how.
//!
//! Two ways, chosen once per process by [`configure`] from the guardian's configuration:
//! - prepared (the default, a direct connection): a named statement per connection
//!   (`prepare_cached`), parsed and planned once, one round trip per execution;
//! - unnamed (`prepared_statements = false`, through a transaction pooler such as PgBouncer
//!   in `pool_mode = transaction`, which hands every transaction, or every statement outside
//!   one, to whichever server connection is free, and does not carry named statements from
//!   one to the next): Parse, Bind, Execute and Sync of the unnamed statement in one round
//!   trip (`query_typed`). Its parameter types are learned once per statement text by
//!   preparing it inside a transaction of its own (or the caller's), whose Close is sent
//!   before the transaction ends, so the named statement never outlives it on the server
//!   connection; they are kept for the life of the process. Every parameter and column of
//!   the catalogue has a built-in type: one of a type created in the schema would make the
//!   driver look it up with a statement it keeps named per connection.
//!
//! Session state is the other thing a transaction pooler does not keep: with
//! `session_state = false`, the limit on idle time inside a transaction (which the pool
//! otherwise sets once per connection, see [`super::pool_with_lock_limit`]) is set with
//! `SET LOCAL` by [`begin`], in the transaction it bounds.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, RwLock};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Transaction};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, GenericClient, Row, Statement};

use super::Conn;

/// How this process talks to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Named statements kept per connection (true) or unnamed ones (false).
    pub prepared_statements: bool,
    /// Whether a setting made once per connection holds for the connection's later
    /// transactions (false through a transaction pooler).
    pub session_state: bool,
    /// How long a transaction of [`begin`] may sit idle before the server ends it.
    pub idle_in_transaction: Duration,
}

impl Mode {
    /// A direct connection: prepared statements, session state kept.
    pub const DIRECT: Mode = Mode {
        prepared_statements: true,
        session_state: true,
        idle_in_transaction: super::DEFAULT_IDLE_IN_TRANSACTION,
    };
}

static MODE: RwLock<Mode> = RwLock::new(Mode::DIRECT);

/// The parameter types of each statement text run unnamed.
static TYPES: LazyLock<Mutex<HashMap<String, Vec<Type>>>> = LazyLock::new(Default::default);

/// Sets how this process runs its statements (the guardian, at start-up).
pub fn configure(mode: Mode) {
    *MODE.write().unwrap_or_else(|p| p.into_inner()) = mode;
}

/// How this process runs its statements.
pub fn mode() -> Mode {
    *MODE.read().unwrap_or_else(|p| p.into_inner())
}

/// Something statements run on: a pooled connection, a transaction on one, or a plain
/// client (the CLI, `migrate`).
pub trait Session: Sync {
    type Pg: GenericClient + Sync;
    /// Whether statements run inside a transaction already.
    const IN_TRANSACTION: bool;
    fn pg(&self) -> &Self::Pg;
    /// The statement prepared under a name (cached per connection where the type can).
    fn prepared(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send;
}

impl Session for ClientWrapper {
    type Pg = tokio_postgres::Client;
    const IN_TRANSACTION: bool = false;
    fn pg(&self) -> &Self::Pg {
        self
    }
    fn prepared(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare_cached(sql)
    }
}

impl Session for Conn {
    type Pg = tokio_postgres::Client;
    const IN_TRANSACTION: bool = false;
    fn pg(&self) -> &Self::Pg {
        self
    }
    fn prepared(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare_cached(sql)
    }
}

impl<'a> Session for Transaction<'a> {
    type Pg = tokio_postgres::Transaction<'a>;
    const IN_TRANSACTION: bool = true;
    fn pg(&self) -> &Self::Pg {
        self
    }
    fn prepared(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare_cached(sql)
    }
}

impl<'a> Session for tokio_postgres::Transaction<'a> {
    type Pg = tokio_postgres::Transaction<'a>;
    const IN_TRANSACTION: bool = true;
    fn pg(&self) -> &Self::Pg {
        self
    }
    fn prepared(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare(sql)
    }
}

impl Session for tokio_postgres::Client {
    type Pg = tokio_postgres::Client;
    const IN_TRANSACTION: bool = false;
    fn pg(&self) -> &Self::Pg {
        self
    }
    fn prepared(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare(sql)
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs `sql` and returns its rows.
pub async fn query<S: Session>(s: &S, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
    if mode().prepared_statements {
        let statement = s.prepared(sql).await?;
        s.pg().query(&statement, params).await
    } else {
        let typed = typed(s, sql, params).await?;
        s.pg().query_typed(sql, &typed).await
    }
}

/// Runs `sql`, which returns exactly one row.
pub async fn query_one<S: Session>(s: &S, sql: &str, params: Params<'_>) -> Result<Row, Error> {
    if mode().prepared_statements {
        let statement = s.prepared(sql).await?;
        s.pg().query_one(&statement, params).await
    } else {
        let typed = typed(s, sql, params).await?;
        s.pg().query_typed_one(sql, &typed).await
    }
}

/// Runs `sql`; the number of rows it changed.
pub async fn execute<S: Session>(s: &S, sql: &str, params: Params<'_>) -> Result<u64, Error> {
    if mode().prepared_statements {
        let statement = s.prepared(sql).await?;
        s.pg().execute(&statement, params).await
    } else {
        let typed = typed(s, sql, params).await?;
        s.pg().execute_typed(sql, &typed).await
    }
}

/// Starts a transaction that may take row locks: without session state, its idle limit is
/// set in it (see the module doc).
pub async fn begin(conn: &mut Conn) -> Result<Transaction<'_>, Error> {
    let mode = mode();
    let tx = conn.transaction().await?;
    if !mode.session_state {
        tx.batch_execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            mode.idle_in_transaction.as_millis().max(1)
        ))
        .await?;
    }
    Ok(tx)
}

/// The parameters with their types (see the module doc for how they are learned).
async fn typed<'a, S: Session>(
    s: &S,
    sql: &str,
    params: Params<'a>,
) -> Result<Vec<(&'a (dyn ToSql + Sync), Type)>, Error> {
    let known = TYPES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(sql)
        .cloned();
    let types = match known {
        Some(types) => types,
        None => {
            let types = learn(s, sql).await?;
            TYPES
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sql.to_string(), types.clone());
            types
        }
    };
    Ok(params.iter().copied().zip(types).collect())
}

/// Prepares `sql` inside a transaction and drops it there: the statement's Close goes out
/// before the transaction's end, on the same server connection.
async fn learn<S: Session>(s: &S, sql: &str) -> Result<Vec<Type>, Error> {
    let describe = |statement: Statement| statement.params().to_vec();
    if S::IN_TRANSACTION {
        return s.pg().prepare(sql).await.map(describe);
    }
    s.pg().batch_execute("BEGIN").await?;
    let learned = s.pg().prepare(sql).await.map(describe);
    let end = if learned.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    s.pg().batch_execute(end).await?;
    learned
}
