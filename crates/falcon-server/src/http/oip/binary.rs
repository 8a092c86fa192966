//! Triton's binary tensor data extension of the HTTP/REST protocol: a body whose first
//! `Inference-Header-Content-Length` bytes are the JSON inference request, followed by the raw
//! data of each input that carries a `binary_data_size` parameter, in the order the inputs are
//! listed. A `BYTES` element is a 4-byte little-endian length and that many bytes; a
//! fixed-size type is its little-endian values. An answer comes back the same way for the
//! outputs asked with `binary_data: true`.
//!
//! Every length is checked against what is left of the body before anything is taken, so a
//! malformed request costs no more memory than its body (itself bounded by
//! `MAX_REQUEST_BODY_BYTES`). Errors say where the framing broke, never what the bytes hold.

use axum::http::HeaderValue;

/// The request and response header that says how long the JSON part is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The body's JSON header and the binary data after it, as `Inference-Header-Content-Length`
/// (`declared`) divides them.
pub fn split<'a>(body: &'a [u8], declared: &HeaderValue) -> Result<(&'a [u8], &'a [u8]), String> {
    let length = declared
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| "Inference-Header-Content-Length must be a number of bytes".to_owned())?;
    if length > body.len() {
        return Err(format!("Inference-Header-Content-Length says {length} bytes; the body has {}", body.len()));
    }
    Ok(body.split_at(length))
}

/// The binary data after the JSON header, taken input by input.
pub struct Sections<'a> {
    rest: &'a [u8],
    /// Bytes taken so far (where the next section starts).
    taken: usize,
}

impl<'a> Sections<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data, taken: 0 }
    }

    /// The next `size` bytes, for the input named `input`.
    pub fn take(&mut self, input: &str, size: u64) -> Result<&'a [u8], String> {
        let fits = usize::try_from(size).ok().filter(|&n| n <= self.rest.len());
        let Some(n) = fits else {
            return Err(format!(
                "input '{input}' has binary_data_size {size}; {} bytes of binary data are left at offset {}",
                self.rest.len(),
                self.taken
            ));
        };
        let (section, rest) = self.rest.split_at(n);
        self.rest = rest;
        self.taken += n;
        Ok(section)
    }

    /// Every byte belongs to an input.
    pub fn finish(self) -> Result<(), String> {
        if self.rest.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} bytes of binary data follow the inputs' {} (their binary_data_size parameters)",
            self.rest.len(),
            self.taken
        ))
    }
}

/// The size of one element of a fixed-size datatype; `None` for `BYTES` (and names the
/// protocol does not have, which the caller refuses on their own).
pub fn element_width(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

/// The `elements` `BYTES` elements of `data`, each as UTF-8 text: exactly that many, and no
/// byte left over.
pub fn decode_bytes(data: &[u8], elements: usize, input: &str) -> Result<Vec<String>, String> {
    let mut rest = data;
    // Bounded by the shape, which the caller has bounded by MAX_BATCH_TEXTS.
    let mut texts = Vec::with_capacity(elements);
    while !rest.is_empty() {
        let i = texts.len();
        if i == elements {
            return Err(format!(
                "input '{input}': its binary data holds more than the {elements} elements of its shape"
            ));
        }
        let Some((length, after)) = rest.split_first_chunk::<4>() else {
            return Err(format!("input '{input}': element {i}'s 4-byte length is cut short"));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > after.len() {
            return Err(format!("input '{input}': element {i} says {length} bytes; {} are left", after.len()));
        }
        let (element, after) = after.split_at(length);
        let text =
            std::str::from_utf8(element).map_err(|_| format!("input '{input}': element {i} is not UTF-8 text"))?;
        texts.push(text.to_owned());
        rest = after;
    }
    if texts.len() != elements {
        return Err(format!(
            "input '{input}': its shape says {elements} elements, its binary data holds {}",
            texts.len()
        ));
    }
    Ok(texts)
}

/// `BYTES` elements as the extension frames them.
pub fn encode_bytes<S: AsRef<str>>(elements: &[S]) -> Vec<u8> {
    let size = elements.iter().map(|e| 4 + e.as_ref().len()).sum();
    let mut out = Vec::with_capacity(size);
    for element in elements {
        let bytes = element.as_ref().as_bytes();
        // A text here is a label or a class: far below 4 GiB.
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// `FP32` values, little-endian.
pub fn encode_fp32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn the_header_length_divides_the_body_and_may_not_pass_its_end() {
        let (json, data) = split(b"{\"a\":1}xyz", &header("7")).unwrap();
        assert_eq!((json, data), (&b"{\"a\":1}"[..], &b"xyz"[..]));
        assert!(split(b"{}", &header("3")).unwrap_err().contains("says 3 bytes; the body has 2"));
        assert!(split(b"{}", &header("-1")).unwrap_err().contains("number of bytes"));
        assert!(split(b"{}", &header("99999999999999999999999")).is_err());
    }

    #[test]
    fn bytes_elements_round_trip_and_every_length_is_checked() {
        let texts = ["I love it", "", "naïve 😀"];
        let framed = encode_bytes(&texts);
        assert_eq!(&framed[..4], &9u32.to_le_bytes());
        assert_eq!(decode_bytes(&framed, 3, "text").unwrap(), texts);
        // A length past the data: refused before anything is allocated for it.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"abc");
        assert!(decode_bytes(&huge, 1, "text").unwrap_err().contains("says 4294967295 bytes; 3 are left"));
        assert!(decode_bytes(&framed[..2], 1, "text").unwrap_err().contains("cut short"));
        assert!(decode_bytes(&framed, 2, "text").unwrap_err().contains("more than the 2 elements"));
        assert!(decode_bytes(&framed, 4, "text").unwrap_err().contains("says 4 elements, its binary data holds 3"));
        let bad = encode_bytes(&["ok"]).into_iter().chain([1, 0, 0, 0, 0xff]).collect::<Vec<u8>>();
        let message = decode_bytes(&bad, 2, "text").unwrap_err();
        assert!(message.contains("element 1 is not UTF-8"), "{message}");
    }

    #[test]
    fn sections_are_taken_in_order_and_none_may_be_left() {
        let mut s = Sections::new(b"aabbb");
        assert_eq!(s.take("x", 2).unwrap(), b"aa");
        assert!(s.take("y", 4).unwrap_err().contains("3 bytes of binary data are left at offset 2"));
        assert!(s.take("y", u64::MAX).is_err());
        assert_eq!(s.take("y", 2).unwrap(), b"bb");
        assert!(s.finish().unwrap_err().contains("1 bytes of binary data follow"));
        assert!(Sections::new(b"").finish().is_ok());
    }

    #[test]
    fn fp32_is_little_endian() {
        assert_eq!(encode_fp32(&[1.0, -2.5]), [0, 0, 128, 63, 0, 0, 32, 192]);
        assert_eq!(element_width("FP32"), Some(4));
        assert_eq!(element_width("BYTES"), None);
    }
}
