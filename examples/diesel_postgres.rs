//! diesel-async through vigil against a local PostgreSQL: diesel's own
//! queries on a pooled `AsyncPgConnection`, a transaction whose future is
//! dropped midway (a request that gave up), and an idle session killed
//! from outside — none of which the next borrower ever sees.
//!
//! ```text
//! cargo run --example diesel_postgres --features diesel-async   # postgres@127.0.0.1:5432/test
//! DATABASE_URL=postgres://user:pass@host/db cargo run --example diesel_postgres --features diesel-async
//! ```

use std::time::Duration;

use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use vigil::backend::diesel::DieselPgManager;
use vigil::{Pool, Reason};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        "postgres://postgres@127.0.0.1:5432/test?application_name=vigil_diesel_example".into()
    });
    let pool = Pool::builder(DieselPgManager::from_url(&url)?)
        .max_size(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect()
        .await?;

    // diesel's query API on the pooled connection: `&mut **conn`.
    let mut conn = pool.get().await?;
    let answer: i32 = diesel::select(diesel::dsl::sql::<Integer>("40 + 2"))
        .get_result(&mut **conn)
        .await?;
    println!("diesel says {answer}");

    // A request that gives up inside a transaction: BEGIN was sent,
    // COMMIT never will be.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        conn.transaction::<(), diesel::result::Error, _>(async |c| {
            diesel::sql_query("SELECT 1").execute(c).await?;
            std::future::pending::<()>().await;
            Ok(())
        }),
    )
    .await;
    println!("transaction abandoned: {}", gave_up.is_err());
    drop(conn);

    // The next borrower's session is outside any transaction (as a second
    // session sees it), and diesel opens a new one on it.
    let mut conn = pool.get().await?;
    let mut other = pool.get().await?;
    let pid: i32 = diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()"))
        .get_result(&mut **conn)
        .await?;
    let state: String = diesel::select(diesel::dsl::sql::<Text>(&format!(
        "(SELECT state FROM pg_stat_activity WHERE pid = {pid})"
    )))
    .get_result(&mut **other)
    .await?;
    conn.transaction::<_, diesel::result::Error, _>(async |c| {
        diesel::sql_query("SELECT 1").execute(c).await
    })
    .await?;
    println!("the next borrower's session was {state:?} and took a new transaction");

    // An idle session killed from outside is seen without a round trip.
    drop(conn);
    diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
        .execute(&mut **other)
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fresh = pool.get().await?;
    diesel::sql_query("SELECT 1").execute(&mut **fresh).await?;
    drop((other, fresh));
    let s = pool.state();
    println!(
        "killed session retired as broken: {}; pings sent: {}",
        s.closed.get(Reason::Broken),
        s.validations_ok + s.validations_failed
    );
    pool.close().await;
    Ok(())
}
