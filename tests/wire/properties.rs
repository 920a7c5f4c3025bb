//! Property tests of the wire grammar: encode/parse round trips, framing of
//! every split, and no input up to 64 bytes can panic the parser or framer.

use proptest::prelude::*;
use wwep::protocol::{
    ErrorDetail, Frame, MAX_MESSAGE_BYTES, Reply, Request, Terminator, frame, frame_final,
};

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), any::<u8>())
            .prop_map(|(device, register)| Request::Read { device, register }),
        (any::<u16>(), any::<u8>(), any::<u16>()).prop_map(|(device, register, value)| {
            Request::Write {
                device,
                register,
                value,
            }
        }),
    ]
}

fn terminator() -> impl Strategy<Value = Terminator> {
    prop_oneof![
        Just(Terminator::None),
        Just(Terminator::Lf),
        Just(Terminator::CrLf)
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request(), lowercase in any::<bool>()) {
        let wire = req.encode();
        let mut bytes = wire.as_bytes().to_vec();
        if lowercase {
            bytes[1..].make_ascii_lowercase();
        }
        prop_assert_eq!(Request::parse(&bytes), Ok(req));
    }

    #[test]
    fn replies_round_trip(device in any::<u16>(), register in any::<u8>(), value in any::<u16>(), t in terminator()) {
        let reply = Reply::Accepted { device, register, value };
        let wire = reply.encode(ErrorDetail::Bare, t);
        prop_assert_eq!(Reply::parse(wire.as_bytes()), Some(reply));
    }

    #[test]
    fn a_request_frames_complete_only_when_whole(req in request(), t in terminator(), trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
        let mut bytes = req.encode().as_bytes().to_vec();
        let body = bytes.len();
        bytes.extend_from_slice(t.as_bytes());
        let whole = bytes.len();
        if t != Terminator::None {
            bytes.extend_from_slice(&trailing);
        }
        for cut in 0..body {
            prop_assert_eq!(frame(&bytes[..cut]), Frame::Partial);
        }
        let framed = frame(&bytes[..whole]);
        prop_assert_eq!(framed, Frame::Complete { message_len: body, terminator: t });
        if t != Terminator::None {
            // What follows a terminator never changes the verdict.
            prop_assert_eq!(frame(&bytes), framed);
        }
    }

    #[test]
    fn no_input_panics(input in proptest::collection::vec(any::<u8>(), 0..=MAX_MESSAGE_BYTES)) {
        for cut in 0..=input.len() {
            let prefix = &input[..cut];
            if let Frame::Complete { message_len, .. } = frame(prefix) {
                prop_assert!(message_len <= prefix.len());
                let _ = Request::parse(&prefix[..message_len]);
            }
            let (len, _) = frame_final(prefix);
            prop_assert!(len <= prefix.len());
            if let Ok(req) = Request::parse(&prefix[..len]) {
                // Whatever parses re-encodes to the same request.
                prop_assert_eq!(Request::parse(req.encode().as_bytes()), Ok(req));
            }
            let _ = Reply::parse(prefix);
        }
    }
}
