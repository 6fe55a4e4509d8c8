//! What a game bench run measured (`overlapped bench --mode game`).

use std::fmt;

use serde::Serialize;

use super::BenchMode;

#[derive(Debug, Serialize)]
pub struct GameReport {
    pub mode: BenchMode,
    pub rooms: u32,
    pub players: u32,
    pub bots: usize,
    pub joined: usize,
    pub tick_hz: u16,
    pub seconds: f64,
    /// Snapshots delivered (the common name of the other modes' reports).
    pub messages: u64,
    pub messages_per_sec: f64,
    /// What every bot getting every snapshot would be.
    pub expected_per_sec: f64,
    pub entries: u64,
    pub entries_per_sec: f64,
    pub moves_sent: u64,
    pub update_age_p50_us: u64,
    pub update_age_p99_us: u64,
    pub update_age_max_us: u64,
    pub lateness_p50_us: u64,
    pub lateness_p99_us: u64,
    pub lateness_max_us: u64,
    /// Snapshots missed: gaps in the tick numbers.
    pub lost: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
}

impl fmt::Display for GameReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mode         game, {} rooms × {} players, {} of {} bots joined, {} Hz",
            self.rooms, self.players, self.joined, self.bots, self.tick_hz
        )?;
        writeln!(
            f,
            "snapshots    {} in {:.2} s: {:.0}/s (every bot every tick: {:.0}/s)",
            self.messages, self.seconds, self.messages_per_sec, self.expected_per_sec
        )?;
        writeln!(
            f,
            "entries      {:.0}/s; {} moves sent",
            self.entries_per_sec, self.moves_sent
        )?;
        writeln!(
            f,
            "update age   p50 {} us, p99 {} us, max {} us",
            self.update_age_p50_us, self.update_age_p99_us, self.update_age_max_us
        )?;
        writeln!(
            f,
            "lateness     p50 {} us, p99 {} us, max {} us",
            self.lateness_p50_us, self.lateness_p99_us, self.lateness_max_us
        )?;
        write!(
            f,
            "lost         {}\nerrors       {}",
            self.lost, self.errors
        )?;
        for what in &self.first_errors {
            write!(f, "\n  {what}")?;
        }
        Ok(())
    }
}
