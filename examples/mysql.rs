//! vigil over mysql_async against a local MySQL / MariaDB: a transaction a
//! borrower left open is rolled back before the next one gets the
//! connection, and the server's idle timeout is read from the session.
//!
//! ```text
//! cargo run --example mysql --features mysql                    # root@127.0.0.1:3306/test
//! DATABASE_URL=mysql://user:pass@host/db cargo run --example mysql --features mysql
//! ```

use std::time::Duration;

use mysql_async::prelude::Queryable;
use vigil::backend::mysql::MySqlManager;
use vigil::Pool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test?prefer_socket=false".into());
    let pool = Pool::builder(MySqlManager::from_url(&url)?)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect() // a bad URL or password fails here, naming the problem
        .await?;

    let mut conn = pool.get().await?;
    conn.query_drop("BEGIN").await?; // ... and never committed
    drop(conn); // rolled back on its way back: the next borrower starts clean

    let mut conn = pool.get().await?;
    let in_tx: Option<i64> = conn.query_first("SELECT @@in_transaction").await?;
    println!("next borrower inside a transaction: {}", in_tx == Some(1));
    drop(conn);

    let s = pool.state();
    println!(
        "open {}, idle {}, server idle timeout {:?}",
        s.open,
        s.idle,
        s.server_idle_timeout.flatten()
    );
    pool.close().await;
    Ok(())
}
