//! Block-job progress: a bar on a terminal, JSON lines on stderr with
//! `--json`, nothing otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use executor::live::{JobProgress, ProgressFn};
use indicatif::{ProgressBar, ProgressStyle};

/// The progress callback for this invocation.
pub fn reporter(json: bool) -> ProgressFn {
    if json {
        return Box::new(|p: &JobProgress| {
            let line = serde_json::json!({"event": "progress", "progress": p});
            eprintln!("{line}");
        });
    }
    if !std::io::stderr().is_terminal() {
        return Box::new(|_| {});
    }
    let bar: Mutex<Option<(String, ProgressBar)>> = Mutex::new(None);
    Box::new(move |p: &JobProgress| {
        let mut g = bar.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().map(|(id, _)| id != &p.job).unwrap_or(true) {
            if let Some((_, b)) = g.take() {
                b.finish();
            }
            let b = ProgressBar::new(p.total.max(1));
            b.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_message(format!("{} {} ({})", p.kind, p.disk, p.job));
            *g = Some((p.job.clone(), b));
        }
        if let Some((_, b)) = g.as_ref() {
            b.set_length(p.total.max(1));
            b.set_position(p.current);
            if p.status == "concluded" {
                b.finish();
            }
        }
    })
}
