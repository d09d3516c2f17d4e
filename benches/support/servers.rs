//! The two servers `benches/realdb.rs` and `benches/liveness.rs` run
//! against, and where to find them (`VIGIL_BENCH_PG_URL`,
//! `VIGIL_BENCH_MYSQL_URL`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Pg,
    Maria,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Pg => "pg",
            Server::Maria => "mariadb",
        }
    }
}

pub fn pg_url() -> String {
    std::env::var("VIGIL_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("VIGIL_BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}
