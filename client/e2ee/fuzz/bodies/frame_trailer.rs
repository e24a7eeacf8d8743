//! Trailer parsing and codec layout on arbitrary bytes: must never panic, and
//! whatever parses must describe ranges inside the payload.
//!
//! Shared by the cargo-fuzz target `frame_trailer` and by `tests/fuzz_corpus.rs`, which
//! replays every file of `fuzz/corpus/frame_trailer/` through it.

use satsuma_e2ee::frame::{Codec, FrameLayout, ProtocolFrame};

pub(crate) fn run(data: &[u8]) {
    if let Ok(frame) = ProtocolFrame::parse(data) {
        let mut previous_end = 0;
        for range in frame.ranges.iter() {
            assert!(range.offset >= previous_end);
            assert!(range.end() <= frame.payload.len());
            previous_end = range.end();
        }
        assert!(frame.payload.len() + usize::from(frame.supplemental_size) == data.len());
    }
    let mut layout = FrameLayout::default();
    for codec in [Codec::Vp8, Codec::H264, Codec::H265, Codec::Av1] {
        layout.build(codec, data);
        let mut previous_end = 0;
        for range in &layout.clear {
            assert!(range.offset >= previous_end && range.end() <= layout.bytes.len());
            previous_end = range.end();
        }
    }
}
