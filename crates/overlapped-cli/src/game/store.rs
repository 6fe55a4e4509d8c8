//! Where the game keeps its players between visits: a name's last
//! position and play time, in SQLite (a file, embedded) or PostgreSQL (a
//! server the processes of a fleet share). Every call blocks: the game
//! makes them on the service's blocking threads, never on a worker
//! ([`super::persistence`]).

use std::time::Duration;

/// What the game keeps of a player.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Saved {
    pub x: f32,
    pub y: f32,
    /// Time in the game over every visit, in milliseconds.
    pub play_time_ms: u64,
}

/// A database of [`Saved`] records by player name.
pub trait Store: Send {
    /// The records of those of `names` that have one.
    fn load(&mut self, names: &[String]) -> Result<Vec<(String, Saved)>, String>;
    /// Writes every record of `batch`, replacing older ones, in one
    /// transaction: all of them or none.
    fn save(&mut self, batch: &[(String, Saved)]) -> Result<(), String>;
}

/// How long SQLite waits for another process's lock before a call fails.
const SQLITE_BUSY: Duration = Duration::from_secs(2);

/// Records in a SQLite file.
pub struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    /// Opens (or makes) the file at `path` and its table; a file that is
    /// not a SQLite database, or that another process holds locked, is an
    /// error that says so.
    pub fn open(path: &str) -> Result<Sqlite, String> {
        let fail = |e: rusqlite::Error| format!("cannot open the game's database {path}: {e}");
        let conn = rusqlite::Connection::open(path).map_err(fail)?;
        conn.busy_timeout(SQLITE_BUSY).map_err(fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS players (
                 name TEXT PRIMARY KEY,
                 x REAL NOT NULL,
                 y REAL NOT NULL,
                 play_time_ms INTEGER NOT NULL
             );",
        )
        .map_err(fail)?;
        Ok(Sqlite { conn })
    }
}

