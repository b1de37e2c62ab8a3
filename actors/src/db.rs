//! Database start-up (create the node's database when missing, connect, migrate) and the
//! connections the hot path keeps between transactions.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use crate::config::SecretUrl;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot reach PostgreSQL at {url}: {source}")]
    Unreachable { url: String, source: sqlx::Error },
    #[error("cannot create database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// How long a pooled connection may sit idle before it is checked before use.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The outbox and inbox tables, shared by both nodes.
fn shared_migrator() -> Migrator {
    sqlx::migrate!("./migrations")
}

/// Connects to the node's database, creating it first when it does not exist, and applies
/// the shared and the node's own migrations.
pub async fn connect_and_migrate(
    url: &SecretUrl,
    pool_size: u32,
    mut node: Migrator,
) -> Result<PgPool, DbError> {
    let options =
        PgConnectOptions::from_str(&known_parameters_only(url.expose())).map_err(DbError::Url)?;
    create_database_if_missing(url, &options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::raw_sql(KEY_LOOKUPS_ONLY).execute(conn).await?;
                Ok(())
            })
        })
        // sqlx pings every connection it hands out: a round trip per transaction, a sixth
        // of all round trips under load. A connection used less than a second ago is
        // handed out as it is; if its session was terminated since, the statement fails
        // as "unavailable" like any other outage and its caller retries or answers 503.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| DbError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    // Two migration sets share one history table; each ignores the other's versions.
    let mut shared = shared_migrator();
    shared.set_ignore_missing(true).run(&pool).await?;
    node.set_ignore_missing(true).run(&pool).await?;
    Ok(pool)
}

/// Query parameters sqlx reads; it logs any other one *with its value* before ignoring
/// it, which would print e.g. an `sslpassword`.
const SQLX_PARAMETERS: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The URL without the query parameters sqlx would ignore anyway; their names (never their
/// values) are logged once here.
fn known_parameters_only(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (kept, dropped): (Vec<&str>, Vec<&str>) = query.split('&').partition(|pair| {
        let key = pair.split('=').next().unwrap_or_default();
        SQLX_PARAMETERS.contains(&key)
            || key.starts_with("options%5B")
            || key.starts_with("options[")
    });
    let dropped: Vec<&str> = dropped
        .iter()
        .filter_map(|pair| pair.split('=').next())
        .filter(|k| !k.is_empty())
        .collect();
    if !dropped.is_empty() {
        tracing::warn!(parameters = ?dropped, "DATABASE_URL: ignoring unrecognized connect parameters");
    }
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

async fn create_database_if_missing(
    url: &SecretUrl,
    options: &PgConnectOptions,
) -> Result<(), DbError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let unreachable = |source| DbError::Unreachable {
        url: url.to_string(),
        source,
    };
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(unreachable)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .map_err(unreachable)?;
    if !exists {
        // Identifiers cannot be bound; the name is quoted with embedded quotes doubled.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another replica created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(DbError::Create { name, source }),
        }
    }
    let _ = admin.close().await;
    Ok(())
}

/// Now, at PostgreSQL's microsecond precision, so what a node returns equals what it reads
/// back later.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// The planner settings of every connection of a node's pool: rows are found by key.
///
/// Every statement a node runs finds its rows by key (an order id, an event id, an outbox
/// id), usually a batch of keys from an array, or pages through an index in order. sqlx
/// prepares each statement and PostgreSQL soon caches one generic plan for it, costed with
/// the table statistics of that moment: planned while `orders` held 2,000 rows, the
/// consumer's batch `UPDATE` kept a hash join over a sequential scan of the whole table as
/// it grew, and the relay's `DELETE … WHERE id = ANY($1)` kept a sequential scan of an
/// outbox full of dead rows. Measured, such scans were a fifth of PostgreSQL's CPU. With
/// sequential scans, bitmap scans and hash and merge joins ruled out, every such plan is an
/// index lookup per key, whose cost does not grow with the table. (A plain index scan also
/// marks the dead entries it meets, so the next pass skips them; a bitmap scan never does.)
///
/// Such a plan fits any parameters, so it is also made only once: `plan_cache_mode =
/// force_generic_plan`. Otherwise PostgreSQL plans a statement afresh for its parameters
/// whenever it estimates that this could pay, which it did for the stores' batch
/// statements: at a steady 200 orders/s, where each runs for one or two rows, that
/// planning was a fifth to a quarter of PostgreSQL's CPU. A statement whose best plan
/// does depend on its parameters is written as several statements instead (the list
/// endpoints' filters, see [`crate::page_query`]).
///
/// Set once per connection rather than per transaction, so that a store may also run a
/// batch as one statement outside `BEGIN` … `COMMIT`.
pub const KEY_LOOKUPS_ONLY: &str = "SET enable_seqscan = off; SET enable_bitmapscan = off; \
    SET enable_hashjoin = off; SET enable_mergejoin = off; \
    SET plan_cache_mode = force_generic_plan";

