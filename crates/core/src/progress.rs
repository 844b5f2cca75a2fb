//! Transfer progress on stderr. Concourse's log is not a terminal: there, a line every few
//! seconds with each unfinished layer's bytes and the overall throughput, and one line per
//! layer when it completes. On a terminal, one bar per layer, redrawn in place.
//!
//! Progress is written straight to stderr (not through `tracing`), so a redraw never
//! interleaves with a half-written log line of ours; the library still never touches stdout.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines in plain mode come this often.
const LINE_INTERVAL: Duration = Duration::from_secs(5);
const BAR_INTERVAL: Duration = Duration::from_millis(200);

struct Layer {
    name: String,
    size: u64,
    done: AtomicU64,
    finished: Mutex<Option<Instant>>,
}

struct Shared {
    layers: Vec<Layer>,
    started: Instant,
    stop: AtomicBool,
    terminal: bool,
    /// Serialises bar redraws with completion lines.
    out: Mutex<usize>,
}

/// Progress of a set of blob downloads; dropping it stops the reporter.
pub(crate) struct Progress {
    shared: Arc<Shared>,
    reporter: Option<std::thread::JoinHandle<()>>,
}

/// The handle a download reports to.
#[derive(Clone)]
pub(crate) struct LayerProgress {
    shared: Arc<Shared>,
    index: usize,
}

impl Progress {
    /// `layers`: a display name (short digest) and size for each blob.
    pub(crate) fn start(layers: Vec<(String, u64)>) -> Progress {
        let terminal = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let total: u64 = layers.iter().map(|l| l.1).sum();
        let count = layers.len();
        let shared = Arc::new(Shared {
            layers: layers
                .into_iter()
                .map(|(name, size)| Layer {
                    name,
                    size,
                    done: AtomicU64::new(0),
                    finished: Mutex::new(None),
                })
                .collect(),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            terminal,
            out: Mutex::new(0),
        });
        eprintln!("fetching {count} layers, {}", human(total));
        let reporter = {
            let shared = shared.clone();
            std::thread::spawn(move || report(&shared))
        };
        Progress {
            shared,
            reporter: Some(reporter),
        }
    }

    pub(crate) fn layer(&self, index: usize) -> LayerProgress {
        LayerProgress {
            shared: self.shared.clone(),
            index,
        }
    }

    /// Stops the reporter and prints the summary line.
    pub(crate) fn finish(mut self) {
        self.stop();
        let s = &self.shared;
        let done: u64 = s
            .layers
            .iter()
            .map(|l| l.done.load(Ordering::Relaxed))
            .sum();
        let secs = s.started.elapsed().as_secs_f64();
        eprintln!(
            "fetched {} in {secs:.1}s ({}/s)",
            human(done),
            human((done as f64 / secs.max(0.001)) as u64)
        );
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reporter.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

impl LayerProgress {
    /// Bytes of this blob received so far (a restarted download reports less again).
    pub(crate) fn set(&self, bytes: u64) {
        self.shared.layers[self.index]
            .done
            .store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn finished(&self) {
        let s = &self.shared;
        let layer = &s.layers[self.index];
        *layer.finished.lock().expect("not poisoned") = Some(Instant::now());
        if !s.terminal {
            let secs = s.started.elapsed().as_secs_f64();
            let _guard = s.out.lock().expect("not poisoned");
            eprintln!(
                "fetched layer {} ({}) after {secs:.1}s",
                layer.name,
                human(layer.size)
            );
        }
    }
}

fn report(s: &Shared) {
    let interval = if s.terminal {
        BAR_INTERVAL
    } else {
        LINE_INTERVAL
    };
    let mut next = Instant::now() + interval;
    while !s.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next += interval;
        if s.terminal {
            draw_bars(s);
        } else {
            print_line(s);
        }
    }
    if s.terminal {
        draw_bars(s);
    }
}

fn print_line(s: &Shared) {
    let secs = s.started.elapsed().as_secs_f64();
    let done: u64 = s
        .layers
        .iter()
        .map(|l| l.done.load(Ordering::Relaxed))
        .sum();
    let total: u64 = s.layers.iter().map(|l| l.size).sum();
    let open: Vec<String> = s
        .layers
        .iter()
        .filter(|l| l.finished.lock().expect("not poisoned").is_none())
        .filter(|l| l.done.load(Ordering::Relaxed) > 0)
        .map(|l| {
            format!(
                "{} {}/{}",
                l.name,
                human(l.done.load(Ordering::Relaxed)),
                human(l.size)
            )
        })
        .collect();
    let _guard = s.out.lock().expect("not poisoned");
    eprintln!(
        "{} of {} ({}/s){}{}",
        human(done),
        human(total),
        human((done as f64 / secs.max(0.001)) as u64),
        if open.is_empty() { "" } else { "; in flight: " },
        open.join(", ")
    );
}

fn draw_bars(s: &Shared) {
    let mut drawn = s.out.lock().expect("not poisoned");
    let mut out = String::new();
    if *drawn > 0 {
        out.push_str(&format!("\x1b[{}A", *drawn));
    }
    for l in &s.layers {
        let done = l.done.load(Ordering::Relaxed).min(l.size.max(1));
        let width = 30;
        let filled = (done as f64 / l.size.max(1) as f64 * width as f64) as usize;
        out.push_str(&format!(
            "\x1b[2K{} [{}{}] {}/{}\n",
            l.name,
            "=".repeat(filled),
            " ".repeat(width - filled.min(width)),
            human(done),
            human(l.size)
        ));
    }
    *drawn = s.layers.len();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(out.as_bytes());
    let _ = err.flush();
}

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(742 * 1024 * 1024), "742.0 MiB");
    }
}
