//! Sessions under faults: daemons killed (`kill -9`) or stopped (SIGTERM) in the middle of
//! commands, Redis restarted under load, daemons racing for the same sessions, leases taken away,
//! old commands delivered late. Everything through the real host, real daemons with the
//! simulator, and Redis servers the tests start and kill.
//!
//! The bar: nothing accepted is lost, nothing is done twice (the simulated server records every
//! time two clients of one device were live at once), what the API reports is true, and the
//! command streams stay bounded.

use e2e::{RedisServer, Stack, new_org, reconnect_waits};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SOON: Duration = Duration::from_secs(10);
/// The tests' lease period (`LEASE_MS` in the harness).
const LEASE: Duration = Duration::from_millis(3000);

/// A small deterministic generator, seeded and printed per test, so a failing run can be
/// replayed with `FAULTS_SEED`.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| shared::time::now_millis() as u64);
        println!("{test}: FAULTS_SEED={seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a session's last accepted command leaves it as, once the gateway has settled.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Expected {
    last: &'static str,
    paired: bool,
}

impl Expected {
    fn after(self, action: &'static str) -> Expected {
        Expected { last: action, paired: self.paired && action != "logout" }
    }

    fn holds_for(&self, row: &Value) -> bool {
        let status = row["status"].as_str().unwrap_or_default();
        let paired = !row["waJid"].is_null();
        let wanted = match (self.last, self.paired) {
            ("start" | "restart", true) => "working",
            ("start" | "restart", false) => "scan_qr_code",
            _ => "stopped",
        };
        status == wanted && paired == self.paired
    }
}

/// `POST :action` until the gateway accepts it. A 503 (Redis down) may or may not have queued
/// the command, so it is sent again: every lifecycle action is idempotent.
async fn act(stack: &Stack, key: &str, id: &str, action: &str) {
    let url = stack.session_url(id, &format!(":{action}"));
    for _ in 0..200 {
        let reply = stack.client.post(&url, key, "").await;
        match reply.status {
            200 => return,
            503 | 504 => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("{action} on {id}: {} {}", reply.status, reply.body),
        }
    }
    panic!("{action} on {id} was never accepted");
}

