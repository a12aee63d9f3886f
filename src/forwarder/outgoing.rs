//! What a target receives, as pure functions: the body as it will be sent
//! (and signed), and header values built from payload data, which a target's
//! HTTP parser must accept whatever the provider put in them.

use bytes::Bytes;
use http::HeaderValue;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";
/// Longest payload text put in a header, in bytes, before encoding.
pub const MAX_HEADER_TEXT: usize = 256;
/// RFC 8187's `attr-char`: what stays as it is in an encoded value.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The body to send: the spool keeps the provider's bytes, but a leading
/// UTF-8 BOM is dropped (RFC 8259 §8.1 lets JSON parsers ignore it; the
/// verifiers of Standard Webhooks libraries parse the body and choke on it),
/// and a body the provider check read as Windows-1252 (`latin1`, the
/// `latin1_body` flag) is sent as UTF-8, for the same verifiers and since
/// JSON between systems is UTF-8 (RFC 8259 §8.1). The signature is made
/// over what is sent. The second value is whether it was transcoded.
pub fn body(raw: &Bytes, latin1: bool) -> (Bytes, bool) {
    let body = match raw.strip_prefix(BOM) {
        Some(_) => raw.slice(BOM.len()..),
        None => raw.clone(),
    };
    if latin1 && std::str::from_utf8(&body).is_err() {
        let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(&body);
        return (Bytes::from(text.into_owned()), true);
    }
    (body, false)
}

/// The Content-Type to send for a body transcoded to UTF-8: the provider's
/// media type, its charset (if it named one) replaced by UTF-8.
pub fn utf8_content_type(content_type: &str) -> String {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    format!("{media_type}; charset=utf-8")
}

/// A header value from payload data (subject, event type): cut to
/// [`MAX_HEADER_TEXT`] bytes on a character boundary; printable ASCII as it
/// is, anything else in RFC 8187 form, `UTF-8''` and percent-encoded UTF-8.
pub fn header_text(text: &str) -> HeaderValue {
    let cut = match text
        .char_indices()
        .find(|(at, c)| at + c.len_utf8() > MAX_HEADER_TEXT)
    {
        Some((at, _)) => &text[..at],
        None => text,
    };
    let plain = cut.bytes().all(|b| (0x20..0x7f).contains(&b));
    let value = if plain {
        cut.to_owned()
    } else {
        format!("UTF-8''{}", utf8_percent_encode(cut, ATTR_CHAR))
    };
    // Only printable ASCII is left, so this cannot fail; an empty value if it did.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_windows_1252_body_is_sent_as_utf8_only_when_flagged() {
        let raw = Bytes::from_static(b"{\"a\": \"N\xba 1\"}");
        let (sent, transcoded) = body(&raw, true);
        assert!(transcoded);
        assert_eq!(std::str::from_utf8(&sent).unwrap(), "{\"a\": \"Nº 1\"}");
        assert_eq!(body(&raw, false), (raw.clone(), false));
        // Flagged but UTF-8 after all (a resend fixed?): sent as it is.
        let utf8 = Bytes::from("{\"a\": \"Nº 1\"}");
        assert_eq!(body(&utf8, true), (utf8.clone(), false));
        assert_eq!(
            utf8_content_type("application/json; charset=ISO-8859-1"),
            "application/json; charset=utf-8"
        );
    }

    #[test]
    fn a_leading_bom_is_dropped_and_nothing_else() {
        let raw = Bytes::from_static(b"\xEF\xBB\xBF{\"a\": 1}");
        assert_eq!(body(&raw, false).0.as_ref(), b"{\"a\": 1}");
        let plain = Bytes::from_static(b"{\"a\": \"\xEF\xBB\xBF\"}");
        assert_eq!(body(&plain, false).0, plain);
        assert_eq!(
            body(&Bytes::from_static(b"\xEF\xBB"), false).0.as_ref(),
            b"\xEF\xBB"
        );
    }

    #[test]
    fn plain_ascii_stays_and_the_rest_is_encoded_rfc_8187_style() {
        assert_eq!(header_text("0001-00001234"), "0001-00001234");
        assert_eq!(header_text("facturacion.emitido"), "facturacion.emitido");
        assert_eq!(
            header_text("Factura Nº 12"),
            "UTF-8''Factura%20N%C2%BA%2012"
        );
        assert_eq!(header_text("a\r\nb"), "UTF-8''a%0D%0Ab");
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "x".repeat(16_000);
        assert_eq!(header_text(&long).len(), MAX_HEADER_TEXT);
        // 'ñ' is two bytes: 255 of 'a' then 'ñ' would end at byte 257.
        let edge = format!("{}ñ", "a".repeat(255));
        let value = header_text(&edge);
        assert_eq!(value.to_str().unwrap(), "a".repeat(255));
        let accents = "é".repeat(1_000);
        let encoded = header_text(&accents);
        assert_eq!(encoded.to_str().unwrap().matches("%C3%A9").count(), 128);
    }
}
