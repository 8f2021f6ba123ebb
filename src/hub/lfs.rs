//! Git LFS on the hub: the batch answer, part planning, and the transfers themselves.
//!
//! The hub answers the batch request per object: no `actions` (already stored), a `basic` upload
//! (one PUT of the whole file to a presigned URL) or a multipart upload (`header.chunk_size` and one
//! presigned URL per part under numeric keys, then a completion POST to `href`). A `verify` action,
//! when given, is called after the upload. Every part is read from the file at its offset (never
//! the whole file in memory), a bounded number of PUTs run at once, and each PUT is retried on
//! its own.

use super::http::{fix_endpoint, AttemptError, CallError, Client};
use super::HubError;
use crate::error::{Error, IoContext, Result};
use crate::progress::Reporter;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

pub(crate) const LFS_CONTENT_TYPE: &str = "application/vnd.git-lfs+json";

/// One part of a multipart upload: bytes `offset..offset+len` of the file, numbered from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartPlan {
    pub number: u32,
    pub offset: u64,
    pub len: u64,
}

/// The parts of a `size`-byte file cut in `chunk_size` pieces (the last one shorter), as the hub
/// numbers them. Checked arithmetic: sizes near `u64::MAX` or a part count beyond `u32` are errors.
pub fn plan_parts(size: u64, chunk_size: u64) -> Result<Vec<PartPlan>> {
    if chunk_size == 0 {
        return Err(Error::from(HubError::protocol(
            "LFS multipart: the hub sent chunk_size 0",
        )));
    }
    let count = size.div_ceil(chunk_size);
    let count = u32::try_from(count).map_err(|_| {
        Error::from(HubError::protocol(format!(
            "LFS multipart: {size} bytes in {chunk_size}-byte parts is too many parts"
        )))
    })?;
    (0..count)
        .map(|i| {
            let offset = u64::from(i).checked_mul(chunk_size).ok_or_else(|| {
                Error::from(HubError::protocol("LFS multipart: part offset overflows"))
            })?;
            Ok(PartPlan {
                number: i + 1,
                offset,
                len: chunk_size.min(size - offset),
            })
        })
        .collect()
}

/// A reader over exactly one part of `path`: positioned at the part's offset, limited to its length.
pub fn part_reader(path: &Path, part: &PartPlan) -> std::io::Result<std::io::Take<File>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(part.offset))?;
    Ok(f.take(part.len))
}

/// An action of the batch answer: where to send, and the headers the server asks for.
#[derive(Clone, Debug)]
pub(crate) struct Action {
    pub href: String,
    pub header: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub(crate) enum UploadAction {
    Basic(Action),
    Multipart {
        completion: Action,
        chunk_size: u64,
        part_urls: Vec<String>,
    },
}

/// One object of the batch answer.
#[derive(Clone, Debug)]
pub(crate) struct BatchObject {
    pub oid: String,
    pub size: u64,
    /// `None`: the hub already stores this object.
    pub upload: Option<UploadAction>,
    pub verify: Option<Action>,
}

/// Parse the batch answer for the objects we asked about; per-object errors become one error.
pub(crate) fn parse_batch(answer: &Value, endpoint: &str) -> Result<Vec<BatchObject>> {
    let objects = answer
        .get("objects")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Error::from(HubError::protocol(
                "LFS batch: malformed answer (no 'objects' list)",
            ))
        })?;
    let mut out = Vec::with_capacity(objects.len());
    let mut errors = Vec::new();
    for obj in objects {
        let oid = obj.get("oid").and_then(Value::as_str);
        let size = obj.get("size").and_then(Value::as_u64);
        let (Some(oid), Some(size)) = (oid, size) else {
            return Err(Error::from(HubError::protocol(
                "LFS batch: malformed object (oid/size)",
            )));
        };
        if let Some(err) = obj.get("error") {
            let msg = err.get("message").and_then(Value::as_str).unwrap_or("?");
            let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
            errors.push(format!("object {oid}: {msg} ({code})"));
            continue;
        }
        let actions = obj.get("actions");
        let upload = match actions.and_then(|a| a.get("upload")) {
            None | Some(Value::Null) => None,
            Some(a) => Some(parse_upload(a, size, endpoint)?),
        };
        let verify = match actions.and_then(|a| a.get("verify")) {
            None | Some(Value::Null) => None,
            Some(a) => Some(parse_action(a, endpoint)?),
        };
        out.push(BatchObject {
            oid: oid.to_string(),
            size,
            upload,
            verify,
        });
    }
    if !errors.is_empty() {
        return Err(Error::from(HubError::protocol(format!(
            "LFS batch refused: {}",
            errors.join("; ")
        ))));
    }
    Ok(out)
}

