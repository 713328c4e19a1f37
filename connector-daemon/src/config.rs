//! The daemon's settings: flags, each also readable from the environment.

use clap::{Parser, ValueEnum};
use shared::event_log::Retention;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The real WhatsApp Web multi-device protocol (whatsapp-rust).
    Whatsapp,
    /// A stand-in WhatsApp for tests and demos, driven through `gw:simulator:control`.
    Simulator,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "connector-daemon", version, about = "Runs WhatsApp sessions for the gateway")]
pub struct Config {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// This daemon's identity in Redis. Default: derived from the host name, so a restarted
    /// daemon on the same machine resumes the sessions it held.
    #[arg(long, env = "GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Where each session's WhatsApp store lives (one directory per session).
    #[arg(long, env = "DATA_DIR", default_value = ".gateway/daemon")]
    pub data_dir: PathBuf,
    #[arg(long, env = "BACKEND", value_enum, default_value = "whatsapp")]
    pub backend: BackendKind,
    /// The WhatsApp Web socket to dial (default: WhatsApp's own). For relays, and for tests
    /// that need an endpoint that does not answer.
    #[arg(long, env = "WHATSAPP_URL")]
    pub whatsapp_url: Option<String>,
    /// How long a session lease and the heartbeat last unless renewed (renewed every third).
    #[arg(long, env = "LEASE_MS", default_value_t = 15_000)]
    pub lease_ms: u64,
    /// The first two reconnect delays; later ones follow the Fibonacci sequence (1, 1, 2, 3, 5,
    /// 8 … times this) up to `reconnect_max_ms`, ±10% jitter: WhatsApp Web's own backoff.
    #[arg(long, env = "RECONNECT_BASE_MS", default_value_t = 1_000)]
    pub reconnect_base_ms: u64,
    #[arg(long, env = "RECONNECT_MAX_MS", default_value_t = 900_000)]
    pub reconnect_max_ms: u64,
    /// A connection that lasts this long counts as stable: only then does the reconnect backoff
    /// start over. One that drops sooner keeps climbing it, so a flapping number backs off.
    #[arg(long, env = "STABLE_CONNECTION_MS", default_value_t = 30_000)]
    pub stable_connection_ms: u64,
    /// How often an unlink that could not reach WhatsApp (a logout, a delete) is tried again.
    #[arg(long, env = "UNLINK_RETRY_MS", default_value_t = 30_000)]
    pub unlink_retry_ms: u64,
    /// How many times a fresh client is built when the QR codes run out before the session
    /// stops waiting for a scan.
    #[arg(long, env = "PAIRING_ROUNDS", default_value_t = 3)]
    pub pairing_rounds: u32,
    /// Each organization's event log keeps at least this many of its newest events...
    #[arg(long, env = "EVENT_RETENTION_COUNT", default_value_t = 10_000)]
    pub event_retention_count: u64,
    /// ...and every event younger than this, whichever is more...
    #[arg(long, env = "EVENT_RETENTION_SECS", default_value_t = 24 * 60 * 60)]
    pub event_retention_secs: u64,
    /// ...but never more than this many (0: no cap), however fast an organization logs.
    #[arg(long, env = "EVENT_LOG_MAX_LEN", default_value_t = 100_000)]
    pub event_log_max_len: u64,
    /// How long received messages are kept; the same as the functions' `message_retention_secs`.
    #[arg(long, env = "MESSAGE_RETENTION_SECS", default_value_t = 7 * 24 * 60 * 60)]
    pub message_retention_secs: u64,
    /// Anti-ban pacing: the least time between two sends to one chat (WhatsApp's Cloud API
    /// documents about one message every 6 s per user); 0 turns it off.
    #[arg(long, env = "SEND_CHAT_GAP_MS", default_value_t = 6_000)]
    pub send_chat_gap_ms: u64,
    /// Anti-ban pacing: a random pause of up to this before a send that follows another at once
    /// (a queue being worked through, not a message to an idle one); 0 turns it off.
    #[arg(long, env = "SEND_JITTER_MS", default_value_t = 1_500)]
    pub send_jitter_ms: u64,
    /// The pause before a message that failed (for another reason than a missing connection or a
    /// refusal) is tried again; it doubles with each attempt, up to five minutes.
    #[arg(long, env = "SEND_RETRY_BASE_MS", default_value_t = 5_000)]
    pub send_retry_base_ms: u64,
    /// The largest media file a message sends or `GET …/media` fetches (bytes); the same as the
    /// functions' `media_max_bytes`.
    #[arg(long, env = "MEDIA_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub media_max_bytes: u64,
    /// How long a media URL may take to answer with the whole file.
    #[arg(long, env = "MEDIA_FETCH_TIMEOUT_MS", default_value_t = 30_000)]
    pub media_fetch_timeout_ms: u64,
    /// Let media URLs reach loopback, private and link-local addresses (off: a message cannot
    /// make the gateway fetch from the network it runs in).
    #[arg(long, env = "MEDIA_FETCH_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub media_fetch_allow_private: bool,
    /// How long a fetched or sent media file stays cached for `GET …/media`.
    #[arg(long, env = "MEDIA_CACHE_SECS", default_value_t = 3_600)]
    pub media_cache_secs: u64,
    /// What one organization's cached media files may add up to; the oldest go first.
    #[arg(long, env = "MEDIA_CACHE_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub media_cache_max_bytes: u64,
    /// How long a webhook endpoint has to answer a delivery (2xx: delivered).
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// The pause after a delivery's first failure; it doubles per failure up to
    /// `webhook_retry_max_ms`, with ±20% jitter.
    #[arg(long, env = "WEBHOOK_RETRY_BASE_MS", default_value_t = 5_000)]
    pub webhook_retry_base_ms: u64,
    #[arg(long, env = "WEBHOOK_RETRY_MAX_MS", default_value_t = 3_600_000)]
    pub webhook_retry_max_ms: u64,
    /// How long an event keeps being retried before it is dead-lettered.
    #[arg(long, env = "WEBHOOK_RETRY_PERIOD_SECS", default_value_t = 24 * 60 * 60)]
    pub webhook_retry_period_secs: u64,
    /// Let webhook URLs reach loopback, private and link-local addresses (the functions'
    /// `webhook_allow_private` should say the same).
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,
    /// Deliveries this daemon makes at once (one per endpoint and session at a time).
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 64)]
    pub webhook_concurrency: usize,
    /// Events queued for one endpoint at most; past it new ones are dead-lettered (`backlog_full`).
    #[arg(long, env = "WEBHOOK_BACKLOG_MAX", default_value_t = 10_000)]
    pub webhook_backlog_max: u64,
    /// How often every endpoint is looked at without an event announcing itself (retries come
    /// due, announcements lost while Redis was away).
    #[arg(long, env = "WEBHOOK_POLL_MS", default_value_t = 1_000)]
    pub webhook_poll_ms: u64,
    /// Where to serve `/metrics` (Prometheus text), e.g. `127.0.0.1:9464`; unset: not served.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Exit when standard input closes: a supervisor (xtask, the tests) holds the other end.
    #[arg(long)]
    pub stop_on_stdin_close: bool,
    #[command(flatten)]
    pub simulator: SimulatorTimings,
}

