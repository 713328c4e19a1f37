//! An example of integrating through Redis (docs/redis-contract.md): reads one organization's
//! event log with a consumer group of its own and prints each event as a JSON line
//! `{"position": …, "event": …}`, acknowledging it only once printed. Stopped and started again,
//! it goes on where it left off: first what it had read but not acknowledged, then what is new.
//!
//! `event-consumer <redis url> <organization> <group> <consumer>`

use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use std::io::Write;

#[tokio::main]
async fn main() -> redis::RedisResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, org, group, consumer] = args.as_slice() else {
        eprintln!("usage: event-consumer <redis url> <organization> <group> <consumer>");
        std::process::exit(2);
    };
    let log = format!("gw:{{org:{org}}}:events");
    let mut redis = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    // Once: the group starts at the log's end. BUSYGROUP means it exists already.
    let created: redis::RedisResult<()> = redis.xgroup_create_mkstream(&log, group, "$").await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e);
        }
    }
    println!("ready");
    // "0": this consumer's pending entries (read before a stop, never acknowledged); then ">".
    let mut from = "0";
    loop {
        let mut options = StreamReadOptions::default().group(group, consumer).count(100);
        if from == ">" {
            options = options.block(5_000);
        }
        let reply: Option<StreamReadReply> = redis.xread_options(&[&log], &[from], &options).await?;
        let entries: Vec<_> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        if entries.is_empty() && from == "0" {
            from = ">";
            continue;
        }
        for entry in entries {
            let event: String = entry.get("event").unwrap_or_default();
            println!("{{\"position\":\"{}\",\"event\":{event}}}", entry.id);
            std::io::stdout().flush()?;
            let _: i64 = redis.xack(&log, group, &[&entry.id]).await?;
        }
    }
}
