//! An agent that embeds the library and serves its state directory to the
//! CLI and to other clients (docs/API.md) until SIGTERM or Ctrl-C.
//!
//! `embedded_server STATE_DIR`

use snapjournal::{ServerOptions, Snapjournal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: embedded_server STATE_DIR")?;
    let sj = Snapjournal::open(&dir)?;
    let options = ServerOptions::for_state_dir(sj.dir());
    // The agent's own work would use `server.executor()`; here it only
    // serves.
    let server = sj.into_server();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        println!("serving {}", options.socket.display());
        server.serve(options, stop).await?;
        println!("stopped");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    drop(server);
    Ok(())
}
