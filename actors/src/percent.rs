//! Percent-decoding (`%XX` escapes, decoded as UTF-8), shared by the query string and the
//! `OTEL_EXPORTER_OTLP_HEADERS` setting. Each caller decides what a malformed input means.

/// Whether `+` stands for a space (a query string) or for itself (a header value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plus {
    Space,
    Literal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PercentError {
    /// A `%` not followed by two hex digits.
    Malformed,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

pub fn decode(s: &str, plus: Plus) -> Result<String, PercentError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus == Plus::Space => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or(PercentError::Malformed)?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| PercentError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_a_space_only_where_asked_and_bad_escapes_are_errors() {
        assert_eq!(decode("a+b%20c", Plus::Space).as_deref(), Ok("a b c"));
        assert_eq!(decode("a+b%20c", Plus::Literal).as_deref(), Ok("a+b c"));
        assert_eq!(decode("%zz", Plus::Literal), Err(PercentError::Malformed));
        assert_eq!(decode("%4", Plus::Literal), Err(PercentError::Malformed));
        assert_eq!(decode("%ff", Plus::Literal), Err(PercentError::NotUtf8));
    }
}