fn parse_action(a: &Value, endpoint: &str) -> Result<Action> {
    let href = a
        .get("href")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::from(HubError::protocol("LFS batch: action without href")))?;
    let header = match a.get("header") {
        Some(Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| header_value(v).map(|v| (k.clone(), v)))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Action {
        href: fix_endpoint(href, endpoint),
        header,
    })
}

fn header_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_upload(a: &Value, size: u64, endpoint: &str) -> Result<UploadAction> {
    let action = parse_action(a, endpoint)?;
    let Some(Value::Object(header)) = a.get("header") else {
        return Ok(UploadAction::Basic(action));
    };
    let Some(chunk) = header.get("chunk_size") else {
        return Ok(UploadAction::Basic(action));
    };
    let chunk_size = header_value(chunk)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Error::from(HubError::protocol(
                "LFS batch: chunk_size is not an integer",
            ))
        })?;
    let part_urls = sorted_part_urls(header, endpoint)?;
    let expected = plan_parts(size, chunk_size)?.len();
    if part_urls.len() != expected {
        return Err(Error::from(HubError::protocol(format!(
            "LFS batch: {} part URLs for {size} bytes in {chunk_size}-byte parts (expected {expected})",
            part_urls.len()
        ))));
    }
    Ok(UploadAction::Multipart {
        completion: Action {
            href: action.href,
            header: Vec::new(),
        },
        chunk_size,
        part_urls,
    })
}

/// Part URLs under all-digit keys (`"1"` or zero-padded `"00001"`), numbered 1..=n without gaps.
fn sorted_part_urls(header: &Map<String, Value>, endpoint: &str) -> Result<Vec<String>> {
    let mut parts: Vec<(u32, String)> = Vec::new();
    for (k, v) in header {
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let n: u32 = k.parse().map_err(|_| {
            Error::from(HubError::protocol(format!(
                "LFS batch: bad part number '{k}'"
            )))
        })?;
        let url = v.as_str().ok_or_else(|| {
            Error::from(HubError::protocol(format!(
                "LFS batch: part {n} URL is not a string"
            )))
        })?;
        parts.push((n, fix_endpoint(url, endpoint)));
    }
    parts.sort_by_key(|(n, _)| *n);
    for (i, (n, _)) in parts.iter().enumerate() {
        if usize::try_from(*n).ok() != Some(i + 1) {
            return Err(Error::from(HubError::protocol(
                "LFS batch: part numbers are not 1..n",
            )));
        }
    }
    Ok(parts.into_iter().map(|(_, u)| u).collect())
}

/// An object to send and the file it comes from.
pub(crate) struct Upload<'a> {
    pub object: BatchObject,
    pub path: &'a Path,
    /// Path in the repo, for messages.
    pub label: &'a str,
}

enum Unit {
    Whole(usize),
    Part {
        obj: usize,
        part: PartPlan,
        url: String,
    },
}

struct PartsDone {
    etags: Mutex<Vec<Option<String>>>,
    left: AtomicUsize,
}

