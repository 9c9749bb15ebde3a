//! Progress on the terminal: a progress bar (step, loss, pairs/s, time left) when
//! stderr is a terminal, plain periodic lines otherwise, so CI logs stay readable.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use siamese_train::{EvalRecord, Reporter, StepRecord};

/// Prints training progress to stderr.
pub struct Printer {
    bar: Option<ProgressBar>,
    started: std::time::Instant,
}

impl Printer {
    /// A bar on a terminal, lines elsewhere.
    pub fn new() -> Self {
        Self {
            bar: None,
            started: std::time::Instant::now(),
        }
    }

    fn bar(&mut self, total: u64) -> Option<&ProgressBar> {
        if self.bar.is_none() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}, {eta} left]",
                )
                .expect("a valid template"),
            );
            self.bar = Some(bar);
        }
        self.bar.as_ref()
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Reporter for Printer {
    fn step(&mut self, r: &StepRecord, total: u64) {
        let msg = format!(
            "loss {:.4}  lr {:.2e}  {:.0} pairs/s  {:.2} steps/s",
            r.loss, r.lr, r.pairs_per_s, r.steps_per_s
        );
        let elapsed = self.started.elapsed().as_secs_f64();
        match self.bar(total) {
            Some(bar) => {
                bar.set_position(r.step);
                bar.set_message(msg);
            }
            None => eprintln!("step {:>6}/{total}  {msg}  ({elapsed:.0} s)", r.step),
        }
    }

    fn eval(&mut self, r: &EvalRecord) {
        let line = format!(
            "step {:>6} validation: ROC AUC {:.4}, EER {:.2}%, accuracy {:.2}%",
            r.step,
            r.validation.roc_auc,
            100.0 * r.validation.eer,
            100.0 * r.validation.best_accuracy
        );
        self.note(&line);
    }

    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}
