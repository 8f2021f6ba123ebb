//! Safetensors header parsing with our own checks (checked arithmetic on every field, precise
//! messages naming the tensor), followed by the `safetensors` crate's validation as a second
//! opinion.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};

use super::dtype::DType;

/// The safetensors crate's limit (and so every reader's): larger headers are refused.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor entry of a header. `begin`/`end` are relative to the start of the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub begin: u64,
    pub end: u64,
}

#[derive(Debug, Clone)]
pub struct Header {
    /// Entries sorted by data offset (the on-disk order).
    pub entries: Vec<Entry>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// Length of the JSON header (the u64 at the start of the file).
    pub header_len: u64,
}

impl Header {
    /// Byte offset of the data section in the file.
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }
}

/// Number of elements of `shape`, or None on overflow.
pub fn numel(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Reads the header length from the first 8 bytes and checks it against the file length.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<u64, String> {
    if file_len < 8 || prefix.len() < 8 {
        return Err(format!(
            "truncated file: {file_len} bytes, shorter than the 8-byte header length field"
        ));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&prefix[..8]);
    let n = u64::from_le_bytes(b);
    if n > MAX_HEADER_LEN {
        return Err(format!(
            "header length {n} exceeds the {MAX_HEADER_LEN}-byte limit (not a safetensors file?)"
        ));
    }
    if n > file_len - 8 {
        return Err(format!(
            "header length {n} is larger than the file ({file_len} bytes): truncated file?"
        ));
    }
    Ok(n)
}

/// Parses and validates a complete header. `json` is the header bytes, `data_len` the size of the
/// data section (file length − 8 − header length).
pub fn parse(json: &[u8], header_len: u64, data_len: u64) -> Result<Header, String> {
    let text = std::str::from_utf8(json).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let raw: RawHeader = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) if e.is_data() => return Err(format!("header is not a JSON object: {e}")),
        Err(e) => return Err(format!("header is not valid JSON: {e}")),
    };
    let mut metadata = None;
    let mut entries = Vec::with_capacity(raw.0.len());
    let mut seen = std::collections::HashSet::new();
    for (name, value) in raw.0 {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor '{name}' appears twice in the header"));
        }
        if name == "__metadata__" {
            metadata = Some(parse_metadata(value)?);
            continue;
        }
        entries.push(parse_entry(&name, value)?);
    }
    entries.sort_by_key(|e| (e.begin, e.end));
    // Tensors must tile the data section exactly: no gap, no overlap, nothing past the end.
    let mut cursor = 0u64;
    for e in &entries {
        if e.begin < cursor {
            return Err(format!(
                "tensor '{}': data_offsets [{}, {}] overlap the previous tensor (which ends at {cursor})",
                e.name, e.begin, e.end
            ));
        }
        if e.begin > cursor {
            return Err(format!(
                "tensor '{}': data_offsets start at {} leaving a gap of {} bytes after offset {cursor}",
                e.name,
                e.begin,
                e.begin - cursor
            ));
        }
        if e.end > data_len {
            return Err(format!(
                "tensor '{}': data_offsets [{}, {}] out of range: the data section has {data_len} bytes (truncated file?)",
                e.name, e.begin, e.end
            ));
        }
        cursor = e.end;
    }
    if cursor != data_len {
        return Err(format!(
            "{} bytes after the last tensor are not covered by any tensor",
            data_len - cursor
        ));
    }
    Ok(Header {
        entries,
        metadata,
        header_len,
    })
}

fn parse_metadata(value: serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let serde_json::Value::Object(map) = value else {
        return Err("__metadata__ is not a JSON object".into());
    };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            other => Err(format!(
                "__metadata__ value for '{k}' is not a string: {other}"
            )),
        })
        .collect()
}

