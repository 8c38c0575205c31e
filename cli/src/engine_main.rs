//! `snapjournal-engine`: the `snapjournal` CLI with everything linked in
//! (the journal, QEMU, libvirt). The `snapjournal` front runs it, in the
//! same process, when no server answers on the state directory, and for
//! `serve` and `demo`; run by hand it does what `snapjournal` does. When a
//! server (`snapjournal serve`) holds the state directory, every command
//! goes through its socket with the same output and exit codes.

use std::process::ExitCode;

use clap::Parser;
use snapjournal::commands::{run_direct, Cli, Cmd};
use snapjournal::engine_exec::exit_code;
use snapjournal::output::Out;
use snapjournal::{client, server};

fn main() -> ExitCode {
    journal::crashpoint::init();
    let cli = Cli::parse();
    let out = Out::stdio(cli.json);
    let code = match &cli.cmd {
        Cmd::Serve {
            socket,
            group,
            stop_timeout,
            idle_timeout,
        } => server::run_foreground(
            &cli.state_dir,
            socket.clone(),
            group.as_deref(),
            std::time::Duration::from_secs(*stop_timeout),
            std::time::Duration::from_secs(*idle_timeout),
        ),
        // The demo works in a directory of its own, never through a server.
        Cmd::Demo { keep } => snapjournal::demo::run(&out, *keep),
        _ => match client::Client::connect_if_served(&cli.state_dir) {
            Ok(Some(c)) => client::run_through(c, &cli, &out),
            Ok(None) => run_direct(&cli, &out),
            Err(e) => Err(e),
        },
    };
    exit_code(code, &cli, &out)
}
