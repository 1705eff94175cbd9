//! Progress while running: a bar on a terminal, a plain line every few seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, lines otherwise.
    Auto,
    Bar,
    Lines,
    Off,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    started: Instant,
    last: Instant,
    every: Duration,
    what: &'static str,
}

impl Progress {
    /// `total` is the number of units expected, when known.
    pub fn new(mode: ProgressMode, total: Option<u64>, what: &'static str) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let (bar, lines) = match mode {
            ProgressMode::Off => (false, false),
            ProgressMode::Lines => (false, true),
            ProgressMode::Bar => (true, false),
            ProgressMode::Auto => (terminal, !terminal),
        };
        let bar = bar.then(|| {
            let b = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}"
            } else {
                "{elapsed_precise} {spinner} {pos} {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        let now = Instant::now();
        Progress {
            bar,
            lines,
            started: now,
            last: now,
            every: Duration::from_secs(5),
            what,
        }
    }

    /// Reports `done` units; `detail` is called only when something is shown.
    pub fn update(&mut self, done: u64, detail: impl FnOnce() -> String) {
        let now = Instant::now();
        if let Some(b) = &self.bar {
            if now.duration_since(self.last) >= Duration::from_millis(200) {
                self.last = now;
                b.set_position(done);
                let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                b.set_message(format!("{} ({rate:.0}/s) {}", self.what, detail()));
            }
        } else if self.lines && now.duration_since(self.last) >= self.every {
            self.last = now;
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "progress: {done} {} in {secs:.0}s ({:.0}/s) {}",
                self.what,
                done as f64 / secs,
                detail()
            );
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
