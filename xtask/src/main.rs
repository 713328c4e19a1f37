//! `cargo xtask <command>`: every developer workflow, no shell scripts.
//!
//! - `build`: the components (wasm32-wasip2) and the host.
//! - `up`: Redis if none answers, build, run the host and the connector daemon, print the URL
//!   and a fresh api-key.
//! - `test`: the same prerequisites, then every test of the workspace.
//! - `bench`: `GET /api/v1/sessions` through the host vs a native baseline, side by side,
//!   event latency from the daemon's publish to an SSE client, and messaging: send latency to
//!   the simulated WhatsApp server and accepted sends per second; webhook delivery latency and
//!   deliveries per second to one endpoint.
//! - `apikey create|list|revoke`: an organization's api-keys.
//! - `quota set|unset|show`: an organization's overrides of the deployment's quotas.

mod apikey;
mod bench;
mod event_latency;
mod neighbour_bench;
mod prereq;
mod quota;
mod send_bench;
mod webhook_bench;

use std::process::ExitCode;

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = match args.first().map(String::as_str) {
        Some("build") => prereq::build(),
        Some("up") => runtime.block_on(up()),
        Some("test") => runtime.block_on(test(&args[1..])),
        Some("bench") => runtime.block_on(bench::run(&args[1..])),
        Some("apikey") => runtime.block_on(apikey::run(&args[1..])),
        Some("quota") => runtime.block_on(quota::run(&args[1..])),
        Some("native-baseline") => runtime.block_on(bench::serve_native(&args[1..])),
        _ => Err("usage: cargo xtask <build | up | test | bench | apikey create|list|revoke | quota set|unset|show>".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn up() -> Result {
    let redis_url = prereq::redis_url();
    prereq::ensure_redis(&redis_url).await?;
    prereq::build()?;
    let listen = std::env::var("GATEWAY_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let mut host = prereq::host_command(&redis_url, &listen).spawn()?;
    let mut daemon = prereq::daemon_command(&redis_url).spawn()?;
    prereq::wait_for_port(&listen).await?;

    let redis = shared::redis::native::connect(&redis_url).await?;
    let key = shared::apikey::mint();
    let caps = vec![shared::auth::Capability::Manage, shared::auth::Capability::Send, shared::auth::Capability::Read];
    shared::apikey::create(&redis, &key, "default", caps, Some("cargo xtask up".to_owned())).await?;
    println!("\nGateway: http://{listen}   (Redis: {redis_url})");
    println!("Api-key for organization \"default\" (shown once): {key}");
    println!("\n  export GATEWAY_URL=http://{listen} GATEWAY_KEY={key}");
    println!("  curl -s -X POST $GATEWAY_URL/api/v1/sessions -H \"Authorization: Bearer $GATEWAY_KEY\" -d '{{\"label\":\"Support\"}}'\n");
    println!("Ctrl-C stops the gateway and the connector daemon.");
    tokio::signal::ctrl_c().await?;
    for child in [&mut host, &mut daemon] {
        // Closing stdin is their cue to shut down cleanly (sessions stay resumable).
        drop(child.stdin.take());
        child.wait()?;
    }
    Ok(())
}

/// The suites that run a second time with real Spin as the host, and the tests among them that
/// the second run skips: one about the embedded host's own limits (Spin has its own), two that
/// spend their time on the daemon (70 s on its rate limiter, 11 s on a slow acknowledgement),
/// whose HTTP side the other tests cover, and the embedded host's `/metrics` (Spin has its own
/// telemetry).
const SPIN_SUITES: &[&str] = &["sessions", "lifecycle", "events", "limits", "messages", "inbound", "webhooks", "contract"];
const NOT_ON_SPIN: &[&str] = &[
    "the_host_answers_503_in_the_envelope_when_out_of_instances_or_connections",
    "a_rate_of_ten_a_minute_holds_over_a_burst_of_twenty_five",
    "a_message_goes_again_only_when_its_connection_ended_before_the_acknowledgement",
    "metrics_count_requests_streams_sessions_sends_and_deliveries",
];

/// Every test of the workspace with the embedded host and, at the same time, the HTTP suites
/// again with real Spin serving the same spin.toml. Both runs spend most of their time waiting
/// (on daemons, Redis, timeouts), so side by side they take little longer than the longer one.
/// The Spin run has a Redis database of its own (the tests' database less one), so neither
/// run's leftovers meet the other's. `cargo xtask test <args>` runs only the embedded pass,
/// with the arguments, its output streamed; `cargo xtask test --spin <args>` only the Spin pass.
async fn test(extra: &[String]) -> Result {
    // The tests' own database (15 unless TEST_REDIS_URL says otherwise): what they leave behind,
    // sessions with starts still queued among it, must not reach the deployment `up` serves.
    let redis_url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".to_owned());
    let spin_redis_url = neighbour_database(&redis_url)?;
    prereq::ensure_redis(&redis_url).await?;
    prereq::ensure_chromium()?;
    prereq::ensure_schemathesis()?;
    prereq::build()?;
    let cargo_test = |args: &[String], redis_url: &str, spin: bool| -> std::process::Command {
        let mut command = prereq::cargo();
        // The default members: every native crate; the components were built for wasm above.
        command.args(["test", "--release"]).args(args).env("REDIS_URL", redis_url);
        if spin {
            command.env("E2E_HOST", "spin");
        }
        command
    };
    let spin_args = |given: &[String]| -> Vec<String> {
        let mut args: Vec<String> = if given.is_empty() {
            SPIN_SUITES.iter().flat_map(|suite| ["--test".to_owned(), suite.to_string()]).collect()
        } else {
            given.to_vec()
        };
        if !args.iter().any(|a| a == "--") {
            args.push("--".to_owned());
        }
        args.extend(NOT_ON_SPIN.iter().flat_map(|t| ["--skip".to_owned(), t.to_string()]));
        args
    };
    let passed = |status: std::process::ExitStatus, pass: &str| -> Result {
        if status.success() { Ok(()) } else { Err(format!("tests failed{pass}").into()) }
    };
    if let Some(given) = extra.strip_prefix(&["--spin".to_owned()]) {
        if !prereq::spin(&spin_redis_url).await? {
            return Err("no Spin archive found (SPIN_ARCHIVE, ../shared/tools/, /work/shared/tools/)".into());
        }
        return passed(cargo_test(&spin_args(given), &spin_redis_url, true).status()?, " on Spin");
    }
    if !extra.is_empty() {
        return passed(cargo_test(extra, &redis_url, false).status()?, "");
    }
    // Compiled once, before either run starts.
    passed(cargo_test(&["--no-run".to_owned()], &redis_url, false).status()?, " to build")?;
    // A Spin that cannot start fails the run, but only after the embedded pass ran.
    let (with_spin, spin_failure) = match prereq::spin(&spin_redis_url).await {
        Ok(found) => (found, None),
        Err(e) => (false, Some(e)),
    };
    if !with_spin && spin_failure.is_none() {
        println!("xtask: WARNING: no Spin archive found (SPIN_ARCHIVE, ../shared/tools/, /work/shared/tools/): the Spin pass is SKIPPED");
    }
    println!("xtask: the tests with the embedded host{}", if with_spin { " and, beside them, the HTTP suites served by real Spin" } else { "" });
    // Each run's output (cargo's and the tests', interleaved as they happened) goes to a file of
    // its own, printed whole once the run ends.
    let logs = prereq::root().join("target/e2e");
    std::fs::create_dir_all(&logs)?;
    let start = |mut command: std::process::Command, name: &str| -> Result<(std::process::Child, std::path::PathBuf)> {
        let path = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&path)?;
        Ok((command.stdout(file.try_clone()?).stderr(file).spawn()?, path))
    };
    let mut runs = vec![("", start(cargo_test(&[], &redis_url, false), "tests-embedded")?)];
    if with_spin {
        match start(cargo_test(&spin_args(&[]), &spin_redis_url, true), "tests-spin") {
            Ok(run) => runs.push((" on Spin", run)),
            Err(e) => {
                // Not left running on its own.
                let _ = runs[0].1.0.kill();
                return Err(e);
            }
        }
    }
    let mut outcome = Ok(());
    for (pass, (mut child, log)) in runs {
        let status = child.wait()?;
        println!("xtask: ===== the tests{} ({}) =====", if pass.is_empty() { " with the embedded host" } else { pass }, log.display());
        print!("{}", String::from_utf8_lossy(&std::fs::read(&log)?));
        if outcome.is_ok() {
            outcome = passed(status, pass);
        }
    }
    if let (Ok(()), Some(failure)) = (&outcome, spin_failure) {
        return Err(format!("the Spin pass could not start: {failure}").into());
    }
    outcome
}

/// The Redis URL of another database than `url`'s for the Spin pass: the one below (15 → 14),
/// never database 0, which `up` serves (1 → 2).
fn neighbour_database(url: &str) -> Result<String> {
    let (address, query) = url.split_once('?').map_or((url, None), |(a, q)| (a, Some(q)));
    let (base, database) = match address.rsplit_once('/') {
        Some((base, db)) if !base.ends_with('/') && !db.is_empty() => {
            (base, db.parse::<u32>().map_err(|_| format!("TEST_REDIS_URL {url}: expected a database number after the last /"))?)
        }
        _ => (address.trim_end_matches('/'), 0),
    };
    let other = match database {
        0 => 1,
        1 => 2,
        n => n - 1,
    };
    Ok(format!("{base}/{other}{}", query.map(|q| format!("?{q}")).unwrap_or_default()))
}
