//! What each transaction costs the record: the counters and the latency
//! histogram (always kept), and the live page's activity record (with
//! `--http`), alone and from two threads at once.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use wwep::activity::{Activity, Transaction};
use wwep::metrics::Metrics;
use wwep::protocol::{Reply, Transport};

/// What the record does for an answered write with `--http`.
#[derive(Default)]
struct Observer {
    metrics: Metrics,
    activity: Activity,
}

impl Observer {
    fn transaction(&self, tx: &Transaction<'_>) {
        let took = std::time::Duration::from_micros(tx.micros);
        let n = self
            .metrics
            .answered(tx.port, tx.request, &tx.verdict, took);
        self.activity.record(&Transaction { n, ..*tx });
    }
}

fn write(n: u64) -> Transaction<'static> {
    Transaction {
        n,
        port: Transport::Plain,
        peer: "127.0.0.1:40000".parse().unwrap(),
        request: b"W0FAC0B1234",
        reply: b"A0FAC0B1234",
        verdict: Reply::Accepted {
            device: 0x0FAC,
            register: 0x0B,
            value: 0x1234,
        },
        micros: 80,
    }
}

fn observer(c: &mut Criterion) {
    let observer = Observer::default();
    let tx = write(1);
    c.bench_function("observe one write", |b| {
        b.iter(|| observer.transaction(black_box(&tx)))
    });
    // Two threads (the machine's cores) hitting the same counters and lock.
    let shared = Arc::new(Observer::default());
    c.bench_function("observe one write, two threads contending", |b| {
        b.iter_custom(|iters| {
            let other = {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let tx = write(2);
                    let started = std::time::Instant::now();
                    for _ in 0..iters {
                        shared.transaction(&tx);
                    }
                    started.elapsed()
                })
            };
            let started = std::time::Instant::now();
            for _ in 0..iters {
                shared.transaction(black_box(&tx));
            }
            let mine = started.elapsed();
            mine.max(other.join().unwrap())
        })
    });
}

criterion_group!(benches, observer);
criterion_main!(benches);