/// Whether the database answers right now (for readiness).
pub async fn ping(pool: &PgPool) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(pool),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// Whether a database error means "unavailable, try later" rather than "this is wrong".
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        // Class 08 (connection), 57P (operator intervention, e.g. terminated backend),
        // 53 (insufficient resources), 40001/40P01 (serialization failure, deadlock),
        // 55000/3D000 (the database refuses new connections, e.g. during maintenance, or is
        // not there).
        sqlx::Error::Database(e) => e.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || ["40001", "40P01", "55000", "3D000"].contains(&c.as_ref())
        }),
        _ => false,
    }
}

/// Connections kept between a node's hot-path transactions.
///
/// sqlx's pool checks every connection given back to it with a round trip to PostgreSQL,
/// which costs as much as a statement: one per transaction, a fifth of the round trips
/// under load. The stores and the relay take a connection here and give it back with
/// [`Held::keep`] only when it served them without error; dropped any other way (an error,
/// a panic, a cancelled future, possibly mid-statement) it goes back through the pool,
/// which checks it and discards it if broken. A kept connection left idle for a second or
/// more goes back through the pool too instead of being reused unchecked. At most all but
/// two of the pool's connections are kept, so whatever uses the pool directly (readiness,
/// metrics) always finds one.
#[derive(Clone)]
pub struct Connections {
    pool: PgPool,
    idle: std::sync::Arc<std::sync::Mutex<Vec<Idle>>>,
    cap: usize,
}