/// The simulator's timings; the defaults are WhatsApp's own.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorTimings {
    /// Time to open the simulated socket.
    #[arg(long, env = "SIM_CONNECT_MS", default_value_t = 300)]
    pub sim_connect_ms: u64,
    /// Lifetime of the first QR code.
    #[arg(long, env = "SIM_FIRST_QR_MS", default_value_t = 60_000)]
    pub sim_first_qr_ms: u64,
    /// Lifetime of each following QR code.
    #[arg(long, env = "SIM_NEXT_QR_MS", default_value_t = 20_000)]
    pub sim_next_qr_ms: u64,
    /// QR codes per client before they run out.
    #[arg(long, env = "SIM_QR_COUNT", default_value_t = 6)]
    pub sim_qr_count: u32,
    /// How long a phone code stays typeable after it was issued.
    #[arg(long, env = "SIM_PAIRING_CODE_MS", default_value_t = 180_000)]
    pub sim_pairing_code_ms: u64,
    /// Contacts in each simulated phone's address book, synced with the first login after a pairing.
    #[arg(long, env = "SIM_CONTACTS", default_value_t = 12)]
    pub sim_contacts: u32,
    /// Groups each simulated number is in.
    #[arg(long, env = "SIM_GROUPS", default_value_t = 3)]
    pub sim_groups: u32,
    /// Time WhatsApp takes to answer the joined-groups query.
    #[arg(long, env = "SIM_GROUPS_FETCH_MS", default_value_t = 200)]
    pub sim_groups_fetch_ms: u64,
    /// How long a silent socket goes unnoticed before the client's keepalive ends the connection
    /// (whatsapp-rust pings every 15–30 s and gives up 20 s later).
    #[arg(long, env = "SIM_KEEPALIVE_MS", default_value_t = 35_000)]
    pub sim_keepalive_ms: u64,
    /// Time the simulated server takes to acknowledge a sent message; 0 never acknowledges
    /// (as when the connection dies with the stanza in flight).
    #[arg(long, env = "SIM_ACK_MS", default_value_t = 5)]
    pub sim_ack_ms: u64,
    /// Time until the recipient's phone sends the delivery receipt; 0 never.
    #[arg(long, env = "SIM_DELIVERED_MS", default_value_t = 50)]
    pub sim_delivered_ms: u64,
    /// Time until the recipient reads a message (read receipt); 0 never.
    #[arg(long, env = "SIM_READ_MS", default_value_t = 0)]
    pub sim_read_ms: u64,
    /// Time the simulated server waits, after a client stored a batch of received messages,
    /// before it takes the acknowledgement (a daemon killed in between gets them again).
    #[arg(long, env = "SIM_INBOUND_ACK_MS", default_value_t = 0)]
    pub sim_inbound_ack_ms: u64,
    /// Received messages the simulated server hands a client at once, at most.
    #[arg(long, env = "SIM_INBOUND_BATCH", default_value_t = 20)]
    pub sim_inbound_batch: usize,
}

