//! `--mode game --db`: a player's last position and play time are kept
//! under its name, in SQLite by default or in PostgreSQL, and a player who
//! comes back starts where it left.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::game::*;
use common::{binary, stderr_of, wait_for_line, Server};

const LIMIT: Duration = Duration::from_secs(30);

/// A directory of this test's own, empty.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("overlapped-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn game_server(db: &str) -> Server {
    Server::start_with(&[
        "--model",
        "port",
        "--mode",
        "game",
        "--tick-hz",
        "50",
        "--db",
        db,
    ])
}

/// `name`'s row in the SQLite file at `path`, once it is there.
fn sqlite_row(path: &Path, name: &str) -> (f32, f32, u64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let row = rusqlite::Connection::open(path).ok().and_then(|db| {
            db.query_row(
                "SELECT x, y, play_time_ms FROM players WHERE name = ?1",
                [name],
                |row| {
                    Ok((
                        row.get::<_, f64>(0)? as f32,
                        row.get::<_, f64>(1)? as f32,
                        row.get::<_, i64>(2)? as u64,
                    ))
                },
            )
            .ok()
        });
        if let Some(row) = row {
            return row;
        }
        assert!(Instant::now() < deadline, "{name} was never saved");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A visit: `name` joins a room of its own, goes to `to`, and stays until
/// it saw it.
fn visit(server: &Server, name: &str, to: (f32, f32)) -> Bot {
    static ROOM: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let room = ROOM.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bot = Bot::join(server.addr, room, name);
    bot.client.send(C_MOVE, &move_payload(to.0, to.1));
    bot.until_seen(to, 1);
    bot
}

/// Where the snapshot puts `bot` first.
fn first_position(bot: &mut Bot) -> (f32, f32) {
    let snapshot = bot.next_snapshot();
    let mine = snapshot
        .entries
        .iter()
        .find(|e| e.0 == bot.id)
        .expect("in its snapshot");
    (mine.1, mine.2)
}

#[test]
fn a_player_who_comes_back_starts_where_it_left() {
    let dir = scratch("comes-back");
    let db = dir.join("game.sqlite3");
    let server = game_server(db.to_str().unwrap());
    drop(visit(&server, "alice", (3.0, 4.0)));
    let (x, y, played) = sqlite_row(&db, "alice");
    assert_eq!((x, y), (3.0, 4.0));
    let mut again = Bot::join(server.addr, 1000, "alice");
    assert_eq!(first_position(&mut again), (3.0, 4.0));
    again.client.send(C_MOVE, &move_payload(5.0, 5.0));
    again.until_seen((5.0, 5.0), 1);
    drop(again);
    // Play time adds up over the visits.
    let deadline = Instant::now() + LIMIT;
    while sqlite_row(&db, "alice").0 != 5.0 {
        assert!(
            Instant::now() < deadline,
            "the second visit was never saved"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sqlite_row(&db, "alice").2 >= played);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_new_name_starts_at_the_origin() {
    let dir = scratch("new-name");
    let server = game_server(dir.join("game.sqlite3").to_str().unwrap());
    drop(visit(&server, "alice", (3.0, 4.0)));
    let mut other = Bot::join(server.addr, 1000, "bob");
    assert_eq!(first_position(&mut other), (0.0, 0.0));
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_graceful_shutdown_saves_the_players_still_connected() {
    let dir = scratch("shutdown");
    let db = dir.join("game.sqlite3");
    let mut server = game_server(db.to_str().unwrap());
    let mut bot = visit(&server, "carol", (6.0, -2.0));
    let status = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The server ends the stream; the player leaves.
    bot.client.until_closed();
    drop(bot);
    let saved = wait_for_line(&server.stderr, |l| l.contains("players saved"), LIMIT)
        .expect("the saves are reported at exit");
    assert!(saved.contains("1 saves written"), "{saved}");
    assert!(server.child.wait().unwrap().success());
    assert_eq!(
        sqlite_row(&db, "carol"),
        (6.0, -2.0, sqlite_row(&db, "carol").2)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_default_database_is_a_file_in_the_working_directory() {
    let dir = scratch("default-db");
    let mut command = binary();
    command.current_dir(&dir).args([
        "server",
        "--addr",
        "127.0.0.1:0",
        "--model",
        "port",
        "--mode",
        "game",
    ]);
    let server = Server::start_from(command);
    drop(visit(&server, "dora", (1.0, 2.0)));
    assert_eq!(sqlite_row(&dir.join("game.sqlite3"), "dora").0, 1.0);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `overlapped server --mode game --db DB`, which must not start.
fn refused_start(db: &Path) -> String {
    let mut child = binary()
        .args([
            "server",
            "--addr",
            "127.0.0.1:0",
            "--model",
            "port",
            "--mode",
            "game",
            "--db",
        ])
        .arg(db)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let stderr = stderr_of(&mut child);
    assert!(!status.success(), "it started: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    stderr
}

#[test]
fn a_corrupt_database_file_is_a_clear_error_at_start() {
    let dir = scratch("corrupt");
    let db = dir.join("game.sqlite3");
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let stderr = refused_start(&db);
    assert!(
        stderr.contains("cannot open the game's database"),
        "{stderr}"
    );
    assert!(stderr.contains("not a database"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_locked_database_file_is_a_clear_error_at_start() {
    let dir = scratch("locked");
    let db = dir.join("game.sqlite3");
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder
        .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    let stderr = refused_start(&db);
    assert!(
        stderr.contains("cannot open the game's database"),
        "{stderr}"
    );
    assert!(stderr.contains("locked"), "{stderr}");
    drop(holder);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The PostgreSQL server to test against, from `OVERLAPPED_TEST_POSTGRES`
/// (`scripts/postgres.sh` starts one and prints it). Without one the test
/// says so and does nothing — unless `OVERLAPPED_REQUIRE_POSTGRES` is set,
/// as CI sets it, which makes that a failure.
fn postgres() -> Option<(String, std::sync::MutexGuard<'static, ()>)> {
    // One test at a time: one of them takes the database away.
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let url = match std::env::var("OVERLAPPED_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("OVERLAPPED_REQUIRE_POSTGRES").is_some() => {
            panic!(
                "OVERLAPPED_REQUIRE_POSTGRES is set, but OVERLAPPED_TEST_POSTGRES names no server"
            )
        }
        _ => {
            eprintln!(
                "NOT RUN: no PostgreSQL server; start one with \
                 `export OVERLAPPED_TEST_POSTGRES=$(scripts/postgres.sh)` to run this test"
            );
            return None;
        }
    };
    Some((url, alone))
}

/// A name of this run only (the database outlives the tests).
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos:x}", std::process::id())
}

fn postgres_row(url: &str, name: &str) -> Option<(f32, f32)> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).ok()?;
    let row = client
        .query_opt("SELECT x, y FROM players WHERE name = $1", &[&name])
        .ok()??;
    Some((row.get(0), row.get(1)))
}

fn until_postgres_row(url: &str, name: &str, wanted: (f32, f32)) {
    let deadline = Instant::now() + LIMIT;
    while postgres_row(url, name) != Some(wanted) {
        assert!(
            Instant::now() < deadline,
            "{name} never saved as {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn on_postgresql_a_player_who_comes_back_starts_where_it_left() {
    let Some((url, _alone)) = postgres() else {
        return;
    };
    let server = game_server(&url);
    let name = unique("erin");
    drop(visit(&server, &name, (7.0, 8.0)));
    until_postgres_row(&url, &name, (7.0, 8.0));
    let mut again = Bot::join(server.addr, 1000, &name);
    assert_eq!(first_position(&mut again), (7.0, 8.0));
}

/// Lets connections in again, however the test ends.
struct Reopen {
    url: String,
    database: String,
}

impl Drop for Reopen {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let sql = format!("ALTER DATABASE \"{}\" CONNECTION LIMIT -1", self.database);
            let _ = admin.batch_execute(&sql);
        }
    }
}

#[test]
fn on_postgresql_a_database_that_goes_away_mid_game_costs_no_play_and_no_save() {
    let Some((url, _alone)) = postgres() else {
        return;
    };
    let server = game_server(&url);
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let database: String = admin
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    let watcher_name = unique("watcher");
    let mut watcher = visit(&server, &watcher_name, (1.0, 1.0));
    // The database goes away: no new connection, the server's cut.
    admin
        .batch_execute(&format!("ALTER DATABASE \"{database}\" CONNECTION LIMIT 0"))
        .unwrap();
    let _reopen = Reopen {
        url: url.clone(),
        database: database.clone(),
    };
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    let leaver = unique("leaver");
    drop(visit(&server, &leaver, (9.0, 9.0)));
    let gone = wait_for_line(
        &server.stderr,
        |l| l.contains("database is unavailable"),
        LIMIT,
    );
    assert!(gone.is_some(), "the outage was not logged");
    // Play goes on.
    watcher.client.send(C_MOVE, &move_payload(2.0, 2.0));
    watcher.until_seen((2.0, 2.0), 1);
    // Back: the kept save is written.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{database}\" CONNECTION LIMIT -1"
        ))
        .unwrap();
    let back = wait_for_line(&server.stderr, |l| l.contains("database is back"), LIMIT);
    assert!(back.is_some(), "the recovery was not logged");
    until_postgres_row(&url, &leaver, (9.0, 9.0));
}
