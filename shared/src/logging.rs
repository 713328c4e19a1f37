//! The native processes' logs: to standard error, filtered by `RUST_LOG`, as text or, with
//! `LOG_FORMAT=json`, one JSON object per line for a log pipeline (timestamp, level, target,
//! message and fields).

use tracing_subscriber::EnvFilter;

/// Sets the process's logger; `default_filter` applies when `RUST_LOG` is not set.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        logs.init();
    }
}
