//! `overlapped server`: the seed's server in each notification model.

mod event;
mod port;
mod routine;

use std::io::{self, Write};
use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use overlapped::{TcpListener, TcpStream};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How the server learns that an operation completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Model {
    /// Events and `wait_for_multiple_events`, as in the seed.
    Event,
    /// Completion routines run in alertable waits.
    Routine,
    /// A completion port with worker threads and the session layer.
    Port,
}

/// What the server does with what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Print `Recv Data : TEXT (N bytes)` for each receive (the seed's).
    Print,
    /// Write every received byte back to its sender, unframed.
    Echo,
    /// A chat room of framed packets (port model only).
    Chat,
    /// The rooms-and-snapshots position game (port model only; see the
    /// README's "Build a game server").
    Game,
}

/// Options of `overlapped server`.
#[derive(Args)]
pub struct ServerArgs {
    /// Address to listen on (a name such as `localhost:7777` is resolved).
    #[arg(long, default_value = "127.0.0.1:7777", value_parser = resolve_addr)]
    pub addr: SocketAddr,
    /// Notification model.
    #[arg(long, value_enum, default_value_t = Model::Event)]
    pub model: Model,
    /// What to do with received bytes.
    #[arg(long, value_enum, default_value_t = Mode::Print)]
    pub mode: Mode,
    /// Worker threads: routine threads (routine model, default 1) or port
    /// workers (port model, default one per CPU). The event model adds a
    /// thread per 63 clients instead.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Largest chat packet accepted, header included (chat mode). The
    /// longest chat text is 12 bytes less: its relayed `S_CHAT` must fit.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u16).range(16..))]
    pub max_packet: u16,
    /// Chat lines a session may send per second, on average, in bursts of
    /// up to twice that (chat mode): each is sent to every session, so a
    /// client past it is dropped (`chat flood: ...`). 0 = no limit.
    #[arg(long, default_value_t = 200)]
    pub max_chat_rate: u32,
    /// Most clients at once; more are closed as soon as they connect
    /// (port model; default 20000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sessions: Option<u64>,
    /// Drop a client that completes no packet for this long: silent, or
    /// stuck on half a frame (port model; default 120000, 0 = never).
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Most clients at once from one IP address; more are closed as soon
    /// as they connect (port model; default 64, 0 = no limit). Loopback
    /// clients are not counted unless --limit-loopback.
    #[arg(long)]
    pub max_sessions_per_ip: Option<u64>,
    /// Hold loopback clients (127.0.0.0/8, ::1) to --max-sessions-per-ip
    /// too; by default only remote addresses are (port model).
    #[arg(long)]
    pub limit_loopback: bool,
    /// Drop a client that has not completed a first packet this long after
    /// it connected (port model; default 15000, 0 = never).
    #[arg(long)]
    pub handshake_timeout_ms: Option<u64>,
    /// Most bytes the server holds for all its clients together (send
    /// queues, partial packets, buffers), with a K, M or G suffix for KiB,
    /// MiB or GiB; past it the clients holding the most are dropped
    /// (port model; default a quarter of the machine's memory, 0 = none).
    #[arg(long, value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
    /// Most bytes queued for one client; a client that does not read past
    /// it is dropped (port model; default 4 MiB, at least 65536).
    #[arg(long, value_parser = clap::value_parser!(u64).range(65536..))]
    pub max_send_queue: Option<u64>,
    /// Share the port with other `overlapped server --reuse-port`
    /// processes (SO_REUSEPORT): the kernel spreads the connections over
    /// them. Each process keeps its own sessions: echo and print modes, or
    /// a chat room per process; refused for the game, whose rooms would
    /// split (port model).
    #[arg(long)]
    pub reuse_port: bool,
    /// Every connection starts with a PROXY protocol v2 header from a load
    /// balancer, naming the client: limits and logs see the client (port
    /// model). Only behind such a balancer: a connection without a valid
    /// header is closed with the reason logged.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// A worker with nothing to do waits this many microseconds for more
    /// completions once the first could wake it (io_uring's minimum wait,
    /// Linux 6.12): fewer wake-ups, each completion at most this much later
    /// (port model; default 200 for the game, whose ticks have 2 ms to
    /// spare, 0 = wake at the first otherwise).
    #[arg(long)]
    pub batch_wait_us: Option<u64>,
    /// Post one receive at a time into each client's own buffer instead of
    /// keeping a multishot receive that takes pooled buffers (port model).
    #[arg(long)]
    pub single_recv: bool,
    /// On SIGINT/SIGTERM, how long to flush queued sends and wait for
    /// clients to close before dropping them and exiting.
    #[arg(long, default_value_t = 5000)]
    pub shutdown_timeout_ms: u64,
    /// Snapshots per second of each room (game mode).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub tick_hz: u16,
    /// Players a room holds; a join beyond it disconnects the joiner
    /// (game mode).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_room_players: u16,
    /// Where the game keeps its players between visits (game mode): a
    /// SQLite file's path, a `postgres://user:password@host/database` URL
    /// (one database the processes of a fleet share), or `none`.
    #[arg(long, default_value = "game.sqlite3")]
    pub db: String,
    /// Every call to the game's database takes this much longer: a slow
    /// database, for the benchmark that shows it never stalls a tick.
    #[arg(long, default_value_t = 0)]
    pub db_delay_ms: u64,
    /// Live as an Agones GameServer: Ready once listening, health pings
    /// while every worker beats, players and rooms tracked, allocation
    /// logged (port model; a build with `--features agones`).
    #[arg(long)]
    pub agones: bool,
    /// How often the Agones health ping goes (within the GameServer's
    /// `health.periodSeconds`).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..))]
    pub agones_health_ms: u64,
    /// Ask Agones to shut the server down once the last room of an
    /// allocated server closed (with --agones).
    #[arg(long)]
    pub agones_shutdown_when_empty: bool,
    /// Serve `/metrics` (Prometheus text) and `/healthz` over HTTP on this
    /// address (port model).
    #[arg(long, value_parser = resolve_addr)]
    pub metrics_addr: Option<SocketAddr>,
}

