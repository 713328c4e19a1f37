//! What every workflow needs first, installed or started when missing: the wasm target,
//! a Redis that answers, and fresh builds of the components and the host.

use crate::Result;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WASM_TARGET: &str = "wasm32-wasip2";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Cargo, in the workspace, with the environment of a shell. `cargo xtask` runs this binary
/// through `cargo run`, which sets `CARGO_MANIFEST_DIR` and the package's variables; build
/// scripts that watch one of them (ring's watches `CARGO_MANIFEST_DIR`) would otherwise see a
/// change between a `cargo xtask` build and a plain `cargo test`, and rebuild ring, rustls,
/// whatsapp-rust and wasmtime-wasi-http each time.
pub fn cargo() -> Command {
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(root());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO_MANIFEST_DIR" || name == "CARGO_MANIFEST_PATH" || name == "CARGO_PRIMARY_PACKAGE" || name == "CARGO_CRATE_NAME"
            || name == "CARGO_BIN_NAME" || name.starts_with("CARGO_PKG_")
        {
            command.env_remove(name.as_ref());
        }
    }
    command
}

fn run(command: &mut Command) -> Result {
    let status = command.status().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{command:?} failed with {status}").into()) }
}

fn ensure_wasm_target() -> Result {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output()?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == WASM_TARGET) {
        println!("xtask: adding the {WASM_TARGET} target");
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    Ok(())
}

/// The package names under `functions/`, each one component.
fn function_packages() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root().join("functions"))? {
        let manifest = std::fs::read_to_string(entry?.path().join("Cargo.toml"))?;
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .ok_or("a function's Cargo.toml has no name")?;
        names.push(name.trim_matches('"').to_owned());
    }
    names.sort();
    Ok(names)
}

pub fn build() -> Result {
    ensure_wasm_target()?;
    let mut components = cargo();
    components.args(["build", "--profile", "component", "--target", WASM_TARGET]);
    for name in function_packages()? {
        components.args(["-p", &name]);
    }
    run(&mut components)?;
    // All default members, exactly as `cargo test --release` resolves them: the host binary the
    // tests run is then the one built here, not a second build with other features.
    run(cargo().args(["build", "--release"]))
}

async fn ping(url: &str) -> bool {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Some(_)))
}

/// Debian's Chromium for the pairing page's browser test, installed when missing.
pub fn ensure_chromium() -> Result {
    if Command::new("chromium").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    println!("xtask: chromium is missing; installing Debian's chromium package for the browser test");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get").args(["install", "-y", "chromium"]).env("DEBIAN_FRONTEND", "noninteractive"))
        .map_err(|e| format!("cannot install chromium ({e}); install Debian's chromium package").into())
}

/// The schemathesis release the contract test (`tests/contract.rs`) runs: pinned, so a new
/// release's new checks arrive as a change of this line, not as a red build.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// schemathesis, in a virtualenv of its own under `target/schemathesis` (PyPI), made when
/// missing or of another version.
pub fn ensure_schemathesis() -> Result {
    let venv = root().join("target/schemathesis");
    let stamp = venv.join("installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == SCHEMATHESIS) {
        return Ok(());
    }
    println!("xtask: installing {SCHEMATHESIS} for the contract test");
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SCHEMATHESIS]))
        .map_err(|e| format!("cannot install {SCHEMATHESIS} ({e}); it needs Python 3.10+ with venv and PyPI"))?;
    Ok(std::fs::write(stamp, SCHEMATHESIS)?)
}

/// Starts a throwaway local Redis (no persistence) when none answers at `url`, installing the
/// Debian package first if needed.
pub async fn ensure_redis(url: &str) -> Result {
    if ping(url).await {
        return Ok(());
    }
    let parsed = redis::Client::open(url)?.get_connection_info().addr.clone();
    let redis::ConnectionAddr::Tcp(host, port) = parsed else {
        return Err(format!("Redis at {url} does not answer").into());
    };
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1") {
        return Err(format!("Redis at {url} does not answer, and it is not local, so xtask will not start one").into());
    }
    if Command::new("redis-server").arg("--version").output().is_err() {
        println!("xtask: redis-server is missing; installing Debian's redis-server package");
        let installed = run(Command::new("apt-get").arg("update"))
            .and_then(|()| run(Command::new("apt-get").args(["install", "-y", "redis-server"]).env("DEBIAN_FRONTEND", "noninteractive")));
        if let Err(e) = installed {
            return Err(format!("cannot install redis-server ({e}); install Redis 7 or set REDIS_URL to one that runs").into());
        }
    }
    let log = root().join(".gateway/redis.log");
    std::fs::create_dir_all(root().join(".gateway"))?;
    println!("xtask: starting redis-server on port {port}");
    run(Command::new("redis-server").args([
        "--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--daemonize", "yes", "--logfile", &log.to_string_lossy(),
    ]))?;
    for _ in 0..50 {
        if ping(url).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("started redis-server, but {url} still does not answer (see {})", log.display()).into())
}

