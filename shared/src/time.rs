//! Wall-clock time as Unix milliseconds, the API's only time format.

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn now_secs() -> u64 {
    (now_millis() / 1000) as u64
}