/// An address to listen on or connect to: `IP:PORT`, or `NAME:PORT`
/// resolved to its first address.
pub fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?}: {e} (expected HOST:PORT)"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

impl ServerArgs {
    /// Whether an option of the session layer was given.
    fn has_session_options(&self) -> bool {
        self.max_sessions.is_some()
            || self.idle_timeout_ms.is_some()
            || self.max_sessions_per_ip.is_some()
            || self.limit_loopback
            || self.handshake_timeout_ms.is_some()
            || self.max_send_queue.is_some()
            || self.max_memory.is_some()
            || self.single_recv
            || self.reuse_port
            || self.proxy_protocol
            || self.batch_wait_us.is_some()
    }
}

/// Lines about sessions joining, a few hundred a second: a connection
/// storm is summarised instead of writing a line per connection.
pub static JOIN_LOG: std::sync::LazyLock<overlapped::session::LogBudget> =
    std::sync::LazyLock::new(|| overlapped::session::LogBudget::new(200));

/// Lines about sessions leaving, with their reasons, on a budget of their
/// own: a storm of joins does not hide why someone was dropped.
pub static LEAVE_LOG: std::sync::LazyLock<overlapped::session::LogBudget> =
    std::sync::LazyLock::new(|| overlapped::session::LogBudget::new(200));

/// A byte count, with an optional K, M or G suffix (KiB, MiB, GiB).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 1u64 << 10),
        Some((at, 'm' | 'M')) => (&text[..at], 1 << 20),
        Some((at, 'g' | 'G')) => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    let count: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (a number, with K, M or G)"))?;
    count
        .checked_mul(unit)
        .ok_or_else(|| format!("{text} is too large"))
}

pub fn run(args: ServerArgs) -> io::Result<()> {
    if matches!(args.mode, Mode::Chat | Mode::Game) && args.model != Model::Port {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--mode chat and --mode game run on the session layer: use them with --model port",
        ));
    }
    if (args.agones || args.agones_shutdown_when_empty) && args.model != Model::Port {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--agones runs on the session layer: use it with --model port",
        ));
    }
    if args.agones && !cfg!(feature = "agones") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "this build has no Agones SDK: build with `cargo build --release --features agones` \
             (which needs protoc, Debian's protobuf-compiler)",
        ));
    }
    if args.reuse_port && args.mode == Mode::Game {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--reuse-port spreads players over processes that do not share rooms: \
             run one game process per port (a fleet: see docs/fleet.md)",
        ));
    }
    if args.metrics_addr.is_some() && args.model != Model::Port {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--metrics-addr reports the session layer's counters: use it with --model port",
        ));
    }
    if args.has_session_options() && args.model != Model::Port {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--max-sessions, --max-sessions-per-ip, --limit-loopback, --idle-timeout-ms, \
             --handshake-timeout-ms, --max-send-queue, --max-memory, --single-recv, \
             --reuse-port and --proxy-protocol are \
             options of the session layer: use them with --model port",
        ));
    }
    // Chosen once per process; an invalid OVERLAPPED_BACKEND stops here.
    overlapped::backend()?;
    // Signals are caught before the server listens: one that comes as the
    // first clients connect still drains them.
    if args.model == Model::Port {
        return port::run(&args, overlapped::session::StopSignals::catch()?);
    }
    exit_on_signal(Signals::new([SIGINT, SIGTERM])?)?;
    let listener = TcpListener::bind(args.addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.addr)))?;
    announce(listener.local_addr()?);
    match args.model {
        Model::Event => event::serve(listener, args.mode),
        Model::Routine => routine::serve(listener, args.mode, args.threads.map_or(1, usize::from)),
        Model::Port => unreachable!("handled above"),
    }
}

/// The event and routine models keep no send queue to flush: a signal
/// ends the process at once, with status 0.
fn exit_on_signal(mut signals: Signals) -> io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!("{} received: exiting", signal_name(signal));
                std::process::exit(0);
            }
        })?;
    Ok(())
}

pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Logs the backend and the address; tests read the address from the
/// line's last word.
fn announce(addr: SocketAddr) {
    match overlapped::backend() {
        Ok(backend) => tracing::info!("{backend} backend; listening on {addr}"),
        Err(_) => tracing::info!("listening on {addr}"),
    }
}

/// The seed's server (event model, print mode) on `listener`.
pub fn serve_seed(listener: TcpListener) -> io::Result<()> {
    event::serve(listener, Mode::Print)
}

/// Echoes go out as soon as they are received, however small: without
/// this, the second part of a message split across receives would wait for
/// the peer's delayed acknowledgement of the first (Nagle's algorithm).
fn set_nodelay(socket: &TcpStream) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::warn!("cannot set TCP_NODELAY: {e}");
    }
}

/// Writes one line of the seed's output. A closed stdout ends the program
/// quietly, as for any filter whose reader went away.
pub fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").is_err() {
        std::process::exit(0);
    }
}

/// The seed's line for a receive of `data`.
pub fn recv_line(data: &[u8]) -> String {
    format!(
        "Recv Data : {} ({} bytes)",
        crate::text::c_string(data),
        data.len()
    )
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn a_byte_count_takes_a_binary_suffix() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
    }

    #[test]
    fn a_bad_byte_count_is_an_error_that_says_why() {
        assert!(parse_bytes("lots")
            .unwrap_err()
            .contains("not a byte count"));
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
    }
}