pub fn host_command(redis_url: &str, listen: &str) -> Command {
    let root = root();
    let mut command = Command::new(root.join("target/release/gateway-host"));
    command
        .arg("--manifest").arg(root.join("spin.toml"))
        .arg("--listen").arg(listen)
        .arg("--cache-dir").arg(root.join(".gateway/cache"))
        // The host exits when xtask does, however xtask ends.
        .arg("--stop-on-stdin-close")
        .stdin(std::process::Stdio::piped())
        .env("SPIN_VARIABLE_REDIS_URL", redis_url);
    command
}

/// The connector daemon beside the host. It reads its own settings from the environment
/// (`BACKEND=simulator` for a demo without a phone, `GATEWAY_ID`, `DATA_DIR`).
pub fn daemon_command(redis_url: &str) -> Command {
    daemon_command_at(&root().join("target/release/connector-daemon"), redis_url)
}

/// [`daemon_command`] with another build of the daemon (a baseline, for `cargo xtask bench`).
pub fn daemon_command_at(binary: &std::path::Path, redis_url: &str) -> Command {
    let root = root();
    let mut command = Command::new(binary);
    command
        .arg("--stop-on-stdin-close")
        .stdin(std::process::Stdio::piped())
        .env("REDIS_URL", redis_url)
        .env("DATA_DIR", std::env::var("DATA_DIR").unwrap_or_else(|_| root.join(".gateway/daemon").to_string_lossy().into_owned()));
    command
}

/// Where the packed Spin 4.1 may be: `SPIN_ARCHIVE`, else the reference material beside the
/// checkout (`../shared/tools/`), else the same under `/work`.
fn spin_archive() -> Option<PathBuf> {
    const NAME: &str = "spin-4.1.0-pre0-x86_64-linux.xz";
    let candidates = [
        std::env::var_os("SPIN_ARCHIVE").map(PathBuf::from),
        Some(root().join("../shared/tools").join(NAME)),
        Some(PathBuf::from("/work/shared/tools").join(NAME)),
    ];
    candidates.into_iter().flatten().find(|path| path.is_file())
}

/// Real Spin 4.1, unpacked to `target/spin` when missing, then started once on the application
/// so its compilation cache is warm before tests start many at once. `false` when no copy of
/// Spin can be found (the Spin pass is then skipped, loudly).
pub async fn spin(redis_url: &str) -> Result<bool> {
    const SHA256: &str = "4d3f3d1001cc27dfd6fb7f5df3816e8057ea4533ab0f0624fb1f510e6aa5f03b";
    let binary = root().join("target/spin");
    let unpacked = std::fs::read(&binary).is_ok_and(|bytes| shared::secret::sha256_hex(&bytes) == SHA256);
    if !unpacked {
        let Some(packed) = spin_archive() else { return Ok(false) };
        println!("xtask: unpacking Spin from {}", packed.display());
        let output = Command::new("xz").arg("-dc").arg(&packed).output().map_err(|e| format!("cannot run xz: {e}"))?;
        if !output.status.success() || shared::secret::sha256_hex(&output.stdout) != SHA256 {
            return Err(format!("cannot unpack {} (xz: {})", packed.display(), String::from_utf8_lossy(&output.stderr)).into());
        }
        std::fs::write(&binary, &output.stdout)?;
        let mut permissions = std::fs::metadata(&binary)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&binary, permissions)?;
    }
    let listen = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let state = root().join("target/spin-state");
    let mut warm = Command::new(&binary)
        .args(["up", "--from"]).arg(root().join("spin.toml"))
        .args(["--listen", &listen, "--state-dir"]).arg(&state)
        .env("SPIN_VARIABLE_REDIS_URL", redis_url)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    // Compiling the components for the cache takes a while on a small machine (cold: minutes).
    let ready = wait_for_port_within(&listen, Duration::from_secs(300)).await;
    // SIGTERM, not SIGKILL: `spin up` runs the trigger as a child process and stops it on TERM.
    Command::new("kill").args(["-TERM", &warm.id().to_string()]).status()?;
    warm.wait()?;
    ready.map(|()| true)
}

pub async fn wait_for_port(addr: &str) -> Result {
    wait_for_port_within(addr, Duration::from_secs(10)).await
}

/// [`wait_for_port`] with its own patience: Spin compiles every component before it listens.
pub async fn wait_for_port_within(addr: &str, within: Duration) -> Result {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the host did not start listening on {addr} within {within:?}").into())
}