struct Idle {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

impl Connections {
    pub fn new(pool: PgPool) -> Self {
        let cap = (pool.options().get_max_connections() as usize).saturating_sub(2);
        Self {
            pool,
            idle: Default::default(),
            cap,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding this lock leaves the list valid (a push or a pop).
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A kept connection used less than a second ago, else one from the pool.
    pub async fn take(&self) -> Result<Held, sqlx::Error> {
        loop {
            let Some(idle) = self.idle().pop() else { break };
            if idle.since.elapsed() < PING_AFTER_IDLE {
                return Ok(self.held(idle.conn));
            }
            // Dropped: back to the pool, which checks it.
        }
        // Boxed: sqlx's acquire future is ~14 KB, and inline it would make every future that
        // can take a connection that large, copied whole each time one is created or moved
        // (each store batch, relay pass and actor message), though a kept connection
        // usually serves and the pool is rarely asked.
        let conn = Box::pin(self.pool.acquire()).await?;
        Ok(self.held(conn))
    }

    /// Runs `work` on a connection from [`Connections::take`] and keeps the connection for
    /// the next transaction only if `work` succeeded.
    pub async fn run<T, E: From<sqlx::Error>>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.take().await?;
        let outcome = work(&mut conn).await;
        if outcome.is_ok() {
            conn.keep();
        }
        outcome
    }

    fn held(&self, conn: PoolConnection<Postgres>) -> Held {
        Held {
            conn,
            home: self.clone(),
        }
    }
}

/// A connection taken from [`Connections`]; dropped, it goes back to the pool.
pub struct Held {
    conn: PoolConnection<Postgres>,
    home: Connections,
}

impl Held {
    /// Keeps the connection for the next transaction: call only after it served without
    /// error.
    pub fn keep(self) {
        let Held { conn, home } = self;
        let mut idle = home.idle();
        if idle.len() < home.cap {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

impl std::ops::Deref for Held {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server this machine's tests use, its `postgres` database.
    fn admin_url() -> String {
        std::env::var("PG_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// A pool on [`admin_url`] (nothing is created).
    async fn pool(size: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(size)
            .connect(&admin_url())
            .await
            .expect("the test PostgreSQL answers")
    }

    async fn backend(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
    }

    #[tokio::test]
    async fn a_kept_connection_serves_the_next_transaction_and_a_broken_one_is_not_kept() {
        let connections = Connections::new(pool(4).await);
        let mut first = connections.take().await.expect("a connection");
        let pid = backend(&mut first).await.expect("a backend pid");
        first.keep();
        let mut again = connections.take().await.expect("a connection");
        assert_eq!(backend(&mut again).await.expect("a backend pid"), pid);
        again.keep();

        // Its session ends while it is kept (a server restart, pg_terminate_backend): the
        // next statement on it fails, and the caller drops it instead of keeping it.
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(connections.pool())
            .await
            .expect("pg_terminate_backend answers");
        assert!(terminated);
        let mut broken = connections.take().await.expect("a connection");
        assert!(backend(&mut broken).await.is_err());
        drop(broken);
        let mut fresh = connections.take().await.expect("a connection");
        assert_ne!(backend(&mut fresh).await.expect("a backend pid"), pid);
    }

    #[tokio::test]
    async fn every_connection_finds_rows_by_key_with_plans_made_once() {
        let admin = pool(2).await;
        let name = format!("db_settings_{}", uuid::Uuid::now_v7().simple());
        let base = admin_url();
        let url = SecretUrl::new(format!(
            "{}/{name}",
            base.rsplit_once('/').map_or("", |b| b.0)
        ));
        // Read inside, asserted after the database is dropped: a failed migration or read
        // must not leave the database behind.
        let settings = async {
            let node = connect_and_migrate(&url, 2, shared_migrator())
                .await
                .map_err(|e| format!("create and migrate: {e}"))?;
            let settings: Result<Vec<String>, _> = sqlx::query_scalar(
                "SELECT current_setting(s) FROM unnest(ARRAY['plan_cache_mode', 'enable_seqscan',
                        'enable_bitmapscan', 'enable_hashjoin', 'enable_mergejoin']) AS s",
            )
            .fetch_all(&node)
            .await;
            node.close().await;
            settings.map_err(|e| format!("read the settings: {e}"))
        }
        .await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await
        .expect("the test database is dropped");
        assert_eq!(
            settings.expect("the database is created, migrated and read"),
            ["force_generic_plan", "off", "off", "off", "off"]
        );
    }

    #[tokio::test]
    async fn taking_a_connection_is_a_small_future() {
        // Every store batch's and relay pass's future holds this one: with sqlx's acquire
        // inline it was ~14 KB (release), copied whole each time such a future is created or
        // moved.
        let connections = Connections::new(
            PgPoolOptions::new()
                .connect_lazy(&admin_url())
                .expect("a lazy pool"),
        );
        let take = connections.take();
        let size = std::mem::size_of_val(&take);
        drop(take);
        let acquire = connections.pool().acquire();
        let acquire_size = std::mem::size_of_val(&acquire);
        drop(acquire);
        assert!(
            size * 8 < acquire_size,
            "take is {size} bytes, the pool's acquire {acquire_size}"
        );
    }

    #[tokio::test]
    async fn at_most_all_but_two_of_the_pool_are_kept() {
        let connections = Connections::new(pool(3).await);
        let (a, b) = (
            connections.take().await.expect("a connection"),
            connections.take().await.expect("a connection"),
        );
        a.keep();
        b.keep();
        assert_eq!(connections.idle().len(), 1);
        // The pool still has connections for whatever uses it directly.
        assert!(ping(connections.pool()).await);
    }

    #[tokio::test]
    async fn a_connection_kept_idle_for_a_second_goes_back_through_the_pool() {
        let connections = Connections::new(pool(4).await);
        connections.take().await.expect("a connection").keep();
        tokio::time::sleep(PING_AFTER_IDLE + Duration::from_millis(100)).await;
        let mut conn = connections.take().await.expect("a connection");
        assert!(connections.idle().is_empty());
        assert!(backend(&mut conn).await.is_ok());
    }
}
