//! What a failed hub operation reports: typed, so a caller can tell a refused token (HTTP 401)
//! from a timeout or a missing cache entry, and printed as one line.

use std::fmt;

/// Which way a hub operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubErrorKind {
    /// The server answered with an error status ([`HubError::status`], and [`HubError::code`]
    /// when the hub named the error).
    Status,
    /// No usable answer: connection refused or reset, name resolution, a timeout.
    Network { timed_out: bool },
    /// An answer that does not follow the protocol (malformed JSON, missing fields, sizes).
    Protocol,
    /// Offline mode (`HF_HUB_OFFLINE`) and the cache lacks what is needed.
    NotCached,
    /// A name that is not a hub repo id (nor, for an input, an existing path): the caller's
    /// argument, nothing was sent.
    InvalidId,
    /// An operation that needs a token (a push) and none was given or found.
    NoToken,
}

/// A failed hub operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubError {
    pub kind: HubErrorKind,
    /// What was being done, e.g. `commit to org/name@main` (may be empty).
    pub context: String,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The hub's error code (`X-Error-Code`, e.g. `RepoNotFound`), when it gave one.
    pub code: Option<String>,
    /// What the server, the network or the protocol check said, on one line.
    pub message: String,
    /// The request's URL without its query string (presigned URLs carry signatures there).
    pub url: Option<String>,
    /// Advice appended to the message, e.g. how to pass a token.
    pub hint: String,
}

impl HubError {
    fn new(kind: HubErrorKind, message: impl Into<String>) -> HubError {
        HubError {
            kind,
            context: String::new(),
            status: None,
            code: None,
            message: message.into(),
            url: None,
            hint: String::new(),
        }
    }

    /// An answer that does not follow the protocol.
    pub fn protocol(message: impl Into<String>) -> HubError {
        HubError::new(HubErrorKind::Protocol, message)
    }

    /// Something the offline cache lacks.
    pub fn not_cached(message: impl Into<String>) -> HubError {
        HubError::new(HubErrorKind::NotCached, message)
    }

    /// A name that is not a hub repo id.
    pub fn invalid_id(message: impl Into<String>) -> HubError {
        HubError::new(HubErrorKind::InvalidId, message)
    }

    /// No token for an operation that needs one.
    pub fn no_token(message: impl Into<String>) -> HubError {
        HubError::new(HubErrorKind::NoToken, message)
    }

    /// Whether the caller's arguments are at fault (a bad repo id, no token), not the hub.
    pub fn is_usage(&self) -> bool {
        matches!(self.kind, HubErrorKind::InvalidId | HubErrorKind::NoToken)
    }

    /// An error status from the server.
    pub fn status(status: u16, message: impl Into<String>) -> HubError {
        HubError {
            status: Some(status),
            ..HubError::new(HubErrorKind::Status, message)
        }
    }

    /// No usable answer from the network.
    pub fn network(message: impl Into<String>, timed_out: bool) -> HubError {
        HubError::new(HubErrorKind::Network { timed_out }, message)
    }

    /// Says what was being done (prefixed to the message).
    pub fn context(mut self, context: impl Into<String>) -> HubError {
        self.context = context.into();
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> HubError {
        self.hint = hint.into();
        self
    }

    /// Records the request's URL, without its query string.
    pub fn url(mut self, url: &str) -> HubError {
        let bare = url.split(['?', '#']).next().unwrap_or(url);
        self.url = Some(bare.to_string());
        self
    }

    /// Whether the request timed out (no answer in time).
    pub fn timed_out(&self) -> bool {
        matches!(self.kind, HubErrorKind::Network { timed_out: true })
    }
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.context.is_empty() {
            write!(f, "{}: ", self.context)?;
        }
        match self.status {
            Some(s) if self.message.is_empty() => write!(f, "HTTP {s}")?,
            Some(s) => write!(f, "HTTP {s}: {}", self.message)?,
            None => f.write_str(&self.message)?,
        }
        f.write_str(&self.hint)
    }
}

impl std::error::Error for HubError {}

impl From<HubError> for crate::Error {
    fn from(e: HubError) -> crate::Error {
        crate::Error::Hub(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_messages_and_typed_fields() {
        let e = HubError::status(401, "Invalid credentials")
            .context("commit to org/x@main")
            .hint(" (check the token)")
            .url("https://huggingface.co/api/models/org/x/commit/main?sig=secret");
        assert_eq!(
            e.to_string(),
            "commit to org/x@main: HTTP 401: Invalid credentials (check the token)"
        );
        assert_eq!(e.status, Some(401));
        assert!(!e.timed_out());
        assert_eq!(
            e.url.as_deref(),
            Some("https://huggingface.co/api/models/org/x/commit/main")
        );
        let t = HubError::network("Network Error: timed out reading response", true)
            .context("upload model.safetensors");
        assert!(t.timed_out() && t.status.is_none());
        assert_eq!(
            t.to_string(),
            "upload model.safetensors: Network Error: timed out reading response"
        );
        assert_eq!(
            crate::Error::from(HubError::protocol("LFS batch: no 'objects'")).to_string(),
            "hub: LFS batch: no 'objects'"
        );
    }
}
