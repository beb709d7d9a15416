//! Writes a PostgreSQL transaction defers: sent together, as one statement, with the
//! transaction's next read or its commit.
//!
//! Each write is a round trip of its own otherwise; a transition's four writes (case row,
//! timeline, outbox, idempotency record) become one statement of data-modifying CTEs. They
//! run on one snapshot, so they must not depend on each other's effects, which writes of one
//! transaction between two reads never do: foreign keys are checked at the end of the
//! statement, when every row of it is there.

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Postgres, Row};

use crate::store::{StoreError, StoreResult};

#[derive(Default)]
pub(super) struct Deferred {
    /// Each write's SQL, its `$n` parameters already numbered for the combined statement.
    statements: Vec<String>,
    args: PgArguments,
    /// Parameters bound so far (the next write's `$1` is `$(bound + 1)`).
    bound: usize,
    /// Writes that must change a row, else the named unique constraint was violated.
    must_change: Vec<(usize, &'static str)>,
    bind_error: Option<String>,
}

impl Deferred {
    /// Defer `sql` (numbered `$1…$n` on its own); bind its parameters next, in order.
    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.statements.push(renumber(sql, self.bound));
        self
    }

    /// Like `push`, for an upsert that changes no row when a live row holds the key.
    pub(super) fn push_must_change(&mut self, sql: &str, constraint: &'static str) -> &mut Self {
        self.must_change.push((self.statements.len(), constraint));
        self.push(sql)
    }

    pub(super) fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send + 'static,
    {
        self.bound += 1;
        if let Err(error) = self.args.add(value) {
            self.bind_error.get_or_insert(error.to_string());
        }
        self
    }

    /// Run the one statement pushed, which returns a single `i64` (`RETURNING id`).
    pub(super) async fn fetch_id(self, conn: &mut sqlx::PgConnection) -> StoreResult<i64> {
        bound(self.bind_error)?;
        let [sql] = self.statements.as_slice() else {
            return Err(StoreError::Corrupt(
                "fetch_id needs exactly one statement".into(),
            ));
        };
        Ok(sqlx::query_scalar_with(sql, self.args)
            .fetch_one(conn)
            .await?)
    }

    /// Send every deferred write in one statement.
    pub(super) async fn flush(&mut self, conn: &mut sqlx::PgConnection) -> StoreResult<()> {
        let Deferred {
            statements,
            args,
            must_change,
            bind_error,
            ..
        } = std::mem::take(self);
        bound(bind_error)?;
        match statements.as_slice() {
            [] => Ok(()),
            [only] => {
                let done = sqlx::query_with(only, args).execute(conn).await?;
                match must_change.first() {
                    Some((_, constraint)) if done.rows_affected() == 0 => {
                        Err(StoreError::UniqueViolation((*constraint).to_string()))
                    }
                    _ => Ok(()),
                }
            }
            _ => {
                let sql = combine(&statements, &must_change);
                let counts = sqlx::query_with(&sql, args).fetch_one(conn).await?;
                for (column, (_, constraint)) in must_change.iter().enumerate() {
                    if counts.try_get::<i64, _>(column)? == 0 {
                        return Err(StoreError::UniqueViolation((*constraint).to_string()));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Fails when a value could not be bound (encoding failed).
fn bound(bind_error: Option<String>) -> StoreResult<()> {
    match bind_error {
        Some(error) => Err(StoreError::Corrupt(format!(
            "cannot bind a parameter: {error}"
        ))),
        None => Ok(()),
    }
}

/// `WITH w0 AS (…), w1 AS (…) SELECT …`: one row, with a column for each write that must
/// change a row, counting the rows it changed.
fn combine(statements: &[String], must_change: &[(usize, &'static str)]) -> String {
    let ctes: Vec<String> = statements
        .iter()
        .enumerate()
        .map(|(index, statement)| {
            let counted = must_change.iter().any(|(i, _)| *i == index);
            let returning = if counted { " RETURNING 1" } else { "" };
            format!("w{index} AS ({statement}{returning})")
        })
        .collect();
    let counts: Vec<String> = must_change
        .iter()
        .map(|(index, _)| format!("(SELECT count(*) FROM w{index})"))
        .collect();
    let select = if counts.is_empty() {
        "1".to_string()
    } else {
        counts.join(", ")
    };
    format!("WITH {} SELECT {select}", ctes.join(", "))
}

/// `sql` with each `$n` parameter shifted by `offset`.
fn renumber(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_after_the_earlier_writes() {
        assert_eq!(
            renumber("UPDATE t SET a = $1, b = $2 WHERE id = $10", 3),
            "UPDATE t SET a = $4, b = $5 WHERE id = $13"
        );
        assert_eq!(renumber("SELECT $1", 0), "SELECT $1");
    }

    #[test]
    fn writes_become_one_statement_counting_the_upserts() {
        let statements = vec![
            "UPDATE t SET a = $1".to_string(),
            "INSERT INTO k VALUES ($2) ON CONFLICT DO NOTHING".to_string(),
        ];
        assert_eq!(
            combine(&statements, &[(1, "k_pkey")]),
            "WITH w0 AS (UPDATE t SET a = $1), \
             w1 AS (INSERT INTO k VALUES ($2) ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT (SELECT count(*) FROM w1)"
        );
        assert_eq!(
            combine(&statements, &[]),
            "WITH w0 AS (UPDATE t SET a = $1), \
             w1 AS (INSERT INTO k VALUES ($2) ON CONFLICT DO NOTHING) SELECT 1"
        );
    }
}
