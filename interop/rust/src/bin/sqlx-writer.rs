//! A sqlx writer that selects the shim: `register()`, then `SqliteConnectOptions::vfs`.
//! Usage: `sqlx-writer DB WRITER_ID TRANSACTIONS`; prints the journal mode
//! SQLite runs and the rows this writer committed (each acknowledged as `ack N`).

use std::error::Error;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, writer, transactions] = args.as_slice() else {
        return Err("usage: sqlx-writer DB WRITER_ID TRANSACTIONS".into());
    };
    let writer: i64 = writer.parse()?;
    let transactions: i64 = transactions.parse()?;
    sqlite_netfs::register()?;
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .vfs("netfs")
        .create_if_missing(true)
        // What applications ask; network mode answers with a rollback journal.
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await?;
    println!("journal_mode {mode}");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS rows(worker INTEGER, seq INTEGER, PRIMARY KEY(worker, seq))",
    )
    .execute(&mut conn)
    .await?;
    for seq in 0..transactions {
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO rows VALUES (?, ?)")
            .bind(writer)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        println!("ack {seq}");
    }
    conn.close().await?;
    Ok(())
}