impl Config {
    pub fn gateway_id(&self) -> String {
        let raw = self.gateway_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_default();
            format!("gw-{}", host.trim())
        });
        // Gateway ids end up inside Redis keys: keep them to safe characters.
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect()
    }

    pub fn retention(&self) -> Retention {
        Retention {
            count: self.event_retention_count.max(1),
            max_age_ms: self.event_retention_secs.saturating_mul(1000),
            max_len: self.event_log_max_len,
        }
    }

    pub fn media_cache(&self) -> shared::media::CacheLimits {
        shared::media::CacheLimits { ttl_ms: self.media_cache_secs.max(1).saturating_mul(1000), max_bytes: self.media_cache_max_bytes }
    }

    pub fn message_retention_ms(&self) -> u64 {
        self.message_retention_secs.max(60).saturating_mul(1000)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn unlink_retry(&self) -> Duration {
        Duration::from_millis(self.unlink_retry_ms.max(1))
    }

    pub fn stable_connection(&self) -> Duration {
        Duration::from_millis(self.stable_connection_ms)
    }

    /// Delay before reconnect attempt `attempt` (0-based): the Fibonacci sequence from
    /// `reconnect_base_ms`, capped, ±10% jitter so many sessions dropped together do not
    /// reconnect in lockstep (WhatsApp Web's `{fibonacci, first: 1 s, second: 1 s, max: 900 s}`).
    pub fn reconnect_delay(&self, attempt: u32) -> Duration {
        let (mut a, mut b) = (self.reconnect_base_ms, self.reconnect_base_ms);
        for _ in 0..attempt.min(64) {
            (a, b) = (b, a.saturating_add(b).min(self.reconnect_max_ms));
        }
        let base = a.min(self.reconnect_max_ms) as f64;
        Duration::from_millis((base * rand::random_range(0.9..=1.1)) as u64)
    }

    /// The pause after a message's `attempts`-th failed attempt (1-based): doubling, capped.
    pub fn send_retry_pause(&self, attempts: u32) -> Duration {
        let doubled = self.send_retry_base_ms.saturating_mul(1 << attempts.saturating_sub(1).min(20));
        Duration::from_millis(doubled.min(300_000))
    }

    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        self.data_dir.join("sessions").join(session_id)
    }

    /// Removes everything stored for the session; a session with nothing stored is fine.
    pub fn remove_session_dir(&self, session_id: &str) -> Result<(), String> {
        match std::fs::remove_dir_all(self.session_dir(session_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_follow_fibonacci_and_cap() {
        let config = Config::parse_from(["connector-daemon", "--reconnect-base-ms", "100", "--reconnect-max-ms", "1000"]);
        let ms = |n| config.reconnect_delay(n).as_millis();
        for (attempt, base) in [(0, 100), (1, 100), (2, 200), (3, 300), (4, 500), (5, 800), (6, 1000), (40, 1000)] {
            let (low, high) = (base * 9 / 10, base * 11 / 10);
            assert!((low..=high).contains(&ms(attempt)), "attempt {attempt}: {} not within {low}..={high}", ms(attempt));
        }
    }

    #[test]
    fn gateway_ids_are_key_safe() {
        let config = Config::parse_from(["connector-daemon", "--gateway-id", "a b:c}"]);
        assert_eq!(config.gateway_id(), "a-b-c-");
    }
}
