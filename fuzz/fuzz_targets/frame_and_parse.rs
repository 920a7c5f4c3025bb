//! Feeds arbitrary bytes, in arbitrary pieces, through the framer and parser the
//! server runs on every connection, checking the invariants they promise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wwep::protocol::{ErrorDetail, Frame, MAX_MESSAGE_BYTES, Reply, Request, frame, frame_final};

fuzz_target!(|data: &[u8]| {
    let input = &data[..data.len().min(MAX_MESSAGE_BYTES)];
    // Grow the buffer byte by byte, as reads may deliver it, until it is complete.
    let mut verdict = None;
    for end in 0..=input.len() {
        if let Frame::Complete {
            message_len,
            terminator,
        } = frame(&input[..end])
        {
            assert!(message_len <= end);
            verdict = Some((&input[..message_len], terminator));
            break;
        }
    }
    let (message, terminator) = verdict.unwrap_or_else(|| {
        let (len, t) = frame_final(input);
        assert!(len <= input.len());
        (&input[..len], t)
    });
    match Request::parse(message) {
        Ok(req) => {
            assert_eq!(Request::parse(req.encode().as_bytes()), Ok(req));
            let reply = match req {
                Request::Read { device, register } => Reply::Accepted {
                    device,
                    register,
                    value: 0,
                },
                Request::Write {
                    device,
                    register,
                    value,
                } => Reply::Accepted {
                    device,
                    register,
                    value,
                },
            };
            let wire = reply.encode(ErrorDetail::Bare, terminator);
            assert_eq!(Reply::parse(wire.as_bytes()), Some(reply));
        }
        Err(e) => {
            let wire = Reply::Failed(wwep::protocol::Failure::Protocol(e))
                .encode(ErrorDetail::Explained, terminator);
            assert_eq!(wire.as_bytes()[0], b'X');
        }
    }
    let _ = Reply::parse(data);
});
