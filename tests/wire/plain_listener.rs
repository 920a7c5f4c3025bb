//! The open port: the spec's sequence, every framing rule, concurrency and hostile
//! input, driven by std sockets against a real server on ephemeral ports.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use wwep::config::ServerConfig;
use wwep::protocol::ErrorDetail;

#[test]
fn spec_sequence() {
    let s = TestServer::start();
    s.plain_replies(&[
        // Nothing exists before the first write.
        (b"R0FAC0B", b"X"),
        (b"W0FAC0B1234", b"A0FAC0B1234"),
        (b"R0FAC0B", b"A0FAC0B1234"),
        (b"W01234", b"X"),
        (b"w0FAC0B1234\n", b"X\n"),
        (b"R0FAC0G\n", b"X\n"),
        // Devices have separate register sets.
        (b"W1234050001", b"A1234050001"),
        (b"WABCD050002", b"AABCD050002"),
        (b"R123405", b"A1234050001"),
        (b"Rabcd05", b"AABCD050002"),
        // Lowercase hex is accepted; replies are uppercase and zero-padded.
        (b"W0fac0b00ff", b"A0FAC0B00FF"),
    ]);
    // Counted as the transaction is logged, just after the reply has gone.
    assert!(eventually(Duration::from_secs(2), || s
        .server()
        .stats()
        .transactions
        == 11));
}

#[test]
fn explained_errors() {
    let s = TestServer::with(|c| c.error_detail = ErrorDetail::Explained);
    for (request, why) in [
        ("R0FAC0B", "not found"),
        ("W01234", "bad length"),
        ("W0FAC0BXYZW", "bad hex"),
        ("Q0FAC0B", "bad command"),
    ] {
        let reply = s.plain_transact(format!("{request}\n").as_bytes());
        assert_eq!(String::from_utf8_lossy(&reply), format!("X {why}\n"));
    }
}

#[test]
fn terminators_are_echoed() {
    let s = TestServer::start();
    assert_eq!(s.plain_transact(b"W0FAC0B1234\n"), b"A0FAC0B1234\n");
    for end in ["\r\n", "\n", ""] {
        let reply = s.plain_transact(format!("R0FAC0B{end}").as_bytes());
        assert_eq!(reply, format!("A0FAC0B1234{end}").as_bytes(), "{end:?}");
    }
}

#[test]
fn device_client_without_terminator_or_close_gets_its_reply_within_500ms() {
    let s = TestServer::start();
    answered_within_500ms(&s, b"W0FAC0B1234", b"A0FAC0B1234");
    answered_within_500ms(&s, b"R0FAC0B", b"A0FAC0B1234");
}

#[test]
fn short_illegal_message_without_terminator_is_answered_promptly() {
    answered_within_500ms(&TestServer::start(), b"W01234", b"X");
}

/// Sends `request` with neither a terminator nor a close, as a device does,
/// and expects `want` within 500 ms.
fn answered_within_500ms(s: &TestServer, request: &[u8], want: &[u8]) {
    let mut c = connect(s.plain());
    c.write_all(request).unwrap();
    let reply = read_exact_within(&mut c, want.len(), Duration::from_millis(500));
    assert_eq!(reply, want, "{:?}", String::from_utf8_lossy(request));
}

/// A first byte that is no command is answered at once: with a 3 s gap, the
/// `X` still comes long before the gap could have ended.
#[test]
fn a_lowercase_command_is_answered_without_the_gap() {
    let s = TestServer::with(|c| {
        c.gap = Duration::from_secs(3);
        c.timeout = Duration::from_secs(10);
    });
    let mut c = connect(s.plain());
    let started = Instant::now();
    c.write_all(b"w0fac0b1234").unwrap();
    let mut reply = [0u8; 1];
    c.read_exact(&mut reply).expect("a reply");
    assert_eq!(&reply, b"X");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "X after {:?}: the gap was waited",
        started.elapsed()
    );
}

