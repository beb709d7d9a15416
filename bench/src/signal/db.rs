//! The bench's own read-only look into a service's database, on either backend: what the
//! service wrote is checked there, not only in its answers.

use anyhow::Context;
use sqlx::postgres::PgRow;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{ConnectOptions, Connection, PgConnection, SqliteConnection};

use opscase_bench::service::Database;

pub enum Db {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

/// One query in each backend's dialect (ids and JSON are cast to text on PostgreSQL).
pub struct Query {
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

impl Db {
    pub async fn open(database: &Database) -> anyhow::Result<Self> {
        Ok(match database {
            Database::Sqlite(path) => Db::Sqlite(
                SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true)
                    .connect()
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
            Database::Postgres(url) => Db::Postgres(
                PgConnection::connect(url)
                    .await
                    .context("cannot reach the service's PostgreSQL database")?,
            ),
        })
    }

    pub async fn rows<T>(&mut self, query: &Query) -> anyhow::Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        Ok(match self {
            Db::Sqlite(connection) => {
                sqlx::query_as(query.sqlite)
                    .fetch_all(&mut *connection)
                    .await?
            }
            Db::Postgres(connection) => {
                sqlx::query_as(query.postgres)
                    .fetch_all(&mut *connection)
                    .await?
            }
        })
    }

    pub async fn close(self) {
        let _ = match self {
            Db::Sqlite(connection) => connection.close().await,
            Db::Postgres(connection) => connection.close().await,
        };
    }
}