/// Upload every object with at most `parallelism` PUTs in flight; returns the bytes sent (each
/// byte once, whatever the retries).
pub(crate) fn transfer_all(
    client: &Client,
    uploads: &[Upload<'_>],
    parallelism: usize,
    reporter: &dyn Reporter,
) -> Result<u64> {
    let mut queue = VecDeque::new();
    let mut done = Vec::with_capacity(uploads.len());
    for (i, u) in uploads.iter().enumerate() {
        match &u.object.upload {
            None => done.push(None),
            Some(UploadAction::Basic(_)) => {
                queue.push_back(Unit::Whole(i));
                done.push(None);
            }
            Some(UploadAction::Multipart {
                chunk_size,
                part_urls,
                ..
            }) => {
                let parts = plan_parts(u.object.size, *chunk_size)?;
                done.push(Some(PartsDone {
                    etags: Mutex::new(vec![None; parts.len()]),
                    left: AtomicUsize::new(parts.len()),
                }));
                for (part, url) in parts.into_iter().zip(part_urls) {
                    queue.push_back(Unit::Part {
                        obj: i,
                        part,
                        url: url.clone(),
                    });
                }
            }
        }
    }
    let workers = parallelism.clamp(1, queue.len().max(1));
    let queue = Mutex::new(queue);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let sent = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let unit = lock(&queue).pop_front();
                    let Some(unit) = unit else { break };
                    let res = run_unit(client, uploads, &done, unit, &sent, reporter);
                    if let Err(e) = res {
                        stop.store(true, Ordering::Relaxed);
                        lock(&first_error).get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(sent.into_inner()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking worker cannot leave these structures half-updated in a harmful way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_unit(
    client: &Client,
    uploads: &[Upload<'_>],
    done: &[Option<PartsDone>],
    unit: Unit,
    sent: &AtomicU64,
    reporter: &dyn Reporter,
) -> Result<()> {
    match unit {
        Unit::Whole(i) => {
            let u = &uploads[i];
            let Some(UploadAction::Basic(action)) = &u.object.upload else {
                return Ok(());
            };
            let whole = PartPlan {
                number: 1,
                offset: 0,
                len: u.object.size,
            };
            let what = format!("upload {}", u.label);
            put_range(
                client,
                &action.href,
                &action.header,
                u.path,
                &whole,
                &what,
                reporter,
            )?;
            sent.fetch_add(u.object.size, Ordering::Relaxed);
            verify(client, u, reporter)
        }
        Unit::Part { obj, part, url } => {
            let u = &uploads[obj];
            let Some(state) = &done[obj] else {
                return Ok(());
            };
            let total = lock(&state.etags).len();
            let what = format!("upload {} part {}/{total}", u.label, part.number);
            let resp = put_range(client, &url, &[], u.path, &part, &what, reporter)?;
            let etag = resp
                .header("ETag")
                .map(str::to_string)
                .filter(|e| !e.is_empty())
                .ok_or_else(|| {
                    Error::from(HubError::protocol(format!(
                        "{what}: the storage answered without an ETag"
                    )))
                })?;
            drain(resp);
            sent.fetch_add(part.len, Ordering::Relaxed);
            let idx = usize::try_from(part.number - 1).unwrap_or(usize::MAX);
            if let Some(slot) = lock(&state.etags).get_mut(idx) {
                *slot = Some(etag);
            }
            // The worker that lands the last part completes the upload.
            if state.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                complete(client, u, state, reporter)?;
                verify(client, u, reporter)?;
            }
            Ok(())
        }
    }
}

/// PUT bytes `part` of `path`, reopening the file at the part's offset on every attempt.
fn put_range(
    client: &Client,
    url: &str,
    headers: &[(String, String)],
    path: &Path,
    part: &PartPlan,
    what: &str,
    reporter: &dyn Reporter,
) -> Result<ureq::Response> {
    // Progress counts each byte once: a retry advances only past the furthest point reached.
    let reported = AtomicU64::new(0);
    client
        .call(what, url, reporter, |_| {
            let reader =
                part_reader(path, part).map_err(|e| AttemptError::Local(Error::io(path, e)))?;
            let mut req = client
                .request("PUT", url)
                .set("Content-Length", &part.len.to_string());
            for (k, v) in headers {
                req = req.set(k, v);
            }
            Ok(req.send(Progress {
                inner: reader,
                pos: 0,
                reported: &reported,
                reporter,
            })?)
        })
        .map_err(|f| f.into_error(what))
}

struct Progress<'a, R> {
    inner: R,
    pos: u64,
    reported: &'a AtomicU64,
    reporter: &'a dyn Reporter,
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        let before = self.reported.fetch_max(self.pos, Ordering::Relaxed);
        if self.pos > before {
            self.reporter.advance(self.pos - before);
        }
        Ok(n)
    }
}

fn drain(resp: ureq::Response) {
    // Reading the (tiny) body lets the agent reuse the connection; failing to is harmless.
    let _ = std::io::copy(&mut resp.into_reader().take(1 << 20), &mut std::io::sink());
}

fn complete(
    client: &Client,
    u: &Upload<'_>,
    state: &PartsDone,
    reporter: &dyn Reporter,
) -> Result<()> {
    let Some(UploadAction::Multipart { completion, .. }) = &u.object.upload else {
        return Ok(());
    };
    let etags = lock(&state.etags).clone();
    let parts: Vec<Value> = etags
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"partNumber": i + 1, "etag": e.clone().unwrap_or_default()}))
        .collect();
    let body = json!({"oid": u.object.oid, "parts": parts});
    let what = format!("complete upload of {}", u.label);
    client
        .json(
            "POST",
            &completion.href,
            Some(&body),
            LFS_CONTENT_TYPE,
            &what,
            reporter,
        )
        .map(|_| ())
        .map_err(|f| f.into_error(&what))
}

