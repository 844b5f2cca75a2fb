//! The decompression floor `ci/bench.sh` compares `in` against: inflates every gzip file
//! named on the command line to nothing, with the zlib-rs backend dockhand uses, on
//! `--threads N` threads (one file at a time per thread; default: every core), and prints
//! the uncompressed bytes and seconds. Not part of dockhand.
//!
//! `cargo run --release -p dockhand --example inflate -- --threads 2 layer1.gz layer2.gz`

use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

fn main() -> io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.first().map(String::as_str) == Some("--threads") && args.len() >= 2 {
        threads = args[1]
            .parse()
            .map_err(|_| io::Error::other("--threads takes a number"))?;
        args.drain(..2);
    }
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let total = AtomicU64::new(0);
    std::thread::scope(|scope| -> io::Result<()> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> io::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = args.get(i) else {
                            return Ok(());
                        };
                        let file = BufReader::with_capacity(256 << 10, std::fs::File::open(path)?);
                        let mut gz = flate2::bufread::MultiGzDecoder::new(file);
                        // Large reads, as `in` makes them: io::copy's 8 KiB ones cost a
                        // quarter more time in the inflater.
                        let mut buffer = vec![0u8; 256 << 10];
                        loop {
                            let n = gz.read(&mut buffer)?;
                            if n == 0 {
                                break;
                            }
                            total.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| io::Error::other("a thread panicked"))??;
        }
        Ok(())
    })?;
    println!(
        "{} bytes inflated on {threads} threads in {:.2} s",
        total.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
