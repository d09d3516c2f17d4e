//! Session state: open transactions and dirty sessions are cleaned before
//! the next borrower.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts};
use vigil::{Manager, Pool};

use crate::{admin, error_code, manager, trace, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transaction_is_seen_without_a_round_trip() {
    trace();
    let m = manager();
    let mut admin = admin().await;
    let table = unique("vigil_flag");
    admin
        .query_drop(format!("CREATE TABLE {table} (a INT) ENGINE=InnoDB"))
        .await
        .expect("create table");
    let mut conn = m.connect().await.expect("connect");
    let mut steps = Vec::new();
    let mut step = |conn: &mut Conn, what: &str, expected: bool| {
        let seen = m.session(conn).needs_cleanup;
        steps.push(format!("{what}: {seen}"));
        assert_eq!(seen, expected, "after {what}; steps: {steps:#?}");
    };
    step(&mut conn, "connect", false);
    conn.query_drop("BEGIN").await.unwrap();
    step(&mut conn, "BEGIN", true);
    let _: Option<u8> = conn.query_first("SELECT 1").await.unwrap();
    step(&mut conn, "SELECT 1 in a transaction", true);
    conn.query_drop(format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    step(&mut conn, "INSERT in a transaction", true);
    conn.query_drop("COMMIT").await.unwrap();
    step(&mut conn, "COMMIT", false);
    let _: Option<u8> = conn.query_first("SELECT 1").await.unwrap();
    step(&mut conn, "SELECT 1 after COMMIT", false);
    conn.exec_drop("SELECT ?", (1,)).await.unwrap();
    step(&mut conn, "prepared SELECT outside a transaction", false);
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.exec_drop(format!("INSERT INTO {table} VALUES (?)"), (2,))
        .await
        .unwrap();
    step(&mut conn, "prepared INSERT in a transaction", true);
    conn.query_drop("ROLLBACK").await.unwrap();
    step(&mut conn, "ROLLBACK", false);
    // An error reply carries no status: unknown counts as dirty.
    assert!(conn
        .query_drop("SELECT * FROM no_such_table_vigil")
        .await
        .is_err());
    step(&mut conn, "an error", true);
    conn.query_drop("SET autocommit = 0").await.unwrap();
    let _: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap();
    step(&mut conn, "a read with autocommit = 0", true);
    conn.query_drop("COMMIT").await.unwrap();
    step(&mut conn, "COMMIT with autocommit = 0", false);
    m.close(conn).await;
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_session_is_not_seen_by_next_borrower() {
    trace();
    let mut admin = admin().await;
    let table = unique("vigil_dirty");
    admin
        .query_drop(format!("CREATE TABLE {table} (a INT) ENGINE=InnoDB"))
        .await
        .expect("create table");
    let count = format!("SELECT COUNT(*) FROM {table}");
    let insert = format!("INSERT INTO {table} VALUES (1)");

    // (a) No full reset: an open transaction is rolled back, nothing more.
    let pool = Pool::builder(manager())
        .max_size(1)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    let id = {
        let mut conn = pool.get().await.expect("get");
        conn.query_drop("SET @kept = 7").await.unwrap();
        conn.query_drop("BEGIN").await.unwrap();
        conn.query_drop(&insert).await.unwrap();
        let seen: Option<u64> = conn.query_first(&count).await.unwrap();
        assert_eq!(seen, Some(1), "the borrower sees its own row");
        conn.id()
    };
    // Borrower 1 again, but ending on an error inside the transaction.
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(conn.id(), id);
        conn.query_drop("BEGIN").await.unwrap();
        conn.query_drop(&insert).await.unwrap();
        assert!(conn
            .query_drop("SELECT * FROM no_such_table_vigil")
            .await
            .is_err());
    }
    // And through a `Transaction` dropped without commit.
    {
        let mut conn = pool.get().await.expect("get");
        let mut tx = conn.start_transaction(TxOpts::default()).await.unwrap();
        tx.query_drop(&insert).await.unwrap();
    }
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(conn.id(), id, "the pool of one changed its connection");
        let in_tx: Option<u8> = conn.query_first("SELECT @@in_transaction").await.unwrap();
        assert_eq!(
            in_tx,
            Some(0),
            "the next borrower inherited an open transaction"
        );
        let seen: Option<u64> = conn.query_first(&count).await.unwrap();
        assert_eq!(seen, Some(0), "the next borrower sees uncommitted rows");
        // Only the transaction was cleaned: no full reset per return.
        let kept: Option<u8> = conn.query_first("SELECT @kept").await.unwrap();
        assert_eq!(kept, Some(7), "a plain return did a full reset");
    }
    let state = pool.state();
    assert_eq!(state.closed.total(), 0, "{state:#?}");

    // (b) and (c) `reset_on_return`: session variables, temporary tables
    // and server-side prepared statements are gone, and a statement the
    // client had cached still works.
    let tmp = unique("vigil_tmp");
    let pool = Pool::builder(manager())
        .max_size(1)
        .reset_on_return(true)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    let id = {
        let mut conn = pool.get().await.expect("get");
        conn.query_drop("SET @x = 42").await.unwrap();
        conn.query_drop(format!("CREATE TEMPORARY TABLE {tmp} (a INT)"))
            .await
            .unwrap();
        let two: Option<i64> = conn.exec_first("SELECT ? + 1", (1,)).await.unwrap();
        assert_eq!(two, Some(2));
        conn.id()
    };
    {
        let mut conn = pool.get().await.expect("get");
        assert_eq!(conn.id(), id, "the pool of one changed its connection");
        let x: Option<Option<i64>> = conn.query_first("SELECT @x").await.unwrap();
        assert_eq!(x, Some(None), "a session variable survived the reset");
        let tmp_error = conn
            .query_drop(format!("SELECT * FROM {tmp}"))
            .await
            .expect_err("a temporary table survived the reset");
        assert_eq!(error_code(&tmp_error), Some(1146), "{tmp_error}");
        let three: Option<i64> = conn
            .exec_first("SELECT ? + 1", (2,))
            .await
            .expect("a cached statement works after the reset");
        assert_eq!(three, Some(3));
    }
    let state = pool.state();
    assert_eq!(state.closed.total(), 0, "{state:#?}");
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}