/// Polls every session until each is as expected, failing with the rows that are not.
async fn settled(stack: &Stack, key: &str, expected: &HashMap<String, Expected>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut wrong = Vec::new();
        for (id, want) in expected {
            let reply = stack.client.get(&stack.session_url(id, ""), key).await;
            if reply.status != 200 || !want.holds_for(&reply.body) {
                wrong.push(format!("{id}: want {want:?}, got {} {}", reply.status, reply.body));
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "sessions did not settle:\n{}", wrong.join("\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the simulated server saw: every time a second client of one device logged in while
/// the first was still live.
async fn double_logins(stack: &Stack) -> Vec<String> {
    redis::AsyncCommands::lrange(&mut stack.redis().await, shared::keys::simulator_replacements(), 0, -1).await.unwrap()
}

/// Every command stream and what is still pending on it.
async fn command_streams(stack: &Stack) -> Vec<(String, usize, usize)> {
    let mut redis = stack.redis().await;
    let mut streams: Vec<String> = redis::AsyncCommands::keys(&mut redis, shared::keys::command_streams_pattern()).await.unwrap();
    streams.sort();
    let mut out = Vec::new();
    for stream in streams {
        let len: usize = redis::AsyncCommands::xlen(&mut redis, &stream).await.unwrap();
        let pending: redis::RedisResult<redis::streams::StreamPendingReply> =
            redis::AsyncCommands::xpending(&mut redis, &stream, shared::keys::COMMAND_GROUP).await;
        out.push((stream, len, pending.map(|p| p.count()).unwrap_or(0)));
    }
    out
}

/// Once settled, every command stream is (nearly) empty: done commands are deleted.
async fn assert_streams_bounded(stack: &Stack, at_most: usize) {
    let deadline = Instant::now() + SOON;
    loop {
        let streams = command_streams(stack).await;
        if streams.iter().all(|(_, len, pending)| *len <= at_most && *pending == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "command streams hold more than {at_most} entries or pending ones: {streams:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `paired` new sessions, paired at once by scanning, each as its own phone number.
async fn paired_sessions(stack: &Stack, key: &str, count: usize, prefix: &str) -> Vec<String> {
    let phones: Vec<String> = (0..count).map(|i| format!("{prefix}{i:04}")).collect();
    let pairing = phones.iter().map(|phone| stack.paired_session(key, phone));
    futures::future::join_all(pairing).await.into_iter().map(|(id, _)| id).collect()
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_gateways_sessions_stop_reading_as_working_within_a_lease_period() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628100000001").await;
    let me = stack.client.get(&stack.session_url(&id, "/me"), &key).await.body;
    assert_eq!((&me["connected"], &me["pushName"]), (&true.into(), &"Simulated 628100000001".into()), "{me}");
    let pairing = stack.create(&key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    stack.qr_until(&key, &pairing, None, SOON).await;

    blocking(|| stack.daemon.kill());
    let killed = Instant::now();
    loop {
        let row = stack.client.get(&stack.session_url(&id, ""), &key).await.body;
        if row["status"] != "working" {
            assert_eq!((&row["status"], &row["gatewayId"]), (&"starting".into(), &Value::Null), "{row}");
            assert_eq!(row["statusReason"], "gateway_unavailable");
            break;
        }
        assert!(killed.elapsed() < LEASE + Duration::from_millis(1500), "still reported working after a lease period: {row}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = stack.client.get(&stack.gateway.url("/api/v1/sessions"), &key).await.body;
    for row in list["data"].as_array().unwrap() {
        assert_eq!((&row["status"], &row["gatewayId"]), (&"starting".into(), &Value::Null), "{row}");
    }
    let me = stack.client.get(&stack.session_url(&id, "/me"), &key).await.body;
    assert_eq!((&me["connected"], &me["status"]), (&false.into(), &"starting".into()), "{me}");
    // The dead gateway's last QR code scans into nothing: it is not handed out.
    stack.client.get(&stack.session_url(&pairing, "/qr"), &key).await.expect_error(404, "not_found");

    blocking(|| stack.daemon.restart());
    let row = stack.status_until(&key, &id, "working", SOON).await;
    assert_eq!((&row["gatewayId"], &row["statusReason"]), (&stack.daemon.gateway_id.as_str().into(), &Value::Null), "{row}");
    assert_eq!(stack.client.get(&stack.session_url(&id, "/me"), &key).await.body["connected"], true);
    stack.qr_until(&key, &pairing, None, SOON).await;
}

/// One session per command kind, all held by the first daemon, which is killed while the
/// commands are under way (connecting takes a second). The second daemon adopts them, or the
/// first comes back, and every session ends as its command says, each carried out once.
async fn kill_9_in_the_middle_of_each_command_kind(killed_one_returns: bool) {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_CONNECT_MS", "1000"), ("SIM_GROUPS_FETCH_MS", "1500"), ("SIM_QR_COUNT", "30")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let ids = paired_sessions(&stack, &key, 6, if killed_one_returns { "4470001" } else { "4470002" }).await;
    let [to_start, to_stop, to_restart, to_log_out, to_delete, to_backfill] = [0, 1, 2, 3, 4, 5].map(|i| ids[i].clone());
    let to_pair = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let backfill = stack.gateway.url(&format!("/api/v1/admin/sessions/{to_backfill}/backfill"));
    let super_admin = e2e::rs256(&json!({
        "sub": "operator-1", "platform_role": "super_admin",
        "iss": e2e::ISSUER, "aud": e2e::AUDIENCE, "iat": e2e::now(), "exp": e2e::now() + 3600,
    }));
    act(&stack, &key, &to_start, "stop").await;
    stack.status_until(&key, &to_start, "stopped", SOON).await;
    let connected_at = stack.client.get(&stack.session_url(&to_restart, ""), &key).await.body["lastConnectedAt"].as_i64();
    let _peer = blocking(|| stack.daemon.start_beside());

    let commands = async {
        futures::join!(
            act(&stack, &key, &to_start, "start"),
            act(&stack, &key, &to_stop, "stop"),
            act(&stack, &key, &to_restart, "restart"),
            act(&stack, &key, &to_log_out, "logout"),
            async { assert_eq!(stack.client.delete(&stack.session_url(&to_delete, ""), &key).await.status, 204) },
            async {
                let code = stack.client.post(&stack.session_url(&to_pair, "/pairing-code"), &key, r#"{"phone": "447700900555"}"#).await;
                assert!([200, 503, 504].contains(&code.status), "{} {}", code.status, code.body);
            },
            async { assert_eq!(stack.client.send("POST", &backfill, Some(&super_admin), None).await.status, 202) },
        )
    };
    let kill = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        blocking(|| stack.daemon.kill());
    };
    futures::join!(commands, kill);
    if killed_one_returns {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        blocking(|| stack.daemon.restart());
    }

    let expected: HashMap<String, Expected> = [
        (to_start.clone(), Expected { last: "start", paired: true }),
        (to_stop.clone(), Expected { last: "stop", paired: true }),
        (to_restart.clone(), Expected { last: "restart", paired: true }),
        (to_log_out.clone(), Expected { last: "logout", paired: false }),
        // Asked for a pairing code: pairing, whether the code came before the kill or after.
        (to_pair.clone(), Expected { last: "start", paired: false }),
        (to_backfill.clone(), Expected { last: "start", paired: true }),
    ]
    .into();
    settled(&stack, &key, &expected, Duration::from_secs(30)).await;
    let restarted = stack.client.get(&stack.session_url(&to_restart, ""), &key).await.body;
    assert!(restarted["lastConnectedAt"].as_i64() > connected_at, "the restart reconnected: {restarted}");
    stack.client.get(&stack.session_url(&to_delete, ""), &key).await.expect_error(404, "not_found");
    // The backfill ends, one way or the other; it is never left running.
    let deadline = Instant::now() + SOON;
    loop {
        let job = stack.client.get(&backfill, &super_admin).await.body;
        if job["status"] != "running" {
            assert!(job["status"] == "completed" || job["status"] == "failed", "{job}");
            break;
        }
        assert!(Instant::now() < deadline, "the backfill stayed running: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + SOON;
    while stack.daemon.session_dir(&to_delete).exists() || stack.daemon.session_dir(&to_log_out).exists() {
        assert!(Instant::now() < deadline, "the deleted and the logged-out sessions' stores were not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(double_logins(&stack).await, Vec::<String>::new(), "no session ran twice");
    assert_streams_bounded(&stack, 0).await;
    if !killed_one_returns {
        // The dead gateway's stream and its consumer on the placement stream are gone.
        let dead = stack.daemon.gateway_id.clone();
        wait_for("the dead gateway's stream and consumer were removed", SOON, async || {
            let mut redis = stack.redis().await;
            let stream: bool = redis::AsyncCommands::exists(&mut redis, shared::keys::gateway_commands(&dead)).await.unwrap();
            let consumers: redis::streams::StreamInfoConsumersReply =
                redis::AsyncCommands::xinfo_consumers(&mut redis, shared::keys::unplaced_commands(), shared::keys::COMMAND_GROUP).await.unwrap();
            !stream && consumers.consumers.iter().all(|c| c.name != dead)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_each_command_kind_the_survivor_adopts() {
    kill_9_in_the_middle_of_each_command_kind(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_each_command_kind_the_killed_daemon_returns() {
    kill_9_in_the_middle_of_each_command_kind(true).await;
}

/// Redis is killed and restarted (with its append-only file) twice while commands flow: once
/// briefly, once for longer than a lease period. Requests meanwhile answer 503 and are sent
/// again; once Redis is back every session ends as its last command says.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_in_the_middle_of_commands_loses_nothing() {
    let stack = Stack::on(RedisServer::start_durable(), &[("BACKEND", "simulator")], &[]);
    let org = new_org();
    let key = stack.key(&org).await;
    let ids = paired_sessions(&stack, &key, 4, "4915200").await;
    let mut rng = Rng::seeded("redis_restart");
    let plans: Vec<Vec<&'static str>> =
        ids.iter().map(|_| (0..12).map(|_| ["start", "stop", "restart"][rng.below(3) as usize]).collect()).collect();

    let commands = futures::future::join_all(ids.iter().zip(&plans).map(|(id, plan)| {
        let (stack, key) = (&stack, &key);
        async move {
            for action in plan {
                act(stack, key, id, action).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    }));
    let outages = async {
        for down_for in [Duration::from_millis(1500), LEASE + Duration::from_millis(1500)] {
            tokio::time::sleep(Duration::from_millis(800)).await;
            blocking(|| stack.redis.stop());
            tokio::time::sleep(down_for).await;
            blocking(|| stack.redis.restart());
        }
    };
    futures::join!(commands, outages);

    let expected = ids.iter().zip(&plans).map(|(id, plan)| (id.clone(), Expected { last: plan.last().unwrap(), paired: true })).collect();
    settled(&stack, &key, &expected, Duration::from_secs(40)).await;
    assert_eq!(double_logins(&stack).await, Vec::<String>::new(), "no session ran twice");
    assert_streams_bounded(&stack, 0).await;
}

/// One step of a session's random plan: sometimes a burst of commands sent at once (so daemons
/// race for the session), then always one command on its own, whose outcome the step expects.
struct Step {
    burst: Vec<&'static str>,
    then: &'static str,
}

/// Three daemons sharing one data directory take a thousand random lifecycle commands over
/// twenty sessions while they are killed (`kill -9`) and stopped (SIGTERM) at random. At the
/// end every row says what its last command implies, no session ever had two live clients, and
/// the command streams are empty.
#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_a_thousand_random_commands_and_random_kills() {
    const SESSIONS: usize = 20;
    const COMMANDS_EACH: usize = 50;
    // Unpaired sessions (after a logout) keep showing codes until the end of the test.
    let settings = [("BACKEND", "simulator"), ("SIM_FIRST_QR_MS", "60000"), ("SIM_QR_COUNT", "20")];
    let stack = Stack::start_with(&settings);
    let org = new_org();
    let key = stack.key(&org).await;
    let ids = paired_sessions(&stack, &key, SESSIONS, "5511900").await;
    let others = blocking(|| [stack.daemon.start_beside(), stack.daemon.start_beside()]);
    let mut rng = Rng::seeded("three_daemons");
    let plan = |rng: &mut Rng| {
        let mut steps: Vec<Step> = Vec::new();
        while steps.iter().map(|s| s.burst.len() + 1).sum::<usize>() < COMMANDS_EACH {
            // Bursts leave no single last command, so they hold no logout (the one that unpairs).
            let burst = match rng.below(4) {
                0 => (0..2).map(|_| ["start", "stop", "restart"][rng.below(3) as usize]).collect(),
                _ => vec![],
            };
            steps.push(Step { burst, then: ["start", "start", "stop", "stop", "restart", "logout"][rng.below(6) as usize] });
        }
        steps
    };
    let plans: Vec<Vec<Step>> = ids.iter().map(|_| plan(&mut rng)).collect();
    let sent = plans.iter().flatten().map(|s| s.burst.len() + 1).sum::<usize>();

    let done = std::sync::atomic::AtomicBool::new(false);
    let commands = async {
        futures::future::join_all(ids.iter().zip(&plans).enumerate().map(|(i, (id, plan))| {
            let (stack, key) = (&stack, &key);
            async move {
                // About half a minute of commands, so the faults land among them.
                for (n, step) in plan.iter().enumerate() {
                    futures::future::join_all(step.burst.iter().map(|action| act(stack, key, id, action))).await;
                    act(stack, key, id, step.then).await;
                    tokio::time::sleep(Duration::from_millis(300 + ((i * 37 + n * 131) % 600) as u64)).await;
                }
            }
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let chaos = async {
        let mut faults = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) && faults < 40 {
            tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
            let which = rng.below(3) as usize;
            let daemon = if which == 0 { &stack.daemon } else { &others[which - 1] };
            if rng.below(2) == 0 {
                blocking(|| daemon.kill());
                // Back before its lease lapses, or after, when the others have adopted its work.
                // (The simulated server, like WhatsApp, notices a dead client within a second.)
                let away = if rng.below(2) == 0 { 1200 } else { 4000 };
                tokio::time::sleep(Duration::from_millis(away)).await;
            } else {
                blocking(|| daemon.terminate());
            }
            blocking(|| daemon.restart());
            faults += 1;
        }
        faults
    };
    let (_, faults) = futures::join!(commands, chaos);
    println!("{faults} daemon faults during {sent} commands");
    assert!(faults >= 8, "the daemons were hardly disturbed");

    let expected: HashMap<String, Expected> = ids
        .iter()
        .zip(&plans)
        .map(|(id, plan)| (id.clone(), plan.iter().fold(Expected { last: "start", paired: true }, |e, step| e.after(step.then))))
        .collect();
    settled(&stack, &key, &expected, Duration::from_secs(60)).await;
    assert_eq!(double_logins(&stack).await, Vec::<String>::new(), "no session ever had two live clients");
    assert_streams_bounded(&stack, 0).await;
}

/// The row's fencing token moves on (as when another daemon takes the session): the old holder's
/// next write is refused, it lets go of its client, and nothing it does changes the row again.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_whose_lease_was_taken_lets_go_and_cannot_write() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, row) = stack.paired_session(&key, "33612345678").await;
    let mut redis = stack.redis().await;
    let lease: String = redis::AsyncCommands::get(&mut redis, shared::keys::session_lease(&org, &id)).await.unwrap();
    let fence: i64 = lease.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(lease.starts_with(row["gatewayId"].as_str().unwrap()), "{lease}");

    // Another gateway takes the session: a newer lease, its token on the row.
    let taken = format!("gw-intruder {}", fence + 1);
    let bump = r"
local row = cjson.decode(redis.call('GET', KEYS[2]))
row['_fence'] = tonumber(ARGV[2])
redis.call('SET', KEYS[2], cjson.encode(row))
redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000)
return 1";
    let _: i64 = redis::cmd("EVAL")
        .arg(bump).arg(2).arg(shared::keys::session_lease(&org, &id)).arg(shared::keys::session(&org, &id)).arg(&taken).arg(fence + 1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let events_before = stack.events(&org).await.len();
    let row_before = stack.client.get(&stack.session_url(&id, ""), &key).await.body;

    // Its renewal fails within a third of a lease: the client goes offline on the server.
    let devices: HashMap<String, String> = redis::AsyncCommands::hgetall(&mut redis, shared::keys::simulator_linked_devices()).await.unwrap();
    let device = devices.iter().find(|(_, phone)| *phone == "33612345678").unwrap().0.clone();
    let deadline = Instant::now() + LEASE;
    loop {
        let online: bool = redis::AsyncCommands::exists(&mut redis, shared::keys::simulator_online(&device)).await.unwrap();
        if !online {
            break;
        }
        assert!(Instant::now() < deadline, "the old holder kept its client after losing the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Phone-side events reach nobody, and the old holder writes nothing more.
    stack.phone("drop", &[("session", &id)]).await;
    tokio::time::sleep(LEASE).await;
    let row_after = stack.client.get(&stack.session_url(&id, ""), &key).await.body;
    assert_eq!(row_after["updatedAt"], row_before["updatedAt"], "{row_after}");
    assert_eq!(stack.events(&org).await.len(), events_before, "no event from a daemon without the lease");
    let resumable: bool =
        redis::AsyncCommands::sismember(&mut redis, shared::keys::gateway_sessions(&stack.daemon.gateway_id), &id).await.unwrap();
    assert!(!resumable, "a lost session is not resumed by the gateway that lost it");
}

/// A daemon cut off from Redis for longer than a lease period (its WhatsApp connections up)
/// while its sessions send, and a peer on Redis adopts them: the cut-off daemon stops its
/// clients before its leases can lapse in Redis, whatever it was waiting on, so no device is
/// ever driven by two clients at once (the simulated server records any overlap). Once mended,
/// every session works, its number kept, and every message is sent; only a message in flight
/// at the cut may go twice (its acknowledgement could not be recorded, and WhatsApp cannot say
/// whether the copy arrived).
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_cut_off_from_redis_stops_its_clients_before_a_peer_adopts_them() {
    let stack = Stack::on(RedisServer::start(), &[("BACKEND", "simulator"), ("SIM_ACK_MS", "20")], &[]);
    let partition = e2e::Partition::start(&stack.redis.url);
    // The sessions are paired on the daemon that will be cut off; its peer joins afterwards.
    stack.daemon.terminate();
    let cut_off = stack.daemon.start_beside_via(&partition.url);
    let org = new_org();
    let key = stack.key(&org).await;
    let body = r#"{"start": true, "presenceTyping": false, "ratePerMin": 1000, "ratePerHour": 60000}"#;
    let mut sessions = Vec::new();
    for i in 0..4 {
        let (id, row) = stack.paired_session_with(&key, body, &format!("4479000000{i:02}")).await;
        assert_eq!(row["gatewayId"], cut_off.gateway_id.as_str());
        sessions.push((id, row["waJid"].clone()));
    }
    stack.daemon.restart();
    let mut texts = Vec::new();
    for round in 0..8 {
        for (id, _) in &sessions {
            let text = format!("{id} {round}");
            let reply = stack.client.post(&stack.session_url(id, "/messages"), &key, &json!({"to": "447900099999", "text": text}).to_string()).await;
            assert_eq!(reply.status, 202, "{}", reply.body);
            texts.push(text);
        }
        if round == 3 {
            partition.cut();
            // Long enough for the peer to find the cut-off daemon dead and adopt its sessions.
            let adopted = async {
                let deadline = Instant::now() + LEASE * 6;
                while !futures::future::join_all(sessions.iter().map(|(id, _)| stack.row_until(&key, id, SOON, |_| true)))
                    .await
                    .iter()
                    .all(|row| row["gatewayId"] == stack.daemon.gateway_id.as_str() && row["status"] == "working")
                {
                    assert!(Instant::now() < deadline, "the peer did not adopt the cut-off daemon's sessions");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            adopted.await;
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            partition.mend();
        }
    }
    let mut redis = stack.redis().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records: Vec<String> = redis::AsyncCommands::lrange(&mut redis, shared::keys::simulator_delivered(), 0, -1).await.unwrap();
        let delivered: Vec<Value> = records.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
        let mut copies: HashMap<&str, usize> = HashMap::new();
        for record in &delivered {
            *copies.entry(record["text"].as_str().unwrap()).or_default() += 1;
        }
        if texts.iter().all(|t| copies.contains_key(t.as_str())) {
            let again: Vec<&str> = copies.iter().filter(|(_, n)| **n > 1).map(|(t, _)| *t).collect();
            for (id, _) in &sessions {
                assert!(again.iter().filter(|t| t.starts_with(id.as_str())).count() <= 1, "only the message in flight at the cut may go twice: {again:?}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "not every message was sent: {} of {}", copies.len(), texts.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (id, jid) in &sessions {
        let row = stack.status_until(&key, id, "working", SOON).await;
        assert_eq!(&row["waJid"], jid, "the same number, no scan");
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let overlaps: Vec<String> = redis::AsyncCommands::lrange(&mut redis, shared::keys::simulator_replacements(), 0, -1).await.unwrap();
    assert!(overlaps.is_empty(), "two clients of one device were live at once: {overlaps:?}");
}

/// A command older than the last one applied is skipped, however it arrives: moved late, or
/// replayed after the consumer group was created again.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_command_delivered_late_changes_nothing() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "81312345678").await;
    act(&stack, &key, &id, "stop").await;
    stack.status_until(&key, &id, "stopped", SOON).await;
    let mut redis = stack.redis().await;
    let raw: String = redis::AsyncCommands::get(&mut redis, shared::keys::session(&org, &id)).await.unwrap();
    let applied = serde_json::from_str::<Value>(&raw).unwrap()["_applied"].as_u64().unwrap();
    assert!(applied >= 2, "the start and the stop were numbered: {raw}");

    let mut old = shared::command::Command::new(shared::command::CommandKind::Start, &id, &org);
    old.seq = applied - 1;
    let queue = |redis: &mut redis::aio::MultiplexedConnection| {
        let json = old.to_json();
        let mut redis = redis.clone();
        async move {
            let _: String = redis::AsyncCommands::xadd(&mut redis, shared::keys::unplaced_commands(), "*", &[("command", json)]).await.unwrap();
        }
    };
    queue(&mut redis).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.client.get(&stack.session_url(&id, ""), &key).await.body["status"], "stopped");
    assert_streams_bounded(&stack, 0).await;

    // The group goes missing and is created again while an old command waits in the stream.
    blocking(|| stack.daemon.kill());
    let _: () = redis::cmd("XGROUP").arg("DESTROY").arg(shared::keys::unplaced_commands()).arg(shared::keys::COMMAND_GROUP)
        .query_async(&mut redis).await.unwrap();
    queue(&mut redis).await;
    blocking(|| stack.daemon.restart());
    assert_streams_bounded(&stack, 0).await;
    assert_eq!(stack.client.get(&stack.session_url(&id, ""), &key).await.body["status"], "stopped");

    // A new command is numbered after them and carried out.
    act(&stack, &key, &id, "start").await;
    stack.status_until(&key, &id, "working", SOON).await;
}

/// What no reconnect fixes ends a session, its reason on the row; what one does never does. A
/// stream error without a code keeps the connection; a drop reconnects at once and a flapping
/// connection backs off further each time (WhatsApp Web's Fibonacci backoff); a rate limit
/// (stream error 429) backs off far longer; an outage longer than any number of attempts keeps
/// the session `starting`, saying when it tries next, until WhatsApp is back: no re-pairing.
#[tokio::test(flavor = "multi_thread")]
async fn only_what_no_reconnect_fixes_fails_a_session() {
    let stack = Stack::start_with(&[
        ("BACKEND", "simulator"),
        ("RECONNECT_BASE_MS", "100"),
        ("RECONNECT_MAX_MS", "500"),
        ("STABLE_CONNECTION_MS", "1500"),
    ]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, row) = stack.paired_session(&key, "61412345678").await;
    let connected = |row: &Value| row["lastConnectedAt"].as_i64();

    // Informational: nothing drops, and a message still goes out.
    stack.phone("stream_error", &[("session", &id)]).await;
    stack.phone("stream_error", &[("session", &id), ("code", "500")]).await;
    let text = stack.client.post(&stack.session_url(&id, "/messages"), &key, r#"{"to": "61400000002", "text": "still here"}"#).await;
    assert_eq!(text.status, 202, "{}", text.body);
    let url = stack.session_url(&id, &format!("/messages/{}", text.body["id"].as_str().unwrap()));
    let deadline = Instant::now() + SOON;
    while stack.client.get(&url, &key).await.body["sentAt"].is_null() {
        assert!(Instant::now() < deadline, "the message never went out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connected(&stack.client.get(&stack.session_url(&id, ""), &key).await.body), connected(&row), "the connection stayed");

    // A flapping connection: each drop soon after a login waits longer than the one before.
    let mut last = connected(&row);
    for _ in 0..3 {
        stack.phone("drop", &[("session", &id)]).await;
        last = connected(&stack.row_until(&key, &id, SOON, |row| row["status"] == "working" && connected(row) > last).await);
    }
    let waits = reconnect_waits(&stack.events(&org).await);
    assert!(waits.len() == 3 && waits[0] <= 150 && waits[2] >= 170, "Fibonacci from 100 ms: {waits:?}");

    // After a stable connection, a rate limit backs off five steps further up the sequence
    // (to the cap here, five times a drop's wait).
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    stack.phone("stream_error", &[("session", &id), ("code", "429")]).await;
    last = connected(&stack.row_until(&key, &id, SOON, |row| row["status"] == "working" && connected(row) > last).await);
    let waits = reconnect_waits(&stack.events(&org).await);
    assert!(waits.len() == 4 && waits[3] >= 450, "a rate limit waits 800 ms, capped at 500, ±10%: {waits:?}");

    // An outage: the session says it is reconnecting and when, for as long as it lasts.
    let mut redis = stack.redis().await;
    let _: () = redis::AsyncCommands::set(&mut redis, shared::keys::simulator_outage(), "1").await.unwrap();
    stack.phone("drop", &[("session", &id)]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while reconnect_waits(&stack.events(&org).await).len() < 4 + 9 {
        assert!(Instant::now() < deadline, "not retrying through the outage");
        let row = stack.client.get(&stack.session_url(&id, ""), &key).await.body;
        assert_eq!(row["status"], "starting", "{row}");
        assert!(row["statusReason"].as_str().unwrap().contains("; next attempt at "), "{row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _: () = redis::AsyncCommands::del(&mut redis, shared::keys::simulator_outage()).await.unwrap();
    let back = stack.row_until(&key, &id, SOON, |row| row["status"] == "working" && connected(row) > last).await;
    assert_eq!(back["waJid"], row["waJid"], "the same pairing, no scan");
    let events = stack.events(&org).await;
    assert!(!events.iter().any(|e| e["type"] == "session.status" && e["data"]["status"] == "failed"), "nothing failed");

    // A ban for an unknown time is a failure with its reason on the row.
    stack.phone("ban", &[("session", &id)]).await;
    let banned = stack.status_until(&key, &id, "failed", SOON).await;
    assert!(banned["statusReason"].as_str().unwrap().starts_with("temporary_ban"), "{banned}");
    assert_eq!(banned["gatewayId"], Value::Null, "no gateway holds a failed session");

    // A ban that lifts at a known time pauses the session (and its outbox) until then.
    act(&stack, &key, &id, "start").await;
    stack.status_until(&key, &id, "working", SOON).await;
    stack.phone("ban", &[("session", &id), ("secs", "2")]).await;
    let paused = stack.row_until(&key, &id, SOON, |row| row["statusReason"].as_str().is_some_and(|r| r.starts_with("temporary_ban"))).await;
    assert_eq!(paused["status"], "starting", "{paused}");
    let text = stack.client.post(&stack.session_url(&id, "/messages"), &key, r#"{"to": "61400000001", "text": "after the ban"}"#).await;
    assert_eq!(text.status, 202, "{}", text.body);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let queued = stack.client.get(&stack.session_url(&id, &format!("/messages/{}", text.body["id"].as_str().unwrap())), &key).await;
    assert_eq!(queued.body["status"], "queued", "nothing goes out while banned");
    let lifted = stack.row_until(&key, &id, SOON, |row| row["status"] == "working").await;
    assert!(lifted["lastConnectedAt"].as_i64() > paused["updatedAt"].as_i64(), "{lifted}");

    // Another client taking the stream over is the end too: a person must look.
    stack.phone("replace", &[("session", &id)]).await;
    let replaced = stack.status_until(&key, &id, "failed", SOON).await;
    assert!(replaced["statusReason"].as_str().unwrap().starts_with("stream_replaced"), "{replaced}");
}

/// Whether the simulated WhatsApp server still has a device linked for `phone`.
async fn linked_on_whatsapp(stack: &Stack, phone: &str) -> bool {
    let devices: HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut stack.redis().await, shared::keys::simulator_linked_devices()).await.unwrap();
    devices.values().any(|p| p == phone)
}

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `:logout` unlinks the device on WhatsApp's side whether the session is stopped, failed or
/// waiting to reconnect: the daemon connects with the stored device just to send the unlink.
#[tokio::test(flavor = "multi_thread")]
async fn logout_unlinks_the_device_whatever_the_sessions_state() {
    // A long reconnect delay keeps a dropped session waiting in its backoff.
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("RECONNECT_BASE_MS", "20000")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let ids = paired_sessions(&stack, &key, 3, "4930100").await;
    let phone_of: Vec<String> = futures::future::join_all(ids.iter().map(|id| async {
        stack.client.get(&stack.session_url(id, ""), &key).await.body["phoneNumber"].as_str().unwrap().to_owned()
    }))
    .await;
    act(&stack, &key, &ids[0], "stop").await;
    stack.status_until(&key, &ids[0], "stopped", SOON).await;
    stack.phone("ban", &[("session", &ids[1])]).await;
    stack.status_until(&key, &ids[1], "failed", SOON).await;
    stack.phone("drop", &[("session", &ids[2])]).await;
    stack.row_until(&key, &ids[2], SOON, |row| row["statusReason"].as_str().is_some_and(|r| r.starts_with("reconnecting"))).await;

    for (id, phone) in ids.iter().zip(&phone_of) {
        assert!(linked_on_whatsapp(&stack, phone).await);
        let out = stack.client.post(&stack.session_url(id, ":logout"), &key, "").await;
        assert_eq!(out.status, 200, "{}", out.body);
        let row = stack.row_until(&key, id, SOON, |row| row["waJid"].is_null()).await;
        assert_eq!(row["status"], "stopped", "{row}");
        wait_for(&format!("{phone} unlinked on WhatsApp's side"), SOON, async || !linked_on_whatsapp(&stack, phone).await).await;
        assert!(!stack.daemon.session_dir(id).exists(), "the store is wiped");
    }
    let logged_out: Vec<Value> = stack.events(&org).await.into_iter().filter(|e| e["type"] == "session.logged_out").collect();
    assert_eq!(logged_out.len(), 3);
    assert!(logged_out.iter().all(|e| e["data"]["unlinked"] == true), "{logged_out:?}");
}

/// WhatsApp cannot be reached when the logout comes: the session is unpaired for the API at
/// once (a wipe alone leaves the device linked on the server), and the unlink is retried until
/// it is sent, then announced. The session pairs from scratch meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_logout_that_cannot_reach_whatsapp_unpairs_now_and_unlinks_later() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("UNLINK_RETRY_MS", "500")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let phone = "34600100200";
    let (id, _) = stack.paired_session(&key, phone).await;
    act(&stack, &key, &id, "stop").await;
    stack.status_until(&key, &id, "stopped", SOON).await;

    let mut redis = stack.redis().await;
    let _: () = redis::AsyncCommands::set(&mut redis, shared::keys::simulator_outage(), "1").await.unwrap();
    let out = stack.client.post(&stack.session_url(&id, ":logout"), &key, "").await;
    assert_eq!(out.status, 200, "{}", out.body);
    stack.row_until(&key, &id, Duration::from_secs(40), |row| row["waJid"].is_null() && row["status"] == "stopped").await;
    let logged_out = stack.events(&org).await.into_iter().find(|e| e["type"] == "session.logged_out").unwrap();
    assert_eq!(logged_out["data"]["unlinked"], false, "{logged_out}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(linked_on_whatsapp(&stack, phone).await, "still linked while WhatsApp is unreachable");
    assert!(!stack.daemon.session_dir(&id).exists(), "the session itself holds no pairing any more");

    let _: () = redis::AsyncCommands::del(&mut redis, shared::keys::simulator_outage()).await.unwrap();
    wait_for("the unlink was retried and sent", SOON, async || !linked_on_whatsapp(&stack, phone).await).await;
    wait_for("the unlink was announced", SOON, async || stack.events(&org).await.iter().any(|e| e["type"] == "session.unlinked")).await;
    let unlinks = stack.daemon.data_dir.join("unlinks");
    wait_for("the set-aside store is gone", SOON, async || std::fs::read_dir(&unlinks).map_or(true, |d| d.count() == 0)).await;

    // Started again, it pairs from scratch.
    act(&stack, &key, &id, "start").await;
    stack.qr_until(&key, &id, None, SOON).await;
}

/// A session is deleted while the gateway that ran it is down, and another gateway (with a data
/// directory of its own) adopts its work meanwhile: when the first comes back it unlinks the
/// device and removes the store it kept, and nothing of the session is left in Redis.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_while_the_gateway_is_down_is_cleaned_up_when_it_returns() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let phone = "819011112222";
    let (id, _) = stack.paired_session(&key, phone).await;
    let _other = blocking(|| e2e::Daemon::start_with(&stack.redis.url, &[("BACKEND", "simulator")]));

    blocking(|| stack.daemon.kill());
    assert_eq!(stack.client.delete(&stack.session_url(&id, ""), &key).await.status, 204);
    // Long enough for the other gateway to adopt the dead one's work.
    tokio::time::sleep(LEASE + Duration::from_secs(2)).await;
    assert!(stack.daemon.session_dir(&id).exists(), "the store is on the down gateway's disk");

    blocking(|| stack.daemon.restart());
    wait_for("the returning gateway removed the store", SOON, async || !stack.daemon.session_dir(&id).exists()).await;
    wait_for("and unlinked the device", SOON, async || !linked_on_whatsapp(&stack, phone).await).await;
    let left: Vec<String> = redis::AsyncCommands::keys(&mut stack.redis().await, format!("*{id}*")).await.unwrap();
    assert_eq!(left, vec![shared::keys::session_deleted(&id)], "nothing of the deleted session is left but the record of its deletion");
    assert_streams_bounded(&stack, 0).await;
}

/// Hundreds of commands read by consumers that then died: this daemon's own (more than one read
/// page) and a dead gateway's (more than one claim page). All of them are recovered and carried
/// out in order, and the streams end empty.
#[tokio::test(flavor = "multi_thread")]
async fn every_pending_command_is_recovered_not_only_the_first_page() {
    use redis::streams::{StreamReadOptions, StreamReadReply};
    // The unpaired sessions the starts leave keep showing codes until the test ends.
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_QR_COUNT", "30")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let ids: Vec<String> = futures::future::join_all((0..6).map(|_| stack.create(&key, "{}")))
        .await
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect();
    blocking(|| stack.daemon.kill());

    // 300 start/stop commands, queued as the API queues them, numbered per session.
    let redis = shared::redis::native::connect(&stack.redis.url).await.unwrap();
    let mut last = HashMap::new();
    for n in 0..300 {
        let id = &ids[n % ids.len()];
        let kind = if (n / ids.len()) % 2 == 0 { shared::command::CommandKind::Start } else { shared::command::CommandKind::Stop };
        let session = shared::store::get(&redis, &org, id).await.unwrap();
        shared::store::enqueue(&redis, &session, &shared::command::Command::new(kind, id, &org), None, shared::event_log::Retention::default()).await.unwrap();
        last.insert(id.clone(), kind);
    }
    // This daemon read 150 of them before it died, a gateway now dead read the other 150.
    let mut conn = stack.redis().await;
    let stream = shared::keys::unplaced_commands();
    let _: redis::RedisResult<()> = redis::AsyncCommands::xgroup_create_mkstream(&mut conn, &stream, shared::keys::COMMAND_GROUP, "0").await;
    for consumer in [stack.daemon.gateway_id.as_str(), "gw-dead"] {
        let options = StreamReadOptions::default().group(shared::keys::COMMAND_GROUP, consumer).count(150);
        let read: StreamReadReply = redis::AsyncCommands::xread_options(&mut conn, &[&stream], &[">"], &options).await.unwrap();
        assert_eq!(read.keys[0].ids.len(), 150);
    }

    blocking(|| stack.daemon.restart());
    let expected: HashMap<String, Expected> = last
        .into_iter()
        .map(|(id, kind)| {
            let last = if kind == shared::command::CommandKind::Start { "start" } else { "stop" };
            (id, Expected { last, paired: false })
        })
        .collect();
    settled(&stack, &key, &expected, Duration::from_secs(60)).await;
    assert_streams_bounded(&stack, 0).await;
    let raw: String = redis::AsyncCommands::get(&mut conn, shared::keys::session(&org, &ids[0])).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&raw).unwrap()["_applied"], 300 / ids.len(), "every command of the session was applied");
}

/// A temporary ban is kept in Redis, so neither a `:restart`, nor a daemon stopped (SIGTERM) or
/// killed (-9) and started again while it holds, reconnects early (WhatsApp would see a banned
/// number come back): the session waits, its outbox paused, until the ban lifts, then connects
/// and sends.
#[tokio::test(flavor = "multi_thread")]
async fn a_ban_outlives_restarts_of_the_session_and_its_daemon() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let (id, _) = stack.paired_session(&key, "61412345699").await;
    stack.phone("ban", &[("session", &id), ("secs", "9")]).await;
    let paused = stack.row_until(&key, &id, SOON, |row| row["statusReason"].as_str().is_some_and(|r| r.starts_with("temporary_ban"))).await;
    let lifts_at: i64 = paused["statusReason"].as_str().unwrap().rsplit_once("lifts at ").unwrap().1.parse().unwrap();
    let text = stack.client.post(&stack.session_url(&id, "/messages"), &key, r#"{"to": "61400000002", "text": "after the ban"}"#).await;
    assert_eq!(text.status, 202, "{}", text.body);
    let message_url = stack.session_url(&id, &format!("/messages/{}", text.body["id"].as_str().unwrap()));

    act(&stack, &key, &id, "restart").await;
    blocking(|| stack.daemon.terminate());
    blocking(|| stack.daemon.restart());
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocking(|| stack.daemon.kill());
    blocking(|| stack.daemon.restart());
    // Until the ban lifts the session stays `starting`, with the ban as its reason.
    while shared::time::now_millis() < lifts_at - 500 {
        let row = stack.client.get(&stack.session_url(&id, ""), &key).await.body;
        assert_ne!(row["status"], "working", "reconnected before the ban lifted at {lifts_at}: {row}");
        assert_eq!(stack.client.get(&message_url, &key).await.body["status"], "queued", "nothing goes out while banned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lifted = stack.row_until(&key, &id, SOON, |row| row["status"] == "working").await;
    assert!(lifted["lastConnectedAt"].as_i64().unwrap() >= lifts_at - 50, "{lifted}");
    wait_for("the queued message goes out once the ban lifted", SOON, async || {
        stack.client.get(&message_url, &key).await.body["status"] != "queued"
    }).await;

    // A ban is the number's: after a logout, the session pairs again at once.
    stack.phone("ban", &[("session", &id), ("secs", "600")]).await;
    stack.row_until(&key, &id, SOON, |row| row["statusReason"].as_str().is_some_and(|r| r.starts_with("temporary_ban"))).await;
    act(&stack, &key, &id, "logout").await;
    stack.status_until(&key, &id, "stopped", SOON).await;
    act(&stack, &key, &id, "start").await;
    stack.status_until(&key, &id, "scan_qr_code", SOON).await;
}
