//! The stream framer (TCP and TLS, RFC 8656 section 12.5) against hostile byte streams cut at
//! arbitrary points: whatever the cuts, the frames (and the error, if any) are the same as for
//! the stream in one piece, every frame is a whole STUN or ChannelData message no longer than
//! the largest there is, and after the frames are drained the framer holds no more than one
//! maximal message (bounded memory per connection).
#![no_main]

use libfuzzer_sys::fuzz_target;
use uturn_proto::stream::{Frame, Framer, FramingError, MAX_FRAME};

#[derive(Debug, PartialEq)]
enum Got {
    Frame(bool, Vec<u8>),
    Error(FramingError),
}

/// Drains every frame the framer has now; true when the stream failed.
fn drain(f: &mut Framer, got: &mut Vec<Got>) -> bool {
    while let Some(r) = f.next_frame() {
        match r {
            Ok(Frame::Stun(b)) => {
                assert!(b.len() >= 20 && b.len() <= MAX_FRAME && b.len() % 4 == 0);
                got.push(Got::Frame(true, b.to_vec()));
            }
            Ok(Frame::ChannelData(b)) => {
                assert!(b.len() >= 4 && b.len() <= 4 + usize::from(u16::MAX));
                got.push(Got::Frame(false, b.to_vec()));
            }
            Err(e) => {
                got.push(Got::Error(e));
                return true;
            }
        }
    }
    false
}

fuzz_target!(|input: (Vec<u8>, Vec<u16>)| {
    let (stream, cuts) = input;
    // In one piece.
    let mut whole = Framer::new();
    whole.push(&stream);
    let mut expected = Vec::new();
    drain(&mut whole, &mut expected);

    // In pieces at the fuzzer's cuts (sizes 1 to 64 Ki, cycled).
    let mut f = Framer::new();
    let mut got = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < stream.len() {
        let size = cuts.get(k % cuts.len().max(1)).map_or(stream.len(), |&c| usize::from(c).max(1));
        k += 1;
        let end = (at + size).min(stream.len());
        f.push(&stream[at..end]);
        let read = end - at;
        at = end;
        if drain(&mut f, &mut got) {
            break;
        }
        // What is left is part of one message, never more than the largest message.
        assert!(
            f.buffered() <= MAX_FRAME,
            "holds {} bytes after a read of {read}",
            f.buffered()
        );
    }
    // Same frames and the same error, whole or cut: a framing error is decided on the first
    // bytes of a frame, which the cut stream reaches too.
    assert_eq!(got, expected);
});
