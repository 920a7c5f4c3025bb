//! The server's own work per transaction, apart from the kernel and crypto:
//! frame → the server's one transaction function (parse, authorize, apply,
//! encode) → and the log line's escaping.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use wwep::acl::Peer;
use wwep::connection::{Policy, transact};
use wwep::protocol::{Escaped, Frame, frame, frame_final};
use wwep::store::RegisterStore;

fn transaction(store: &RegisterStore, bytes: &[u8]) -> usize {
    let (len, terminator) = match frame(bytes) {
        Frame::Complete {
            message_len,
            terminator,
        } => (message_len, terminator),
        // As the server does once the gap has passed.
        _ => frame_final(bytes),
    };
    let client = Peer {
        addr: std::net::Ipv4Addr::LOCALHOST.into(),
        certificate: None,
    };
    transact(&bytes[..len], terminator, &client, store, &Policy::OPEN)
        .encoded
        .as_bytes()
        .len()
}

fn hot_path(c: &mut Criterion) {
    let store = RegisterStore::new();
    for d in 0..1000u16 {
        store.write(d, (d % 256) as u8, d).unwrap();
    }
    c.bench_function("write W0FAC0B1234", |b| {
        b.iter(|| transaction(&store, black_box(b"W0FAC0B1234")))
    });
    c.bench_function("read R01F4F4 (hit)", |b| {
        b.iter(|| transaction(&store, black_box(b"R01F4F4\n")))
    });
    c.bench_function("read RFFFFFF (miss)", |b| {
        b.iter(|| transaction(&store, black_box(b"RFFFFFF\r\n")))
    });
    c.bench_function("illegal W01234", |b| {
        b.iter(|| transaction(&store, black_box(b"W01234\n")))
    });
    c.bench_function("log escaping", |b| {
        let mut out = String::with_capacity(64);
        b.iter(|| {
            out.clear();
            std::fmt::Write::write_fmt(
                &mut out,
                format_args!("{}", Escaped(black_box(b"W0FAC0B1234\r\n"))),
            )
            .unwrap();
            out.len()
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
