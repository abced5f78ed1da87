//! Progress reporting: indicatif bars on a terminal, JSON Lines with `--progress=json`, nothing
//! otherwise. Library code reports through [`Progress`] and never knows which one is active.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, nothing when stderr is not a terminal.
    #[default]
    Auto,
    /// JSON Lines on stderr: `{"step":…,"done":…,"total":…}`.
    Json,
    /// Nothing.
    None,
}

/// A progress sink that can be cloned into worker code.
#[derive(Clone)]
pub struct Progress {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Quiet,
    Bars,
    Json(Arc<Mutex<Box<dyn Write + Send>>>),
}

impl Progress {
    /// Resolves `auto` against whether stderr is a terminal.
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::None => Mode::Quiet,
            ProgressMode::Auto if std::io::stderr().is_terminal() => Mode::Bars,
            ProgressMode::Auto => Mode::Quiet,
            ProgressMode::Json => Mode::Json(Arc::new(Mutex::new(Box::new(std::io::stderr())))),
        };
        Progress { mode }
    }

    /// Reports nothing (library tests, nested steps).
    pub fn quiet() -> Self {
        Progress { mode: Mode::Quiet }
    }

    /// JSON Lines into any writer (tests).
    pub fn json_to(w: Box<dyn Write + Send>) -> Self {
        Progress {
            mode: Mode::Json(Arc::new(Mutex::new(w))),
        }
    }

    /// Starts a step of `total` bytes (0 if unknown).
    pub fn step(&self, name: &str, total: u64) -> Step {
        let bar = match &self.mode {
            Mode::Bars => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_message(name.to_string());
                Some(bar)
            }
            _ => None,
        };
        let step = Step {
            name: name.to_string(),
            total,
            done: 0,
            last_emit: 0,
            bar,
            progress: self.clone(),
        };
        step.emit(false);
        step
    }

    fn emit_json(&self, step: &str, done: u64, total: u64, finished: bool) {
        if let Mode::Json(w) = &self.mode {
            let line = serde_json::json!({
                "step": step, "done": done, "total": total, "finished": finished,
            });
            if let Ok(mut w) = w.lock() {
                // Progress is advisory: a closed stderr must not fail the build.
                let _ = writeln!(w, "{line}");
            }
        }
    }
}

/// One step in progress; finishes when dropped.
pub struct Step {
    name: String,
    total: u64,
    done: u64,
    last_emit: u64,
    bar: Option<ProgressBar>,
    progress: Progress,
}

impl Step {
    /// Adds `n` bytes done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        // Keep JSON output to about a hundred lines per step.
        let every = (self.total / 100).max(1 << 20);
        if self.done - self.last_emit >= every {
            self.last_emit = self.done;
            self.emit(false);
        }
    }

    /// Sets the total when it becomes known.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    fn emit(&self, finished: bool) {
        self.progress
            .emit_json(&self.name, self.done, self.total, finished);
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.emit(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_start_and_finish() {
        let buf = Shared::default();
        let p = Progress::json_to(Box::new(buf.clone()));
        {
            let mut s = p.step("ext4", 10);
            s.inc(10);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.first().unwrap()["done"], 0);
        let last = lines.last().unwrap();
        assert_eq!(last["step"], "ext4");
        assert_eq!(last["done"], 10);
        assert_eq!(last["finished"], true);
    }
}
