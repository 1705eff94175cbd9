//! The Confluent wire format: `0x00`, the writer schema id as a big-endian `u32`, the Avro body.

/// The only magic byte the format defines.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Why bytes are not a Confluent-framed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("record is empty")]
    Empty,
    #[error("record has {0} bytes, fewer than the 5-byte wire header")]
    TooShort(usize),
    #[error("magic byte is {0:#04x}, expected 0x00 (not Confluent wire format)")]
    BadMagic(u8),
}

/// Splits a framed record into its schema id and Avro body.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    match bytes {
        [] => Err(FrameError::Empty),
        [m, ..] if *m != MAGIC => Err(FrameError::BadMagic(*m)),
        b if b.len() < HEADER_LEN => Err(FrameError::TooShort(b.len())),
        [_, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => unreachable!("lengths 1..5 handled above"),
    }
}

/// Reads only the schema id, if the header is well-formed.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    split(bytes).ok().map(|(id, _)| id)
}

/// Writes the header for `schema_id` into an empty buffer.
pub fn write_header(buf: &mut Vec<u8>, schema_id: u32) {
    buf.push(MAGIC);
    buf.extend_from_slice(&schema_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips() {
        let mut buf = Vec::new();
        write_header(&mut buf, 0x0102_0304);
        buf.extend_from_slice(b"body");
        assert_eq!(buf[..5], [0, 1, 2, 3, 4]);
        assert_eq!(split(&buf), Ok((0x0102_0304, &b"body"[..])));
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        assert_eq!(split(&[]), Err(FrameError::Empty));
        assert_eq!(split(&[1, 0, 0, 0, 1]), Err(FrameError::BadMagic(1)));
        assert_eq!(split(&[0, 0, 1]), Err(FrameError::TooShort(3)));
        assert_eq!(split(&[0, 0, 0, 0, 7]), Ok((7, &[][..])));
    }

    proptest! {
        #[test]
        fn split_never_panics_and_agrees_with_the_spec(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match split(&bytes) {
                Ok((id, body)) => {
                    prop_assert_eq!(bytes[0], MAGIC);
                    prop_assert_eq!(id, u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]));
                    prop_assert_eq!(body, &bytes[5..]);
                }
                Err(FrameError::Empty) => prop_assert!(bytes.is_empty()),
                Err(FrameError::BadMagic(m)) => prop_assert_ne!(m, MAGIC),
                Err(FrameError::TooShort(n)) => prop_assert!(n < HEADER_LEN && bytes[0] == MAGIC),
            }
        }
    }
}
