//! vigil over sqlx against a local MySQL / MariaDB.
//!
//! ```text
//! cargo run --example sqlx_mysql --features sqlx-mysql   # root@127.0.0.1:3306/test
//! ```

use std::time::Duration;

use vigil::backend::sqlx::MySqlSqlxManager;
use vigil::Pool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let pool = Pool::builder(MySqlSqlxManager::from_url(&url)?)
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut conn = pool.get().await?;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut *conn)
        .await?;
    drop(conn);
    println!("server {version}; open {}", pool.state().open);
    pool.close().await;
    Ok(())
}