fn verify(client: &Client, u: &Upload<'_>, reporter: &dyn Reporter) -> Result<()> {
    let Some(v) = &u.object.verify else {
        return Ok(());
    };
    let what = format!("verify {}", u.label);
    let body = serde_json::to_vec(&json!({"oid": u.object.oid, "size": u.object.size}))
        .map_err(|e| Error::from(HubError::protocol(format!("{what}: {e}"))))?;
    client
        .call(&what, &v.href, reporter, |_| {
            let mut req = client
                .request("POST", &v.href)
                .set("Content-Type", "application/json")
                .set("Accept", "application/json");
            for (k, val) in &v.header {
                req = req.set(k, val);
            }
            Ok(req.send_bytes(&body)?)
        })
        .map(drain)
        .map_err(|f: CallError| f.into_error(&what))
}

/// Streaming sha256 of a file (64 hex digits) with progress; never holds the file in memory.
pub(crate) fn sha256_file(path: &Path, reporter: &dyn Reporter) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        reporter.advance(n as u64);
    }
    Ok(crate::io::hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parts() {
        assert_eq!(plan_parts(0, 10).unwrap(), vec![]);
        let p = plan_parts(25, 10).unwrap();
        assert_eq!(
            p,
            vec![
                PartPlan {
                    number: 1,
                    offset: 0,
                    len: 10
                },
                PartPlan {
                    number: 2,
                    offset: 10,
                    len: 10
                },
                PartPlan {
                    number: 3,
                    offset: 20,
                    len: 5
                },
            ]
        );
        assert_eq!(plan_parts(20, 10).unwrap().len(), 2);
        assert!(plan_parts(10, 0).is_err());
        assert!(plan_parts(u64::MAX, 1).is_err());
        let p = plan_parts(u64::MAX, 1 << 40).unwrap();
        assert_eq!(p.last().unwrap().offset + p.last().unwrap().len, u64::MAX);
    }

    #[test]
    fn parses_multipart_with_padded_keys() {
        let answer = json!({"transfer": "multipart", "objects": [{
            "oid": "ab", "size": 25,
            "actions": {
                "upload": {"href": "https://huggingface.co/c", "header": {
                    "chunk_size": "10", "00002": "u2", "00001": "u1", "00003": "u3"}},
                "verify": {"href": "https://huggingface.co/v"}
            }}, {"oid": "cd", "size": 3}]});
        let objs = parse_batch(&answer, "http://127.0.0.1:1").unwrap();
        match &objs[0].upload {
            Some(UploadAction::Multipart {
                completion,
                chunk_size,
                part_urls,
            }) => {
                assert_eq!(completion.href, "http://127.0.0.1:1/c");
                assert_eq!(*chunk_size, 10);
                assert_eq!(part_urls, &["u1", "u2", "u3"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            objs[0].verify.as_ref().unwrap().href,
            "http://127.0.0.1:1/v"
        );
        assert!(objs[1].upload.is_none());
    }

    #[test]
    fn rejects_wrong_part_count_and_errors() {
        let answer = json!({"objects": [{"oid": "ab", "size": 25, "actions": {"upload": {
            "href": "h", "header": {"chunk_size": 10, "1": "u1", "2": "u2"}}}}]});
        assert!(parse_batch(&answer, "e").is_err());
        let answer = json!({"objects": [{"oid": "ab", "size": 25,
            "error": {"code": 422, "message": "too big"}}]});
        let e = parse_batch(&answer, "e").unwrap_err().to_string();
        assert!(e.contains("too big"), "{e}");
    }
}