#[test]
fn half_close_ends_the_message() {
    let s = TestServer::with(|c| c.gap = Duration::from_secs(3));
    assert_eq!(s.plain_transact(b"W0FAC0B1234"), b"A0FAC0B1234");
    for (request, want) in [(&b"R0FAC0B"[..], &b"A0FAC0B1234"[..]), (b"R0FAC", b"X")] {
        let mut c = connect(s.plain());
        c.write_all(request).unwrap();
        half_close(&c);
        let started = Instant::now();
        assert_eq!(read_to_close(&mut c), want);
        // Answered at the end of file, not after the 3 s gap timer.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn message_split_across_two_writes() {
    // A gap far longer than the pause, so a busy machine cannot stretch the
    // pause past it.
    let s = TestServer::with(|c| c.gap = Duration::from_secs(2));
    for (first, rest, want) in [
        (&b"W0FAC"[..], &b"0B4321\n"[..], &b"A0FAC0B4321\n"[..]),
        (b"R0FAC0B\r", b"\n", b"A0FAC0B4321\r\n"),
    ] {
        let mut c = connect(s.plain());
        c.set_nodelay(true).unwrap();
        c.write_all(first).unwrap();
        thread::sleep(Duration::from_millis(30));
        c.write_all(rest).unwrap();
        assert_eq!(read_to_close(&mut c), want);
    }
}

#[test]
fn overlong_message_in_one_segment_is_x_and_not_stored() {
    let s = TestServer::start();
    assert_eq!(s.plain_transact(b"W0FAC0B12345"), b"X");
    assert_eq!(s.plain_transact(b"R0FAC0B"), b"X");
}

#[test]
fn trailing_garbage_still_gets_its_reply() {
    let s = TestServer::start();
    let mut request = b"W0FAC0B1234\n".to_vec();
    request.extend(std::iter::repeat_n(b'g', 4000));
    assert_eq!(s.plain_transact(&request), b"A0FAC0B1234\n");
    assert_eq!(
        s.plain_transact(b"R0FAC0B\ngarbage\nmore"),
        b"A0FAC0B1234\n"
    );
}

#[test]
fn garbage_and_oversize_input_get_x_and_the_server_stays_healthy() {
    let s = TestServer::start();
    let inputs: Vec<Vec<u8>> = vec![
        vec![0u8; 10],
        vec![0xFF; 100],
        b"\r\n".to_vec(),
        b"\n".to_vec(),
        vec![b'Z'; 10_000],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"R\xc3\xa9\xc3\xa9\xc3\xa9\n".to_vec(),
    ];
    for input in &inputs {
        let reply = s.plain_transact(input);
        assert_eq!(
            reply.first(),
            Some(&b'X'),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        assert!(reply.len() <= 3);
    }
    assert_eq!(s.plain_transact(b"W0000000001"), b"A0000000001");
}

#[test]
fn silent_connection_gets_x_after_the_timeout() {
    let s = TestServer::with(|c| c.timeout = Duration::from_millis(300));
    let c = &mut connect(s.plain());
    let started = Instant::now();
    let reply = read_to_close(c);
    let waited = started.elapsed();
    assert_eq!(reply, b"X");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert_eq!(s.server().stats().transactions, 0);
}

#[test]
fn tls_hello_on_the_plain_port_is_refused_and_the_server_stays_healthy() {
    let s = TestServer::start();
    let attempt = s.pki.connector().connect("localhost", connect(s.plain()));
    assert!(
        attempt.is_err(),
        "a TLS handshake cannot succeed on the open port"
    );
    assert_eq!(s.plain_transact(b"W0FAC0B0001"), b"A0FAC0B0001");
    assert_eq!(s.tls_transact(b"R0FAC0B"), b"A0FAC0B0001");
}

#[test]
fn concurrent_clients_write_distinct_registers_then_read_them_back() {
    // All 64 come from 127.0.0.1: above the default per-address limit of 32,
    // which has its own tests.
    let s = TestServer::with(|c| c.max_per_ip = 64);
    let plain = s.plain();
    let writers: Vec<_> = (0..64u16)
        .map(|i| {
            thread::spawn(move || {
                let device = 0x1000 + i;
                let register = (i * 3) as u8;
                let value = i.wrapping_mul(0x0101);
                let request = format!("W{device:04X}{register:02X}{value:04X}");
                let reply = transact(&mut connect(plain), request.as_bytes());
                assert_eq!(
                    reply,
                    format!("A{device:04X}{register:02X}{value:04X}").as_bytes()
                );
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(s.server().store().unwrap().len(), 64);
    for i in 0..64u16 {
        let device = 0x1000 + i;
        let register = (i * 3) as u8;
        let value = i.wrapping_mul(0x0101);
        let reply = s.plain_transact(format!("R{device:04X}{register:02X}").as_bytes());
        assert_eq!(
            reply,
            format!("A{device:04X}{register:02X}{value:04X}").as_bytes()
        );
    }
}

/// A server with room for two connections, two workers and a 3 s timeout.
fn room_for_two(also: impl FnOnce(&mut ServerConfig)) -> TestServer {
    TestServer::with(|c| {
        c.max_connections = 2;
        c.workers = Some(2);
        c.timeout = Duration::from_secs(3);
        also(c);
    })
}

#[test]
fn a_full_table_sheds_the_oldest_silent_connection_for_a_newcomer() {
    let s = room_for_two(|_| {});
    // Two silent connections fill the table.
    let mut oldest = connect(s.plain());
    assert!(s.in_flight_becomes(1, Duration::from_secs(2)));
    let _younger = connect(s.plain());
    assert!(s.in_flight_becomes(2, Duration::from_secs(2)));
    let started = Instant::now();
    // A board arriving now is served; the oldest silent connection makes room.
    assert_eq!(s.plain_transact(b"W0FAC0B0001"), b"A0FAC0B0001");
    assert_eq!(read_to_close(&mut oldest), b"X");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shed before its timeout"
    );
    let stats = s.stats_when(|st| st.shed >= 1);
    assert_eq!((stats.shed, stats.rejected), (1, 0));
}

#[test]
fn a_table_full_of_unfinished_messages_refuses_at_once_with_x() {
    if !have_tool("ss") {
        return;
    }
    let s = room_for_two(|c| c.gap = Duration::from_secs(3));
    // Two started messages fill the server: nobody is silent, nobody is shed.
    let mut holders = [connect(s.plain()), connect(s.plain())];
    for h in &mut holders {
        h.write_all(b"R0").unwrap();
    }
    assert!(s.in_flight_becomes(2, Duration::from_secs(2)));
    // The server must have read the holders' bytes (until then they count as
    // silent, and a newcomer would shed one). It does not say so itself; the
    // kernel does: both bytes arrived on its side of each holder's
    // connection, and none is left unread.
    let holder_ports: Vec<u16> = holders
        .iter()
        .map(|h| h.local_addr().unwrap().port())
        .collect();
    let mut queues = Vec::new();
    let read = eventually(Duration::from_secs(5), || {
        queues = tcp_queues(s.plain().port());
        let read = |port: &u16| {
            let mine = queues.iter().find(|q| q.peer.port() == *port);
            mine.is_some_and(|q| q.received == 2 && q.unread == 0)
        };
        holder_ports.iter().all(read)
    });
    assert!(read, "the holders' bytes were not read: {queues:?}");
    let started = Instant::now();
    let mut refused = connect(s.plain());
    refused.write_all(b"R0FAC0B").unwrap();
    assert_eq!(read_to_close(&mut refused), b"X");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused before the timeout"
    );
    // The TLS port closes without a handshake.
    let tcp = connect(s.tls());
    assert!(s.pki.connector().connect("localhost", tcp).is_err());
    let stats = s.stats_when(|st| st.rejected >= 2);
    assert_eq!((stats.rejected, stats.shed), (2, 0));
    drop(holders);
    // Once the holders are gone, service resumes.
    assert!(s.in_flight_becomes(0, Duration::from_secs(5)));
    assert_eq!(s.plain_transact(b"W0FAC0B0002"), b"A0FAC0B0002");
}

#[test]
fn reply_survives_a_client_that_keeps_sending() {
    // The server must read what follows the message, or its close would reset the
    // connection and destroy the reply before the client reads it.
    let s = TestServer::start();
    let mut c = connect(s.plain());
    let mut request = b"W0FAC0B1234\n".to_vec();
    request.extend([b'.'; 2000]);
    c.write_all(&request).unwrap();
    // Let the reply and the close happen before the client reads anything:
    // the transaction is recorded once the server has closed the connection.
    let stats = s.stats_when(|st| st.transactions == 1);
    assert_eq!(stats.transactions, 1, "the server never closed");
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).expect("no reset");
    assert_eq!(reply, b"A0FAC0B1234\n");
    // A reset would leave its error pending on the socket.
    assert!(
        c.take_error().unwrap().is_none(),
        "the server reset the connection"
    );
}

#[test]
fn many_messages_whose_gaps_end_together_are_all_judged() {
    // The timer thread hands each connection whose gap has ended to the
    // workers one queue entry at a time: with two workers, a hundred entries
    // due at once must all be served, none left to wait for its deadline.
    let s = TestServer::with(|c| {
        c.workers = Some(2);
        c.gap = Duration::from_millis(300);
        c.timeout = Duration::from_secs(30);
    });
    let mut clients: Vec<_> = (0..100)
        .map(|_| {
            let mut c = connect(s.plain());
            c.write_all(b"R0FAC0").unwrap();
            c
        })
        .collect();
    let started = Instant::now();
    for c in &mut clients {
        assert_eq!(
            read_to_close(c),
            b"X",
            "judged as it stood at its gap's end"
        );
    }
    // Far below the 30 s deadline: each was judged when its gap ended.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        started.elapsed()
    );
    let stats = s.stats_when(|st| st.transactions >= 100);
    assert_eq!(stats.transactions, 100);
}

/// At a stop, connections that have sent nothing get their `X` at once (the
/// TLS port's are closed: no handshake happened), a started message is still
/// judged when its gap ends, and the stop waits for nothing longer.
#[test]
fn a_stop_answers_silent_connections_at_once_and_lets_a_started_message_finish() {
    let gap = Duration::from_secs(3);
    let s = TestServer::with(|c| {
        c.timeout = Duration::from_secs(20);
        c.gap = gap;
    });
    let (plain, tls) = (s.plain(), s.tls());
    let mut silent: Vec<_> = (0..3).map(|_| connect(plain)).collect();
    let mut silent_tls = connect(tls);
    let mut started = connect(plain);
    started.write_all(b"W0FAC").unwrap();
    let sent = Instant::now();
    assert!(s.in_flight_becomes(5, Duration::from_secs(10)));
    for c in silent.iter_mut().chain([&mut silent_tls, &mut started]) {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    }
    let stopping = Instant::now();
    let stop = thread::spawn(move || drop(s));
    for c in &mut silent {
        assert_eq!(read_to_close(c), b"X", "a silent connection at the stop");
    }
    let silent_answered = stopping.elapsed();
    let mut tls_bytes = Vec::new();
    let tls_end = silent_tls.read_to_end(&mut tls_bytes);
    assert!(
        tls_end.is_ok() || tls_end.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent TLS connection is closed"
    );
    assert!(tls_bytes.is_empty(), "{tls_bytes:?}");
    assert_eq!(read_to_close(&mut started), b"X", "judged as it stood");
    let judged = sent.elapsed();
    stop.join().expect("the stop");
    let stopped = stopping.elapsed();
    eprintln!(
        "silent answered after {silent_answered:?}, started judged after {judged:?}, stopped after {stopped:?}"
    );
    assert!(
        silent_answered < gap,
        "silent connections answered only after {silent_answered:?}"
    );
    assert!(
        judged >= gap - Duration::from_millis(200),
        "the started message was cut short at {judged:?}, before its gap ended"
    );
    assert!(
        stopped < Duration::from_secs(15),
        "the stop took {stopped:?}, towards the 20 s deadline"
    );
}
