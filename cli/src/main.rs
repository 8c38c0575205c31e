//! `snapjournal`: crash-safe, journaled snapshot transactions for QEMU
//! virtual machines. virsh-like verbs, human or `--json` output.
//!
//! This front is small on purpose: it links neither libvirt nor the
//! journal's store, so it starts in a few milliseconds (loading libvirt's
//! fifty-odd shared libraries alone takes longer than a snapshot through a
//! server). When a server (`snapjournal serve`) holds the state directory,
//! the command goes through its socket; otherwise, and for `serve` and
//! `demo`, the front replaces itself (`exec`, same process id, same
//! environment) with `snapjournal-engine`, installed beside it, which
//! opens the state directory itself.

use std::process::ExitCode;

use clap::Parser;
use snapjournal::commands::{Cli, Cmd};
use snapjournal::engine_exec::{exec_engine, exit_code};
use snapjournal::output::Out;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out::stdio(cli.json);
    let code = match &cli.cmd {
        Cmd::Serve { .. } | Cmd::Demo { .. } => Err(exec_engine()),
        _ => match snapjournal::client::Client::connect_if_served(&cli.state_dir) {
            Ok(Some(c)) => snapjournal::client::run_through(c, &cli, &out),
            Ok(None) => Err(exec_engine()),
            Err(e) => Err(e),
        },
    };
    exit_code(code, &cli, &out)
}
