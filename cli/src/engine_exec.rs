//! How the `snapjournal` front finds and becomes `snapjournal-engine`, and
//! how both end.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// The engine's file name.
pub const ENGINE_NAME: &str = "snapjournal-engine";

/// Where the engine is: `$SNAPJOURNAL_ENGINE` if set, else beside the
/// running executable.
pub fn engine_path() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SNAPJOURNAL_ENGINE") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(ENGINE_NAME))
}

/// Replaces this process with the engine, same arguments and environment
/// (the process id stays: whoever waits for or signals the CLI reaches the
/// engine). Returns only on failure, with the reason; nothing was done.
pub fn exec_engine() -> anyhow::Error {
    let path = match engine_path() {
        Ok(p) => p,
        Err(e) => {
            return anyhow::anyhow!("cannot find where snapjournal runs from ({e}); nothing was changed")
        }
    };
    let err = std::process::Command::new(&path)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!(
        "cannot run {} ({err}); it is installed beside snapjournal (or named by $SNAPJOURNAL_ENGINE); nothing was changed",
        path.display()
    )
}

/// The process's exit code for a command's outcome: its own code, or 1
/// with the error reported (human or `--json`) on `out`.
pub fn exit_code(
    outcome: anyhow::Result<i32>,
    cli: &crate::commands::Cli,
    out: &crate::output::Out,
) -> std::process::ExitCode {
    match outcome {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            out.failed(&crate::api::ApiError::classify(&e, cli.cmd.domain()));
            std::process::ExitCode::from(1)
        }
    }
}
