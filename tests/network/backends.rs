//! The backends the network tests drive, behind one trait.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mysql_async::prelude::Queryable;
use vigil::{Manager, Pool};

/// One of vigil's backends, as these tests drive it, on a port of 127.0.0.1.
pub(crate) trait Backend: 'static {
    type M: Manager;
    /// For the report lines.
    const NAME: &'static str;
    fn manager(port: u16) -> Self::M;
    /// `SELECT 1`; for PostgreSQL in a way that works through pgbouncer in either mode.
    fn select_1(conn: &mut <Self::M as Manager>::Connection) -> BoxFuture<'_, Result<(), String>>;
}

pub(crate) struct TokioPg;

impl Backend for TokioPg {
    type M = vigil::backend::tokio_postgres::TokioPgManager;
    const NAME: &'static str = "tokio-postgres";
    fn manager(port: u16) -> Self::M {
        crate::tp_manager(([127, 0, 0, 1], port).into(), "")
    }
    fn select_1(conn: &mut <Self::M as Manager>::Connection) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // An unnamed statement: Parse, Bind, Execute and Sync in one go,
            // so pgbouncer runs them on one server connection.
            let rows = conn
                .query_typed(
                    "SELECT $1::int4",
                    &[(&1i32, tokio_postgres::types::Type::INT4)],
                )
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(rows[0].get::<_, i32>(0), 1);
            conn.simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

pub(crate) struct Sqlx;

impl Backend for Sqlx {
    type M = vigil::backend::sqlx::PgManager;
    const NAME: &'static str = "sqlx (postgres)";
    fn manager(port: u16) -> Self::M {
        vigil::backend::sqlx::PgManager::from_url(&format!(
            "postgres://postgres@127.0.0.1:{port}/test?sslmode=disable&application_name=vigil_network"
        ))
        .expect("a well-formed URL")
    }
    fn select_1(conn: &mut <Self::M as Manager>::Connection) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            sqlx::Executor::execute(&mut *conn, sqlx::raw_sql("SELECT 1"))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

pub(crate) struct Maria;

impl Backend for Maria {
    type M = vigil::backend::mysql::MySqlManager;
    const NAME: &'static str = "mysql_async (mariadb)";
    fn manager(port: u16) -> Self::M {
        vigil::backend::mysql::MySqlManager::from_url(&format!(
            "mysql://root@127.0.0.1:{port}/test?prefer_socket=false"
        ))
        .expect("a well-formed URL")
    }
    fn select_1(conn: &mut <Self::M as Manager>::Connection) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { conn.query_drop("SELECT 1").await.map_err(|e| e.to_string()) })
    }
}

/// 4 tasks × 25 checkouts of `SELECT 1`: the errors callers saw, and the
/// longest `get()`.
pub(crate) async fn burst<B: Backend>(pool: &Pool<B::M>) -> (Vec<String>, Duration) {
    let runs = (0..4).map(|_| async {
        let (mut errors, mut longest) = (Vec::new(), Duration::ZERO);
        for _ in 0..25 {
            let started = Instant::now();
            let got = pool.get().await;
            longest = longest.max(started.elapsed());
            match got {
                Ok(mut conn) => {
                    if let Err(e) = B::select_1(&mut conn).await {
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        (errors, longest)
    });
    let all = futures::future::join_all(runs).await;
    let longest = all.iter().map(|(_, l)| *l).max().unwrap_or_default();
    (all.into_iter().flat_map(|(e, _)| e).collect(), longest)
}

/// A burst no caller saw an error in (`when`: after what, for the
/// message); its longest `get()`.
pub(crate) async fn clean_burst<B: Backend>(pool: &Pool<B::M>, when: &str) -> Duration {
    let (errors, longest) = burst::<B>(pool).await;
    assert!(
        errors.is_empty(),
        "{} errors reached callers {when}; the first: {}; {:?}",
        errors.len(),
        errors[0],
        pool.state()
    );
    longest
}
