//! Managers for real databases, each behind its feature.

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "sqlx-backend")]
pub mod sqlx;
