//! When a native process (the host, the daemon) should stop: SIGTERM, SIGINT, or, when its
//! supervisor asks for it, standard input closing (a supervisor or test that dies takes the
//! process with it).

use std::future::Future;
use tokio::signal::unix::{SignalKind, signal};

/// Installs the signal handlers now and answers a future that ends on the first of them.
/// Installing before the process announces itself matters: a supervisor may send SIGTERM the
/// moment it reads the announcement, and a signal with no handler yet kills the process unclean.
pub fn signal_or_stdin_close(stop_on_stdin_close: bool) -> std::io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let stdin_closed = async {
            if !stop_on_stdin_close {
                return std::future::pending().await;
            }
            let (closed, on_close) = tokio::sync::oneshot::channel();
            // A plain thread: a blocked read must not hold up the runtime's shutdown.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                let _ = closed.send(());
            });
            let _ = on_close.await;
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            () = stdin_closed => {}
        }
    })
}