impl Store for Sqlite {
    fn load(&mut self, names: &[String]) -> Result<Vec<(String, Saved)>, String> {
        let mut query = self
            .conn
            .prepare_cached("SELECT x, y, play_time_ms FROM players WHERE name = ?1")
            .map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        for name in names {
            let row = query.query_row([name], |row| {
                Ok(Saved {
                    x: row.get::<_, f64>(0)? as f32,
                    y: row.get::<_, f64>(1)? as f32,
                    play_time_ms: row.get::<_, i64>(2)?.max(0) as u64,
                })
            });
            match row {
                Ok(saved) => found.push((name.clone(), saved)),
                Err(rusqlite::Error::QueryReturnedNoRows) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(found)
    }

    fn save(&mut self, batch: &[(String, Saved)]) -> Result<(), String> {
        let transaction = self.conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut upsert = transaction
                .prepare_cached(
                    "INSERT INTO players (name, x, y, play_time_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE
                     SET x = excluded.x, y = excluded.y, play_time_ms = excluded.play_time_ms",
                )
                .map_err(|e| e.to_string())?;
            for (name, saved) in batch {
                let play_time = i64::try_from(saved.play_time_ms).unwrap_or(i64::MAX);
                upsert
                    .execute(rusqlite::params![name, saved.x, saved.y, play_time])
                    .map_err(|e| e.to_string())?;
            }
        }
        transaction.commit().map_err(|e| e.to_string())
    }
}

/// Records on a PostgreSQL server. A call that finds the connection gone
/// fails; the next one connects again.
pub struct Postgres {
    config: postgres::Config,
    client: Option<postgres::Client>,
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host/database`) and
    /// makes the table; a server that cannot be reached is an error.
    pub fn open(url: &str) -> Result<Postgres, String> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| format!("{url:?} is not a PostgreSQL address: {e}"))?;
        config.connect_timeout(Duration::from_secs(5));
        let mut store = Postgres {
            config,
            client: None,
        };
        store
            .client()
            .and_then(|client| {
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS players (
                             name TEXT PRIMARY KEY,
                             x REAL NOT NULL,
                             y REAL NOT NULL,
                             play_time_ms BIGINT NOT NULL
                         )",
                    )
                    .map_err(|e| described(&e))
            })
            .map_err(|e| format!("cannot open the game's database at {}: {e}", redacted(url)))?;
        Ok(store)
    }

    /// The connection, made again if the last one was lost.
    fn client(&mut self) -> Result<&mut postgres::Client, String> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let client = self
                .config
                .connect(postgres::NoTls)
                .map_err(|e| described(&e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs `call` on the connection; on an error the connection is
    /// dropped, so the next call starts afresh.
    fn with_client<T>(
        &mut self,
        call: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, String> {
        let outcome = call(self.client()?).map_err(|e| described(&e));
        if outcome.is_err() {
            self.client = None;
        }
        outcome
    }
}

impl Store for Postgres {
    fn load(&mut self, names: &[String]) -> Result<Vec<(String, Saved)>, String> {
        let rows = self.with_client(|client| {
            client.query(
                "SELECT name, x, y, play_time_ms FROM players WHERE name = ANY($1)",
                &[&names],
            )
        })?;
        Ok(rows
            .iter()
            .map(|row| {
                let saved = Saved {
                    x: row.get(1),
                    y: row.get(2),
                    play_time_ms: row.get::<_, i64>(3).max(0) as u64,
                };
                (row.get(0), saved)
            })
            .collect())
    }

    fn save(&mut self, batch: &[(String, Saved)]) -> Result<(), String> {
        let names: Vec<&str> = batch.iter().map(|(n, _)| n.as_str()).collect();
        let xs: Vec<f32> = batch.iter().map(|(_, s)| s.x).collect();
        let ys: Vec<f32> = batch.iter().map(|(_, s)| s.y).collect();
        let times: Vec<i64> = batch
            .iter()
            .map(|(_, s)| i64::try_from(s.play_time_ms).unwrap_or(i64::MAX))
            .collect();
        // One statement (one round trip) is one transaction.
        self.with_client(|client| {
            client.execute(
                "INSERT INTO players (name, x, y, play_time_ms)
                 SELECT * FROM unnest($1::text[], $2::real[], $3::real[], $4::bigint[])
                 ON CONFLICT (name) DO UPDATE
                 SET x = excluded.x, y = excluded.y, play_time_ms = excluded.play_time_ms",
                &[&names, &xs, &ys, &times],
            )
        })
        .map(drop)
    }
}

/// What went wrong, in the server's words when it said why (the error's
/// own text is only "db error").
fn described(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// `url` without its password, for log lines.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A store whose every call takes `delay` longer: a slow database, for the
/// benchmark that shows a slow store never stalls a tick.
pub struct Slow {
    pub inner: Box<dyn Store>,
    pub delay: Duration,
}

impl Store for Slow {
    fn load(&mut self, names: &[String]) -> Result<Vec<(String, Saved)>, String> {
        std::thread::sleep(self.delay);
        self.inner.load(names)
    }

    fn save(&mut self, batch: &[(String, Saved)]) -> Result<(), String> {
        std::thread::sleep(self.delay);
        self.inner.save(batch)
    }
}

/// The store `--db` names: `none`, a `postgres://` URL, or a SQLite file's
/// path.
pub fn open(db: &str) -> Result<Option<Box<dyn Store>>, String> {
    if db == "none" {
        return Ok(None);
    }
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        return Ok(Some(Box::new(Postgres::open(db)?)));
    }
    Ok(Some(Box::new(Sqlite::open(db)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_not_logged() {
        assert_eq!(
            redacted("postgres://game:secret@db.example/game"),
            "postgres://game:***@db.example/game"
        );
        assert_eq!(
            redacted("postgres://db.example/game"),
            "postgres://db.example/game"
        );
    }

    #[test]
    fn sqlite_keeps_the_latest_record_of_each_name() {
        let dir = std::env::temp_dir().join(format!("overlapped-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("players.sqlite3");
        let mut store = Sqlite::open(path.to_str().unwrap()).unwrap();
        let saved = |x| Saved {
            x,
            y: -x,
            play_time_ms: 10,
        };
        store
            .save(&[("ann".into(), saved(1.0)), ("bo".into(), saved(2.0))])
            .unwrap();
        store.save(&[("ann".into(), saved(3.0))]).unwrap();
        let mut found = store
            .load(&["ann".into(), "bo".into(), "cy".into()])
            .unwrap();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            vec![("ann".into(), saved(3.0)), ("bo".into(), saved(2.0))]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
