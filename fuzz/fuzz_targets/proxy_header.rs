//! Feeds arbitrary bytes to the PROXY protocol parser a listener runs on every
//! connection from a balancer, checking what it promises: no panic, a header no
//! longer than what arrived, and every shorter prefix of a header `Partial`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wwep::net::proxy::{Header, MAX_HEADER_BYTES, parse};

fuzz_target!(|data: &[u8]| {
    let input = &data[..data.len().min(MAX_HEADER_BYTES + 16)];
    if let Ok(Header::Complete { len, .. }) = parse(input) {
        assert!(len <= input.len() && len <= MAX_HEADER_BYTES);
        for cut in 0..len {
            assert_eq!(parse(&input[..cut]), Ok(Header::Partial), "prefix {cut}");
        }
        // What follows the header never changes the verdict on it.
        assert_eq!(parse(&input[..len]), parse(input));
    }
});