fn parse_entry(name: &str, value: serde_json::Value) -> Result<Entry, String> {
    let bad = |msg: &str| format!("tensor '{name}': {msg}");
    let serde_json::Value::Object(map) = value else {
        return Err(bad("entry is not a JSON object"));
    };
    let dtype_str = map
        .get("dtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("missing or non-string 'dtype'"))?;
    let dtype = DType::from_header(dtype_str)
        .ok_or_else(|| bad(&format!("unknown dtype '{dtype_str}'")))?;
    let shape = map
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("missing or non-array 'shape'"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("'shape' must hold non-negative integers"))?;
    let offsets = map
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad("'data_offsets' must be an array [begin, end]"))?;
    let (Some(begin), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
        return Err(bad("'data_offsets' must hold non-negative integers"));
    };
    if end < begin {
        return Err(bad(&format!(
            "data_offsets [{begin}, {end}] end before they begin"
        )));
    }
    let nbytes = numel(&shape)
        .and_then(|n| n.checked_mul(dtype.size() as u64))
        .ok_or_else(|| bad(&format!("shape {shape:?} overflows")))?;
    if nbytes != end - begin {
        return Err(bad(&format!(
            "shape {shape:?} × {dtype} is {nbytes} bytes but data_offsets [{begin}, {end}] span {}",
            end - begin
        )));
    }
    Ok(Entry {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

/// The header's top-level object as an ordered list of pairs, so duplicate keys are seen
/// (a map would silently keep the last one).
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawHeader, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry()? {
                    v.push(kv);
                }
                Ok(RawHeader(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Serializes a header for `entries` (offsets relative to the data section), padded with spaces
/// to a multiple of 8 bytes as the reference writer does, so the data section stays aligned.
pub fn serialize(entries: &[Entry], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        obj.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("string map serializes"),
        );
    }
    for e in entries {
        obj.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": e.dtype.name(),
                "shape": e.shape,
                "data_offsets": [e.begin, e.end],
            }),
        );
    }
    let mut json = serde_json::to_vec(&obj).expect("header serializes");
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(json: &str, data_len: usize) -> Vec<u8> {
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data_len));
        f
    }

    fn check(file: &[u8]) -> Result<Header, String> {
        let n = header_len(file, file.len() as u64)?;
        let json = &file[8..8 + n as usize];
        parse(json, n, file.len() as u64 - 8 - n)
    }

    #[test]
    fn valid_header_round_trips_through_serialize() {
        let entries = vec![
            Entry {
                name: "a".into(),
                dtype: DType::F32,
                shape: vec![2, 3],
                begin: 0,
                end: 24,
            },
            Entry {
                name: "b".into(),
                dtype: DType::BF16,
                shape: vec![4],
                begin: 24,
                end: 32,
            },
        ];
        let mut md = BTreeMap::new();
        md.insert("format".to_string(), "pt".to_string());
        let mut file = serialize(&entries, &md);
        assert_eq!((file.len() - 8) % 8, 0);
        file.extend(std::iter::repeat_n(7u8, 32));
        let h = check(&file).unwrap();
        assert_eq!(h.entries, entries);
        assert_eq!(h.metadata.unwrap()["format"], "pt");
        // The reference implementation accepts what we write.
        safetensors::SafeTensors::deserialize(&file).unwrap();
    }

    #[test]
    fn each_error_class_is_named() {
        let cases: &[(&str, usize, &str)] = &[
            ("[1,2]", 0, "not a JSON object"),
            ("{\"a\":", 0, "not valid JSON"),
            (
                r#"{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}}"#,
                1,
                "unknown dtype 'Q7'",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "span 8",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
                "out of range",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "gap of 4",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                12,
                "8 bytes after",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "appears twice",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
                4,
                "non-negative",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4,
                "overflows",
            ),
            (r#"{"__metadata__":{"k":1}}"#, 0, "not a string"),
        ];
        for (json, data, want) in cases {
            let err = check(&file_of(json, *data)).unwrap_err();
            assert!(err.contains(want), "{json}: got '{err}', want '{want}'");
        }
    }

    #[test]
    fn header_length_checks() {
        assert!(header_len(&[1, 2, 3], 3).unwrap_err().contains("truncated"));
        let big = (MAX_HEADER_LEN + 1).to_le_bytes();
        assert!(header_len(&big, u64::MAX).unwrap_err().contains("limit"));
        let n = 1000u64.to_le_bytes();
        assert!(header_len(&n, 100)
            .unwrap_err()
            .contains("larger than the file"));
    }

    /// A valid file: a few tensors of random dtypes and shapes, random metadata, data bytes.
    fn valid_file(spec: &[(usize, Vec<usize>)], with_metadata: bool) -> Vec<u8> {
        let dtypes = [
            DType::F32,
            DType::BF16,
            DType::I64,
            DType::BOOL,
            DType::F16,
            DType::U8,
        ];
        let mut entries = Vec::new();
        let mut off = 0u64;
        for (i, (dt, shape)) in spec.iter().enumerate() {
            let dtype = dtypes[dt % dtypes.len()];
            let n = numel(shape).unwrap() * dtype.size() as u64;
            entries.push(Entry {
                name: format!("model.layers.{i}.w"),
                dtype,
                shape: shape.clone(),
                begin: off,
                end: off + n,
            });
            off += n;
        }
        let mut md = BTreeMap::new();
        if with_metadata {
            md.insert("format".to_string(), "pt".to_string());
        }
        let mut file = serialize(&entries, &md);
        file.extend((0..off).map(|i| i as u8));
        file
    }

    /// One edit of a file: overwrite, insert or delete a byte, or change a digit of the JSON
    /// (offsets, shapes, the length prefix's effect) into another digit.
    fn mutate(file: &mut Vec<u8>, (kind, pos, byte): (u8, usize, u8)) {
        if file.is_empty() {
            file.push(byte);
            return;
        }
        let at = pos % file.len();
        match kind % 5 {
            0 => file[at] = byte,
            1 => file.insert(at, byte),
            2 => {
                file.remove(at);
            }
            3 => {
                // The next ASCII digit at or after `at` becomes another digit.
                if let Some(i) = (at..file.len()).find(|&i| file[i].is_ascii_digit()) {
                    file[i] = b'0' + byte % 10;
                }
            }
            _ => {
                // A JSON-significant character where it may break the structure.
                file[at] = b"{}[],:\"-"[usize::from(byte) % 8];
            }
        }
    }

    /// A tensor as both parsers can be compared on: name, dtype, shape, data bytes.
    type View = (String, String, Vec<usize>, Vec<u8>);

    /// What a header says about its tensors.
    fn views(file: &[u8]) -> Option<Vec<View>> {
        let n = header_len(file, file.len() as u64).ok()?;
        let h = parse(&file[8..8 + n as usize], n, file.len() as u64 - 8 - n).ok()?;
        let data = &file[h.data_start() as usize..];
        let mut v: Vec<_> = h
            .entries
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.dtype.name().to_string(),
                    e.shape.clone(),
                    data[e.begin as usize..e.end as usize].to_vec(),
                )
            })
            .collect();
        v.sort();
        Some(v)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1500))]

        // Mutated valid files: never a panic, and whatever we accept the reference accepts, with
        // the same names, dtypes, shapes and data bytes for every tensor.
        #[test]
        fn mutated_valid_headers_agree_with_the_reference(
            spec in proptest::collection::vec(
                (0usize..6, proptest::collection::vec(0usize..5, 0..3)), 0..5),
            with_metadata in proptest::prelude::any::<bool>(),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<u8>(), proptest::prelude::any::<usize>(),
                 proptest::prelude::any::<u8>()), 1..4),
        ) {
            let mut file = valid_file(&spec, with_metadata);
            proptest::prop_assert!(views(&file).is_some(), "the unmutated file must be valid");
            for e in edits {
                mutate(&mut file, e);
            }
            if let Some(ours) = views(&file) {
                let st = safetensors::SafeTensors::deserialize(&file);
                proptest::prop_assert!(st.is_ok(), "accepted by us, refused by safetensors: {:?}",
                    st.err());
                let st = st.unwrap();
                let mut theirs: Vec<_> = st
                    .tensors()
                    .into_iter()
                    .map(|(name, t)| (name, format!("{:?}", t.dtype()), t.shape().to_vec(),
                        t.data().to_vec()))
                    .collect();
                theirs.sort();
                proptest::prop_assert_eq!(ours, theirs);
            }
        }

        // Arbitrary bytes never panic the parser, and whatever it accepts the reference accepts.
        #[test]
        fn fuzz_parse(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
                      data_len in 0u64..64) {
            let n = body.len() as u64;
            if let Ok(h) = parse(&body, n, data_len) {
                let mut file = n.to_le_bytes().to_vec();
                file.extend_from_slice(&body);
                file.extend(std::iter::repeat_n(0u8, data_len as usize));
                proptest::prop_assert!(safetensors::SafeTensors::read_metadata(&file).is_ok(), "{:?}", h);
            }
        }

        // Structured fuzzing: random entries with random offsets never panic.
        #[test]
        fn fuzz_entries(entries in proptest::collection::vec((0usize..4, 0u64..40, 0u64..40), 0..5), data_len in 0u64..80) {
            let mut obj = serde_json::Map::new();
            for (i, (dt, b, e)) in entries.iter().enumerate() {
                let dtype = ["F32", "BF16", "I64", "BOOL"][*dt];
                obj.insert(format!("t{i}"), serde_json::json!({"dtype": dtype, "shape": [e.saturating_sub(*b)], "data_offsets": [b, e]}));
            }
            let body = serde_json::to_vec(&obj).unwrap();
            let _ = parse(&body, body.len() as u64, data_len);
        }
    }
}
